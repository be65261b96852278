"""hybrid_ps: MPI worker groups in front of a ZeroMQ parameter-server tier with bounded staleness."""

__version__ = "0.1.0"

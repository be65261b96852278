"""``mpiexec -n N python -m hybrid_ps.train [--config job.toml] [flags]``: train a model."""

from __future__ import annotations

import logging
import os
import sys

from .config import build_parser, load_config
from .errors import ConfigError, HybridPSError, TopologyError

log = logging.getLogger("hybrid_ps.train")

_DESCRIPTION = """Train sparse logistic regression with MPI worker groups and a ZeroMQ parameter-server tier.
Settings come from defaults < --config FILE < --set SECTION.KEY=VALUE < the flags below."""


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the job on this rank, and return the exit code."""
    parser = build_parser("python -m hybrid_ps.train", _DESCRIPTION)
    args = parser.parse_args(argv)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    try:
        config = load_config(args)
    except HybridPSError as e:
        print(f"hybrid_ps.train: error: {e}", file=sys.stderr)
        return 2

    from mpi4py import MPI  # after argument parsing: --help and bad flags need no MPI

    from .job import run_job

    world = MPI.COMM_WORLD
    try:
        run_job(config, world, debug=args.debug)
    except BaseException as e:  # any rank failing must end the whole job, not hang it
        rank = world.Get_rank()
        if isinstance(e, HybridPSError) and not args.debug:
            if rank == 0 or not isinstance(e, (ConfigError, TopologyError)):  # those fail on every rank alike
                print(f"hybrid_ps.train: rank {rank}: error: {e}", file=sys.stderr, flush=True)
        else:
            log.exception("rank %d failed", rank)
        sys.stderr.flush()
        world.Abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

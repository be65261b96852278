"""The exception hierarchy for every error a user of hybrid_ps can see."""

from __future__ import annotations

__all__ = [
    "HybridPSError",
    "ConfigError",
    "DataError",
    "WireError",
    "TopologyError",
    "ShardUnavailableError",
    "RangeLostError",
    "CheckpointError",
    "NonFiniteError",
    "KeyListMissError",
    "WaitTimeoutError",
    "DivergenceError",
    "SimulatedNetworkError",
]


class HybridPSError(Exception):
    """Base class: a one-line, user-facing error (printed without a traceback)."""


class ConfigError(HybridPSError):
    """A configuration value, file or flag is invalid; the message names the field."""


class DataError(HybridPSError):
    """Input data is unreadable or malformed; the message names the file and line."""


class WireError(HybridPSError):
    """A ZeroMQ message does not follow the wire format (see hybrid_ps.protocol.wire)."""


class KeyListMissError(WireError):
    """A request referenced a key list the shard does not keep (answered with ``FLAG_KEYS_MISSED``)."""


class TopologyError(HybridPSError):
    """The MPI world cannot be split into the requested servers and worker groups."""


class ShardUnavailableError(HybridPSError):
    """A parameter-server shard did not answer in time or reported an error."""


class RangeLostError(ShardUnavailableError):
    """Every replica of a key range is dead: training cannot go on without a checkpoint to resume from."""


class CheckpointError(HybridPSError):
    """A checkpoint is missing, truncated, foreign or incompatible."""


class NonFiniteError(HybridPSError):
    """A NaN or an infinity where a number must be finite (a gradient, an optimizer update)."""


class WaitTimeoutError(HybridPSError):
    """A blocking wait ran out of time; the message names what it waited for."""


class DivergenceError(HybridPSError):
    """Training diverged: the loss ran far above a constant prediction's; the message names the likely cause."""


class SimulatedNetworkError(HybridPSError):
    """The simulated network's relay process (benchmarks and tests only) did not start or stopped answering."""

"""The timing model of a simulated link: one-way latency plus serialization on a shared link, and its accounting.

A chunk of ``n`` bytes that reaches one direction of a link at time ``t`` leaves
it at ``max(t + latency, free) + n / bandwidth``, where ``free`` is when the
link finished serializing the chunk before (of any connection on the link):
the chunk propagates for ``latency``, waits while the link is busy
(queueing), then takes ``n / bandwidth`` to serialize. Pure arithmetic, no
sockets (``proxy.py`` applies it to real TCP streams).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError

__all__ = ["Link", "LinkStats", "DirectionStats", "NETWORK_FIELDS"]


@dataclass
class DirectionStats:
    """What one direction of a link relayed (seconds are sums over its chunks)."""

    bytes: int = 0
    chunks: int = 0  # TCP reads relayed (not ZeroMQ messages: the relay does not parse the stream)
    delay_seconds: float = 0.0  # modeled delay added: latency + queueing + serialization
    queue_seconds: float = 0.0  # waiting for the link to finish the chunks before
    serialization_seconds: float = 0.0  # bytes / bandwidth
    late_seconds: float = 0.0  # how much later than modeled the chunks really left (scheduling, a slow reader)
    max_late_seconds: float = 0.0  # the latest chunk's lateness

    def add_late(self, late: float) -> None:
        """Count one chunk that left ``late`` seconds after its modeled departure."""
        late = max(late, 0.0)
        self.late_seconds += late
        self.max_late_seconds = max(self.max_late_seconds, late)

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> DirectionStats:
        values: dict[str, Any] = {f.name: int(data[f.name]) if f.type == "int" else float(data[f.name])
                                  for f in fields(cls)}
        return cls(**values)


_SUMMED = ("bytes", "chunks", "delay_seconds", "queue_seconds", "serialization_seconds", "late_seconds")

NETWORK_FIELDS = (*(f"up_{name}" for name in _SUMMED), *(f"down_{name}" for name in _SUMMED), "connections")
"""A leader's simulated-network counters as one vector (summed over leaders in the job summary): up is leader
to shards, down shards to leader; ``connections`` the TCP connections relayed."""


@dataclass
class LinkStats:
    """Both directions of a link (up: client to servers, down: servers to client) and its connections."""

    up: DirectionStats
    down: DirectionStats
    connections: int = 0

    def to_dict(self) -> dict:
        return {"up": self.up.to_dict(), "down": self.down.to_dict(), "connections": self.connections}

    @classmethod
    def from_dict(cls, data: dict) -> LinkStats:
        return cls(DirectionStats.from_dict(data["up"]), DirectionStats.from_dict(data["down"]),
                   int(data["connections"]))

    def as_array(self) -> list[float]:
        """The counters in ``NETWORK_FIELDS`` order (the maxima are left out: they do not add up)."""
        return [float(getattr(d, name)) for d in (self.up, self.down) for name in _SUMMED] + [float(self.connections)]


class Link:
    """One direction of a simulated link, shared by every connection on it.

    Args:
        latency: one-way latency in seconds (>= 0).
        bandwidth: bytes per second (0 = unlimited: no serialization, no queueing).

    Raises:
        ConfigError: a negative or non-finite setting.
    """

    def __init__(self, *, latency: float, bandwidth: float) -> None:
        if not 0 <= latency < float("inf"):
            raise ConfigError(f"simulated network: the latency must be finite and >= 0 s, got {latency!r}")
        if not 0 <= bandwidth < float("inf"):
            raise ConfigError(f"simulated network: the bandwidth must be finite and >= 0 (0 = unlimited), "
                              f"got {bandwidth!r}")
        self.latency = latency
        self.bandwidth = bandwidth
        self.stats = DirectionStats()
        self._free = float("-inf")  # when the link finished serializing the last chunk

    def departure(self, arrival: float, size: int) -> float:
        """When a chunk of ``size`` bytes that arrived at ``arrival`` leaves the link; counts it."""
        propagated = arrival + self.latency
        start = max(propagated, self._free)
        serialization = size / self.bandwidth if self.bandwidth else 0.0
        leaves = start + serialization
        self._free = leaves
        stats = self.stats
        stats.bytes += size
        stats.chunks += 1
        stats.delay_seconds += leaves - arrival
        stats.queue_seconds += start - propagated
        stats.serialization_seconds += serialization
        return leaves

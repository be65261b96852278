"""Which shards are alive, as one client sees it: when each was last heard from, whom to ping, who is dead."""

from __future__ import annotations

import time

__all__ = ["Liveness"]


class Liveness:
    """Silence per shard, counted only while a reply from it is awaited.

    Args:
        heartbeat_interval: a shard quiet this long is pinged (shards count a group silent
            for ``cluster.group_timeout`` as gone; keep this well below it).
        failover_timeout: seconds of silence while a reply is awaited before a shard is dead.
    """

    def __init__(self, *, heartbeat_interval: float, failover_timeout: float) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.failover_timeout = failover_timeout
        self._last_heard: dict[int, float] = {}  # per shard: last reply, or since when a reply is awaited
        self._last_ping: dict[int, float] = {}

    def track(self, shard: int) -> None:
        """A (re)connected shard: heard from now, never pinged."""
        self._last_heard[shard], self._last_ping[shard] = time.monotonic(), 0.0

    def heard(self, shard: int) -> None:
        self._last_heard[shard] = time.monotonic()

    def awaiting(self, shard: int, owed_before: int) -> None:
        """A request went to ``shard``, which owed ``owed_before`` replies: silence counts from now if none."""
        if not owed_before:
            self._last_heard[shard] = time.monotonic()

    def check(self, owed: dict[int, int], shards: list[int]) -> tuple[list[int], list[tuple[int, float]]]:
        """``(to ping, dead)`` among ``shards`` (``owed``: replies each still owes); pings are noted as sent.

        Dead: silent past ``failover_timeout`` while owing a reply, as ``(shard, seconds silent)``.
        """
        now = time.monotonic()
        ping, dead = [], []
        for shard in shards:
            silent = now - self._last_heard[shard]
            if owed.get(shard, 0) and silent > self.failover_timeout:
                dead.append((shard, silent))
            elif silent > self.heartbeat_interval and now - self._last_ping[shard] > self.heartbeat_interval:
                self._last_ping[shard] = now
                ping.append(shard)
        return ping, dead

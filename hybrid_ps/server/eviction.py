"""Feature eviction at checkpoint cuts: rows not updated for ``after`` clocks, or whose weights stay small, go.

It runs where the cut is taken (before its snapshot), so a checkpoint holds what
the shards hold. Each range's acting primary decides and sends the evicted keys
to the range's other replicas (DROP, on the link its forwards take, so it comes
between the same pushes everywhere): every replica holds the same rows. With
delta checkpoints it runs at the full cuts only (a delta carries no deletions).
An evicted key that is pushed again goes through admission like a new one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..placement.replicas import Placement
from .shard import Shard

__all__ = ["EvictionPolicy", "Eviction"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvictionPolicy:
    """Which rows a cut evicts.

    Attributes:
        after: clocks without a push after which a row goes (0: never for age).
        below: a row whose every value is within ``±below`` goes (negative: never for size).

    Raises:
        ConfigError: ``after`` negative or ``below`` not a number.
    """

    after: int = 0
    below: float = -1.0

    def __post_init__(self) -> None:
        if self.after < 0:
            raise ConfigError(f"cluster.evict_after must be >= 0, got {self.after!r}")
        if self.below != self.below:
            raise ConfigError("cluster.evict_below must be a number, got NaN")

    @property
    def enabled(self) -> bool:
        """Whether any row can be evicted."""
        return self.after > 0 or self.below >= 0


class Eviction:
    """Evict this shard's stale rows at a cut and tell the backups.

    Args:
        shard_id: this shard (it evicts the ranges it is acting primary of).
        shard: its rows (``stamped`` when ``policy.after``).
        policy: what goes.
        placement: the placement it serves by now.
        drop: sends the evicted keys (sorted) to their other replicas (``Forwards.drop``).
    """

    def __init__(self, *, shard_id: int, shard: Shard, policy: EvictionPolicy, placement: Callable[[], Placement],
                 drop: Callable[[np.ndarray, Placement], None]) -> None:
        self.shard_id = shard_id
        self.shard = shard
        self.policy = policy
        self._placement = placement
        self._drop = drop
        self.evicted = 0  # rows evicted in all

    def at_cut(self, cut: int) -> int:
        """Evict what the policy says at the cut of clock ``cut``; returns the rows evicted."""
        started = time.monotonic()
        before = cut - self.policy.after if self.policy.after else 0
        keys = np.sort(self.shard.stale(before, self.policy.below))
        placement = self._placement()
        if placement.replication > 1 and keys.size:
            keys = keys[placement.is_primary(keys, self.shard_id)]
        removed = self.shard.remove(keys)
        if keys.size and placement.replication > 1:
            self._drop(keys, placement)
        self.evicted += removed
        if removed:
            log.info("shard %d evicted %d rows at clock %d in %.2fs (%d held)", self.shard_id, removed, cut,
                     time.monotonic() - started, len(self.shard))
        return removed

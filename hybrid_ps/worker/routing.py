"""Where a request's keys go: the ring and its replicas, a key batch split into one part per shard."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..placement.replicas import Placement
from ..placement.ring import HashRing
from ..tier import TierView

__all__ = ["Routing"]

Parts = list[tuple[int, np.ndarray | None]]
"""``(shard, positions)`` pairs; positions ``None``: the shard gets every key, in order."""


class Routing:
    """A client's view of the shards: which are live, and which of them a batch of keys goes to.

    Args:
        ring: the key -> shard ring shared with the shards.
        replication: replicas per key range (as the shards were started with).
    """

    def __init__(self, *, ring: HashRing, replication: int = 1) -> None:
        self.placement = Placement(ring, replication)

    @property
    def live_shards(self) -> list[int]:
        return self.placement.live_shards

    @property
    def coordinator(self) -> int:
        """The shard that picks stop and reshard clocks: the lowest live one."""
        return self.placement.live_shards[0]

    def pull_parts(self, keys: np.ndarray) -> Parts:
        """Each acting primary's part of sorted ``keys`` (where pulls and pushes go)."""
        return self._split(keys, self.placement.pull_parts)

    def without(self, shard: int) -> None:
        """``shard`` is dead: its backups take over its ranges.

        Raises:
            RangeLostError: some key range has no live replica left.
        """
        self.placement = self.placement.without(shard)
        self.placement.check_complete()

    def rejoined(self, shard: int) -> None:
        """Dead ``shard`` runs again, filled by the acting primaries: a live backup (``Placement.with_rejoined``)."""
        self.placement = self.placement.with_rejoined(shard)

    def retired(self, shard: int) -> None:
        """Dead ``shard`` never comes back: its ranges go on to the next shards (``Placement.with_retired``)."""
        self.placement = self.placement.without(shard).with_retired(shard)

    def switch_to(self, view: TierView) -> None:
        """Route by the tier's new shards from now on."""
        self.placement = Placement(HashRing(view.shard_ids, self.placement.ring.vnodes), view.replication)

    def _split(self, keys: np.ndarray, parts_of: Callable[[np.ndarray], list[tuple[int, np.ndarray]]]) -> Parts:
        if not keys.size:
            return []
        ring = self.placement.ring
        if ring.num_shards == 1 and not self.placement.dead:
            return [(int(ring.shard_ids[0]), None)]
        return [(shard, None if positions.size == keys.size else positions) for shard, positions in parts_of(keys)]

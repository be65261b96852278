"""How a shard follows changes of the tier's membership: shards declared dead, shards added or retired.

A mixin of ``ShardService`` (it uses the service's placement, clock, shard and
sockets). Evictions come from leaders that found a shard silent; a change of
the tier's shards (``hybrid_ps.tierctl``) goes VIEW to the coordinating
shard, which picks the reshard clock; at that clock every group checkpoints
the cut and sends RESHARD; once every running group asked, each shard keeps
the ranges the new ring leaves it, loads those it gains from the cut's files,
and switches rings (a retired shard stops).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from ..errors import WireError
from ..placement.replicas import Placement
from ..placement.ring import HashRing
from ..protocol import wire
from ..tier import TierView

if TYPE_CHECKING:
    from ..checkpoint import ShardState

__all__ = ["TierMembership", "CutReader"]

log = logging.getLogger(__name__)

CutReader = Callable[[int, Callable[[np.ndarray], np.ndarray]], Iterable["ShardState"]]
"""Reads the parts of the cut at the given clock's shard files that a mask function selects (resharding)."""


class TierMembership:
    """The membership half of ``ShardService``: EVICT, VIEW and RESHARD."""

    def _init_membership(self, cut_reader: CutReader | None, joins_a_running_tier: bool) -> None:
        self._cut_reader = cut_reader
        self._new_to_a_running_tier = joins_a_running_tier  # until a JOIN: RESHARD first means it was just added
        self._reshard_requests: dict[int, tuple[bytes, wire.Header, TierView]] = {}
        self.reshard_at: int | None = None  # the coordinator: the clock every group reshards at

    def _handle_view(self, identity: bytes, header: wire.Header, frame: memoryview) -> None:
        """(The coordinator) an administrator changes the tier's shards: answer with the reshard clock."""
        self._choose_reshard_clock(self._view_of(frame))
        self._ack(identity, header, self.reshard_at)

    def _handle_reshard(self, identity: bytes, header: wire.Header, frame: memoryview) -> None:
        """A group stopped at the reshard clock (its part of the cut is written): switch once all have."""
        view = self._view_of(frame)
        if self._checkpoint_writer is None or self._cut_reader is None:  # as VIEW: there can be no cut to load
            raise WireError("changing the tier's shards needs checkpoints: the ranges move through the cut's files")
        self._reshard_requests[header.group] = (identity, header, view)
        if self._new_to_a_running_tier:
            self._learn_groups_from_the_cut(header.clock)
        self._maybe_reshard()

    def _evict(self, shard: int) -> None:
        """A client found ``shard`` dead: serve its ranges where this shard is the next replica.

        Told that it is dead itself (a false suspicion: it was too slow to answer heartbeats),
        a shard stops serving, so that no client keeps using a copy the others gave up on.
        """
        if shard == self.shard_id:
            log.error("shard %d: a client declared this shard dead (it answered too slowly); stopping", shard)
            self._running = False
        elif not bool((self.placement.ring.shard_ids == shard).any()):  # the dead set stays bounded by the ring
            log.warning("shard %d: told that shard %d is dead, which is not on its ring: ignored", self.shard_id, shard)
        elif shard not in self.placement.dead:
            self.placement = self.placement.without(shard)
            log.warning("shard %d: shard %d is dead; this shard now serves the ranges it backed up for it",
                        self.shard_id, shard)

    @staticmethod
    def _view_of(frame: memoryview) -> TierView:
        try:
            return TierView.from_bytes(frame)
        except ValueError as e:
            raise WireError(str(e)) from None

    def _choose_reshard_clock(self, view: TierView) -> None:
        """(The coordinator) pick the clock every group stops at to change the tier's shards: two past the fastest."""
        if self._checkpoint_writer is None or self._cut_reader is None:
            raise WireError("changing the tier's shards needs checkpoints: the ranges move through the cut's files")
        if self.clock.done.all():
            raise WireError("no group is training: change the tier's shards while groups train")
        if self.reshard_at is None:
            self.reshard_at = int(self.clock.clocks[~self.clock.done].max()) + 2
            log.warning("shard %d: the tier changes to shards %s: every group reshards at clock %d",
                        self.shard_id, view.shard_ids, self.reshard_at)

    def _maybe_reshard(self) -> None:
        """Switch to the new view once every running group asked (each wrote its part of the cut before)."""
        if not self._reshard_requests:
            return
        waiting = ~self.clock.done & ~self.left
        waiting[list(self._reshard_requests)] = False
        if waiting.any():
            return
        requests, self._reshard_requests = self._reshard_requests, {}
        cut, view = next((header.clock, view) for _, header, view in requests.values())
        try:
            self._apply_view(view, cut)
        except Exception as e:
            log.exception("shard %d could not reshard at clock %d", self.shard_id, cut)
            for identity, header, _ in requests.values():
                self._reply_error(identity, header, f"reshard at clock {cut} failed: {type(e).__name__}: {e}")
            return
        for identity, header, _ in requests.values():
            self._ack(identity, header, cut)
        self.reshard_at = None

    def _learn_groups_from_the_cut(self, cut: int) -> None:
        """A shard added to a running tier takes the clock table of the cut (which groups run, at which clock)."""
        part = next(iter(self._cut_reader(cut, lambda keys: np.zeros(keys.size, dtype=bool))))
        self.clock.clocks[:] = part.clock_table
        self.clock.finished[:] = part.finished
        self.clock.dropped[:] = part.away if part.away is not None else False
        self._new_to_a_running_tier = False
        log.info("shard %d joins a running tier at the cut of clock %d: clocks %s", self.shard_id, cut,
                 self.clock.clocks.tolist())

    def _apply_view(self, view: TierView, cut: int) -> None:
        """Load the ranges ``view`` moves here from the cut's files, drop those it moves away, switch rings.

        All or nothing: if the cut cannot be read, the shard keeps exactly what it held (and its ring).
        """
        if self.shard_id not in view.endpoints:
            log.warning("shard %d: the tier no longer has this shard (now %s): leaving", self.shard_id, view.shard_ids)
            self._running = False
            return
        placement = Placement(HashRing(view.shard_ids, self.placement.ring.vnodes), view.replication)
        mine = lambda keys: placement.is_replica(keys, self.shard_id)  # noqa: E731
        loaded: list[np.ndarray] = []
        try:
            for part in self._cut_reader(cut, lambda k: mine(k) & ~self.shard.contains(k)):
                self.shard.load(part.keys, part.values, part.state)
                loaded.append(part.keys)
        except BaseException:
            if loaded:  # drop what was loaded again (those keys were not held before)
                self.shard.retain(~np.isin(self.shard.export()[0], np.concatenate(loaded)))
            raise
        moved = sum(part.size for part in loaded)
        keys = self.shard.export()[0]
        keep = mine(keys) if keys.size else np.zeros(0, dtype=bool)
        if not keep.all():
            self.shard.retain(keep)
        self.placement = placement
        log.info("shard %d: now one of shards %s: %d keys moved here, %d moved away, %d held",
                 self.shard_id, view.shard_ids, moved, keep.size - int(keep.sum()), len(self.shard))

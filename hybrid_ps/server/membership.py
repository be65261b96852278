"""How a shard follows changes of the tier's membership: shards declared dead, shards added or retired.

Evictions come from leaders that found a shard silent; a change of the tier's
shards (``hybrid_ps.tierctl``) goes VIEW to the coordinating shard, which picks
the reshard clock; at that clock every group checkpoints the cut and sends
RESHARD; once every running group asked, each shard keeps the ranges the new
ring leaves it, loads those it gains from the cut's files, and switches rings
(a retired shard stops). ``ShardService`` routes the messages here and sends
the replies this class decides on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import WireError
from ..placement.replicas import REJOINED, Placement
from ..placement.ring import HashRing
from ..protocol import wire
from ..tier import TierView
from .cuts import CutReplies
from .groups import GroupTable
from .shard import Shard

if TYPE_CHECKING:
    from ..checkpoint import ShardState

__all__ = ["TierMembership", "CutReader", "Reshard"]

log = logging.getLogger(__name__)

CutReader = Callable[[int, Callable[[np.ndarray], np.ndarray]], Iterable["ShardState"]]
"""Reads the parts of the cut at the given clock's shard files that a mask function selects (resharding)."""

_NEEDS_CHECKPOINTS = "changing the tier's shards needs checkpoints: the ranges move through the cut's files"


@dataclass
class Reshard(CutReplies):
    """A reshard that happened (or failed) through its cut: the requests to answer, and how."""

    leaving: bool = False  # the new tier has no place for this shard: it stops serving


class TierMembership:
    """A shard's view of the tier: its placement (the ring, minus the shards known dead) and its changes.

    Args:
        shard_id: this shard.
        shard: its keys (ranges are loaded into and dropped from it).
        groups: the groups it serves (a reshard waits for every running one).
        placement: the ring and replicas it starts with.
        cut_reader: reads a cut's shard files (``None``: no checkpoints, so no resharding).
        checkpoints: the shard writes checkpoints (a reshard moves ranges through them).
        joins_a_running_tier: the shard was started into a running tier (until a JOIN, a RESHARD
            first means it was just added and must learn the groups' clocks from the cut).
    """

    def __init__(self, *, shard_id: int, shard: Shard, groups: GroupTable, placement: Placement,
                 cut_reader: CutReader | None = None, checkpoints: bool = False,
                 joins_a_running_tier: bool = False) -> None:
        self.shard_id = shard_id
        self.shard = shard
        self.groups = groups
        self.placement = placement
        self._cut_reader = cut_reader if checkpoints else None
        self._new_to_a_running_tier = joins_a_running_tier
        self._requests: dict[int, tuple[bytes, wire.Header, TierView]] = {}
        self.reshard_at: int | None = None  # the coordinator: the clock every group reshards at

    def joined(self) -> None:
        """A group sent JOIN: this shard takes part in the tier as it is."""
        self._new_to_a_running_tier = False

    def endpoints_of(self, frame: memoryview) -> dict[int, str]:
        """The endpoints of a JOIN's or a RESHARD's view (where a primary forwards pushes).

        Raises:
            WireError: not a view.
        """
        return _view_of(frame).endpoints

    def view(self, frame: memoryview) -> int:
        """(The coordinator) an administrator changes the tier's shards: the reshard clock (two past the fastest).

        Raises:
            WireError: no checkpoints, no group training, or a bad view.
        """
        view = _view_of(frame)
        if self._cut_reader is None:
            raise WireError(_NEEDS_CHECKPOINTS)
        clock = self.groups.clock
        if clock.done.all():
            raise WireError("no group is training: change the tier's shards while groups train")
        if self.reshard_at is None:
            self.reshard_at = int(clock.clocks[~clock.done].max()) + 2
            log.warning("shard %d: the tier changes to shards %s: every group reshards at clock %d",
                        self.shard_id, view.shard_ids, self.reshard_at)
        return self.reshard_at

    def ask_reshard(self, identity: bytes, header: wire.Header, frame: memoryview) -> None:
        """A group stopped at the reshard clock (its part of the cut is written); ``maybe_reshard`` switches."""
        view = _view_of(frame)
        if self._cut_reader is None:  # as VIEW: there can be no cut to load
            raise WireError(_NEEDS_CHECKPOINTS)
        self._requests[header.group] = (identity, header, view)
        if self._new_to_a_running_tier:
            self._learn_groups_from_the_cut(header.clock)

    def maybe_reshard(self) -> Reshard | None:
        """Switch to the new view once every running group asked; ``None`` while some have not."""
        if not self._requests:
            return None
        waiting = self.groups.waiting()
        waiting[list(self._requests)] = False
        if waiting.any():
            return None
        requests, self._requests = self._requests, {}
        cut, view = next((header.clock, view) for _, header, view in requests.values())
        answered = [(identity, header) for identity, header, _ in requests.values()]
        try:
            leaving = not self._apply_view(view, cut)
        except Exception as e:
            log.exception("shard %d could not reshard at clock %d", self.shard_id, cut)
            return Reshard(answered, cut, error=f"reshard at clock {cut} failed: {type(e).__name__}: {e}")
        self.reshard_at = None
        return Reshard(answered, cut, leaving=leaving)

    def evict(self, shard: int) -> bool:
        """A client found ``shard`` dead: serve its ranges where this shard is the next replica.

        Returns:
            Whether this shard itself was declared dead (a false suspicion: it was too slow to
            answer heartbeats): it must stop serving, so that no client keeps using a copy the
            others gave up on.
        """
        if shard == self.shard_id:
            log.error("shard %d: a client declared this shard dead (it answered too slowly); stopping", shard)
            return True
        if not self._on_the_ring(shard):  # the dead set stays bounded by the ring
            log.warning("shard %d: told that shard %d is dead, which is not on its ring: ignored", self.shard_id, shard)
        elif shard not in self.placement.dead:
            self.placement = self.placement.without(shard)
            log.warning("shard %d: shard %d is dead; this shard now serves the ranges it backed up for it",
                        self.shard_id, shard)
        return False

    def rejoin(self, shard: int) -> bool:
        """Dead ``shard`` was restarted: a live backup again (``Placement.with_rejoined``); ``False`` if it is
        this shard, not on the ring or retired (nothing changes)."""
        if shard == self.shard_id or not self._on_the_ring(shard) or shard in self.placement.retired:
            log.warning("shard %d: told that shard %d rejoined, which is not another live shard of its ring: "
                        "ignored", self.shard_id, shard)
            return False
        self.placement = self.placement.without(shard).with_rejoined(shard)
        log.warning("shard %d: shard %d runs again; this shard fills it with the ranges it serves for it",
                    self.shard_id, shard)
        return True

    def retire(self, shard: int) -> bool:
        """Dead ``shard`` never comes back: the next shards of the ring take its place (``Placement.with_retired``);
        ``False`` if nothing changes (this shard, not on the ring, retired already, the last shard, or ranges
        lost already: a placement without it would hide the loss)."""
        placement = self.placement
        if shard in placement.retired:
            return False
        others = [s for s in placement.live_shards if s != shard]
        if shard == self.shard_id or not self._on_the_ring(shard) or not others or placement.without(shard).lost_points:
            log.error("shard %d: told to retire shard %d, which is not another shard of its ring whose ranges "
                      "live on (live: %s): ignored", self.shard_id, shard, placement.live_shards)
            return False
        self.placement = placement.without(shard).with_retired(shard)
        log.warning("shard %d: shard %d is retired; its ranges go on to the next shards of the ring", self.shard_id,
                    shard)
        return True

    def adopt(self, *, dead: list[int], history: list[tuple[str, int]]) -> None:
        """(A restarted shard) take the dead shards and the placement history an acting primary knows of, as it
        filled this one; this shard is a restarted one, the last to rejoin.

        Raises:
            WireError: a shard not on this ring, or a bad history.
        """
        ring, mine = self.placement.ring, self.shard_id
        if not np.isin(dead + [shard for _, shard in history], ring.shard_ids).all():
            raise WireError(f"shards {dead} dead and history {history} do not all name shards of this ring")
        try:
            self.placement = Placement(ring, self.placement.replication, set(self.placement.dead) | set(dead),
                                       [*history, (REJOINED, mine)])
        except ValueError as e:
            raise WireError(str(e)) from None

    def _on_the_ring(self, shard: int) -> bool:
        return bool((self.placement.ring.shard_ids == shard).any())

    def _learn_groups_from_the_cut(self, cut: int) -> None:
        """A shard added to a running tier takes the clock table of the cut (which groups run, at which clock)."""
        assert self._cut_reader is not None
        part = next(iter(self._cut_reader(cut, lambda keys: np.zeros(keys.size, dtype=bool))))
        clock = self.groups.clock
        clock.clocks[:] = part.clock_table
        clock.finished[:] = part.finished
        clock.dropped[:] = part.away if part.away is not None else False
        self._new_to_a_running_tier = False
        log.info("shard %d joins a running tier at the cut of clock %d: clocks %s", self.shard_id, cut,
                 clock.clocks.tolist())

    def _apply_view(self, view: TierView, cut: int) -> bool:
        """Load the ranges ``view`` moves here from the cut's files, drop those it moves away, switch rings;
        ``False`` if the new tier has no place for this shard.

        All or nothing: if the cut cannot be read, the shard keeps exactly what it held (and its ring).
        """
        if self.shard_id not in view.endpoints:
            log.warning("shard %d: the tier no longer has this shard (now %s): leaving", self.shard_id, view.shard_ids)
            return False
        assert self._cut_reader is not None
        placement = Placement(HashRing(view.shard_ids, self.placement.ring.vnodes), view.replication)
        mine = lambda keys: placement.is_replica(keys, self.shard_id)  # noqa: E731
        loaded: list[np.ndarray] = []
        try:
            for part in self._cut_reader(cut, lambda k: mine(k) & ~self.shard.contains(k)):
                self.shard.load(part.keys, part.values, part.state, since=cut)
                loaded.append(part.keys)
        except BaseException:
            if loaded:  # drop what was loaded again (those keys were not held before)
                self.shard.retain(~np.isin(self.shard.keys(), np.concatenate(loaded)))
            raise
        moved = sum(part.size for part in loaded)
        keys = self.shard.keys()
        keep = mine(keys) if keys.size else np.zeros(0, dtype=bool)
        if not keep.all():
            self.shard.retain(keep)
        self.placement = placement
        log.info("shard %d: now one of shards %s: %d keys moved here, %d moved away, %d held",
                 self.shard_id, view.shard_ids, moved, keep.size - int(keep.sum()), len(self.shard))
        return True


def _view_of(frame: memoryview) -> TierView:
    try:
        return TierView.from_bytes(frame)
    except ValueError as e:
        raise WireError(str(e)) from None

"""The checkpoints a shard writes: each group asks for the cut at a clock; once every group that counts has
asked (or finished, or is gone), the shard takes its part of the cut and the groups that asked are answered
(ACK: they train on), then told when the file is written (CUT_WRITTEN: they may publish the cut). With a
``SnapshotWriter`` the file is written by a forked copy of the shard while it serves; without, at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import WireError
from ..placement.replicas import Placement
from ..protocol import wire
from ..protocol.staleness import VectorClock
from .groups import GroupTable
from .shard import Shard
from .snapshots import SnapshotWriter

__all__ = ["CheckpointWriter", "CutReplies", "Cuts"]

log = logging.getLogger(__name__)

CheckpointWriter = Callable[[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]], VectorClock, int, int | None],
                            None]
"""Writes ``(keys, values, state)`` of the keys this shard is acting primary for, for the cut at the given clock;
the last argument: ``None`` for a full file, else the cut whose file this delta extends (only changed rows)."""


@dataclass
class CutReplies:
    """The requests that waited on a cut (its writing, or a reshard through it) and their answer."""

    requests: list[tuple[bytes, wire.Header]]
    cut: int
    error: str | None = None  # the requests get this error instead of an ACK of ``cut``
    written: bool = True  # the file is written (else a snapshot writes it: CUT_WRITTEN comes from ``Cuts.written``)


class Cuts:
    """The groups' checkpoint requests, and the writing of this shard's part of each cut.

    Args:
        shard_id: this shard.
        shard: its keys and values.
        groups: the groups it serves (a cut waits for every one still training).
        placement: the ring as the shard serves by now (with replicas, each range is written once, by
            its acting primary).
        writer: writes a cut's part (``None``: the shard was started without a checkpoint directory).
        snapshots: writes each cut from a forked copy of the shard (``None``: in the shard's loop).
        deltas: between two full files, this many cuts write only the rows changed since the one before (the
            shard must track its changes); a cut after a change of placement, or after a failed write, is full.
        evict: called with the clock of each full cut before it is taken (feature eviction: a delta carries no
            deletions); ``None``: nothing is evicted.
    """

    def __init__(self, *, shard_id: int, shard: Shard, groups: GroupTable, placement: Callable[[], Placement],
                 writer: CheckpointWriter | None, snapshots: SnapshotWriter | None = None, deltas: int = 0,
                 evict: Callable[[int], object] | None = None) -> None:
        self.shard_id = shard_id
        self.shard = shard
        self.groups = groups
        self._placement = placement
        self.writer = writer
        self.snapshots = snapshots
        self._evict = evict
        self._requests: dict[int, tuple[bytes, wire.Header]] = {}
        self._writing: CutReplies | None = None  # the cut a snapshot writes now
        self._ended: list[CutReplies] = []  # snapshot writes that ended, to tell (``written``)
        self.deltas = deltas  # (the shard must track its changes: ``Shard(track_changes=True)``)
        self._last: tuple[int, Placement] | None = None  # the cut written last, and the placement then
        self._taken: tuple[int, int] | None = None  # the cut taken last, and the shard's version then
        self._deltas_in_a_row = 0

    def ask(self, identity: bytes, header: wire.Header) -> None:
        """A group asks for the cut at ``header.clock`` (it waits for the answer).

        Raises:
            WireError: the shard has no checkpoint directory.
        """
        if self.writer is None:
            raise WireError("this shard was started without a checkpoint directory")
        self._requests[header.group] = (identity, header)

    def maybe_write(self) -> CutReplies | None:
        """Write the shard file once every group asked for the earliest requested cut (or finished, or is gone);
        ``None`` while some group has not.

        Groups that asked are blocked waiting for the answer and their pushes
        arrived before their request, so the state written is a consistent cut (a snapshot's too: the child
        is forked before the answer).
        """
        if not self._requests:
            return None
        clock = self.groups.clock
        target = min(header.clock for _, header in self._requests.values())
        for group in range(clock.num_groups):
            request = self._requests.get(group)
            gone = self.groups.gone(group)
            if target == wire.FINAL_CLOCK and request is None and not gone:
                return None  # the after-training cut waits for every group's request (or departure)
            if not (clock.finished[group] or gone or (request and request[1].clock >= target)):
                return None
        cut = int(clock.clocks.max()) if target == wire.FINAL_CLOCK else target
        answered = [request for request in self._requests.values() if request[1].clock == target]
        self._requests = {g: r for g, r in self._requests.items() if r[1].clock != target}
        if target == wire.FINAL_CLOCK and self._taken == (cut, self.shard.version):
            return self._same_as_taken(answered, cut)
        if self.snapshots is not None:
            self._ended += self.written(block=True)  # one write at a time
        base, changed = self._delta_of(cut)
        if base is None and self._evict is not None:
            self._evict(cut)
        self._taken = (cut, self.shard.version)
        if self.snapshots is not None:
            try:
                self.snapshots.start(cut, lambda: self._write(clock, cut, base, changed))
                self._writing = CutReplies(answered, cut, written=False)
                return self._writing
            except OSError as e:  # no memory or process left to fork: write it here
                log.warning("shard %d could not fork to write checkpoint %d (%s): writing it in its loop",
                            self.shard_id, cut, e)
        try:
            self._write(clock, cut, base, changed)
        except Exception as e:
            log.exception("shard %d could not write checkpoint %d", self.shard_id, cut)
            self._last = self._taken = None  # the next one is full, and taken again
            return CutReplies(answered, cut, error=f"checkpoint at clock {cut} failed: {type(e).__name__}: {e}")
        return CutReplies(answered, cut)

    def _same_as_taken(self, answered: list[tuple[bytes, wire.Header]], cut: int) -> CutReplies:
        """The cut after training is the periodic cut just taken at the same clock, and nothing changed since: its
        file is this cut's (written again, it would land in the directory as it is being published)."""
        if self._writing is not None and self._writing.cut == cut:  # told with it once its file is written
            self._writing.requests += answered
            return CutReplies(answered, cut, written=False)
        return CutReplies(answered, cut)

    def _delta_of(self, cut: int) -> tuple[int | None, np.ndarray | None]:
        """Whether the cut at ``cut`` is a delta (the cut it extends, else ``None``), and the keys changed since
        the cut before (taken now: the next delta starts from here)."""
        changed = self.shard.changed.take() if self.deltas and self.shard.changed is not None else None
        placement, last = self._placement(), self._last
        delta = (changed is not None and last is not None and placement is last[1] and last[0] < cut
                 and self._deltas_in_a_row < self.deltas)
        self._deltas_in_a_row = self._deltas_in_a_row + 1 if delta else 0
        self._last = (cut, placement)
        return (last[0], changed) if delta and last is not None else (None, None)

    def written(self, block: bool = False) -> list[CutReplies]:
        """The snapshot writes that ended (``block``: waiting for the one under way), to tell their groups."""
        ended, self._ended = self._ended, []
        if self._writing is None or self.snapshots is None:
            return ended
        write = self.snapshots.wait() if block else self.snapshots.done()
        if write is None:
            return ended
        replies, self._writing = self._writing, None
        if write.ok:
            log.info("shard %d wrote checkpoint at clock %d in %.2fs (from a snapshot, serving meanwhile)",
                     self.shard_id, replies.cut, write.seconds)
        else:
            log.error("shard %d could not write checkpoint %d (its writer failed: see above)", self.shard_id,
                      replies.cut)
            replies.error = f"checkpoint at clock {replies.cut} failed: shard {self.shard_id}'s writer failed"
            self._last = self._taken = None  # the next one is full, and taken again
        replies.written = True
        return [*ended, replies]

    def _write(self, clock: VectorClock, cut: int, base: int | None, changed: np.ndarray | None) -> None:
        """Write this shard's part of the cut (each range once, by its acting primary, with replication): every
        row, or (``base``) those of the ``changed`` keys."""
        assert self.writer is not None, "requests are refused without a writer"
        started = time.monotonic()
        keys, values, state = self.shard.export(changed if base is not None else None)
        placement = self._placement()
        if placement.replication > 1:
            mine = placement.is_primary(keys, self.shard_id)
            keys, values, state = keys[mine], values[mine], {k: v[mine] for k, v in state.items()}
        self.writer((keys, values, state), clock, cut, base)
        if self.snapshots is None:
            log.info("shard %d wrote checkpoint at clock %d in %.2fs%s", self.shard_id, cut,
                     time.monotonic() - started, "" if base is None else f" (a delta on {base}: {keys.size} rows)")

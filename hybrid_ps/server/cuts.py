"""The checkpoints a shard writes: each group asks for the cut at a clock; once every group that counts has
asked (or finished, or is gone), the shard writes its part and the groups that asked are answered."""

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

__all__ = ["CheckpointWriter", "CutReplies", "Cuts"]

log = logging.getLogger(__name__)

CheckpointWriter = Callable[[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]], VectorClock, int], None]
"""Writes ``(keys, values, state)`` of the keys this shard is acting primary for, for the cut at the given clock
(called inside the shard's loop)."""


@dataclass
class CutReplies:
    """The requests that waited on a cut (its writing, or a reshard through it) and their answer."""

    requests: list[tuple[bytes, wire.Header]]
    cut: int
    error: str | None = None  # the requests get this error instead of an ACK of ``cut``


class Cuts:
    """The groups' checkpoint requests, and the writing of this shard's part of each cut.

    Args:
        shard_id: this shard.
        shard: its keys and values.
        groups: the groups it serves (a cut waits for every one still training).
        placement: the ring as the shard serves by now (with replicas, each range is written once, by
            its acting primary).
        writer: writes a cut's part (``None``: the shard was started without a checkpoint directory).
    """

    def __init__(self, *, shard_id: int, shard: Shard, groups: GroupTable, placement: Callable[[], Placement],
                 writer: CheckpointWriter | None) -> None:
        self.shard_id = shard_id
        self.shard = shard
        self.groups = groups
        self._placement = placement
        self.writer = writer
        self._requests: dict[int, tuple[bytes, wire.Header]] = {}

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
        arrived before their request, so the state written is a consistent cut.
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
        assert self.writer is not None, "requests are refused without a writer"
        answered = [request for request in self._requests.values() if request[1].clock == target]
        self._requests = {g: r for g, r in self._requests.items() if r[1].clock != target}
        try:
            started = time.monotonic()
            keys, values, state = self.shard.export()
            placement = self._placement()
            if placement.replication > 1:  # every range once: written by its acting primary
                mine = placement.is_primary(keys, self.shard_id)
                keys, values, state = keys[mine], values[mine], {k: v[mine] for k, v in state.items()}
            self.writer((keys, values, state), clock, cut)
            log.info("shard %d wrote checkpoint at clock %d in %.2fs", self.shard_id, cut, time.monotonic() - started)
        except Exception as e:
            log.exception("shard %d could not write checkpoint %d", self.shard_id, cut)
            return CutReplies(answered, cut, error=f"checkpoint at clock {cut} failed: {type(e).__name__}: {e}")
        return CutReplies(answered, cut)

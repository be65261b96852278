"""Steps 2-3 of a step, on every member of a group: the union of the members' keys, the leader's pull
of it, and the pulled values broadcast back (``start`` sends the pull, ``finish`` waits for it, so a
prefetched pull overlaps the step before)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.batch import Batch
from ..models.base import Model, PreparedBatch
from .faults import FaultInjector
from .group import WorkerGroup
from .group_rows import GroupRows
from .leader import Leader
from .requests import Ticket

__all__ = ["KeyExchange", "PendingExchange", "StepStats"]


@dataclass
class StepStats:
    """The numbers a step's (or an evaluation batch's) Allreduce sums after the gradient rows."""

    loss: float = 0.0
    rows: float = 0.0
    correct: float = 0.0  # evaluation: correct predictions
    stop: float = 0.0  # members whose process was asked to stop (preemption)
    epoch_end: float = 0.0  # 1 if the group's rank 0 finished an epoch of its data with this step's batch
    positives: float = 0.0  # rows labelled 1
    largest_value: float = 0.0  # the largest |feature value| in the batch of the group's rank 0 (only it adds)

    SIZE = 7
    """Slots they take at the end of the Allreduce buffer."""

    @classmethod
    def of_batch(cls, batch: PreparedBatch | None, loss: float, *, stop: bool, epoch_end: bool,
                 first_rank: bool) -> StepStats:
        """A member's numbers for the step over ``batch`` (``first_rank``: it is the group's rank 0)."""
        stats = cls(stop=float(stop), epoch_end=float(epoch_end and first_rank))
        if batch is not None and batch.batch.num_rows:
            rows = batch.batch
            stats.loss, stats.rows = loss, rows.num_rows
            stats.positives = float(np.count_nonzero(rows.labels > 0.5))
            if first_rank and rows.values.size:
                stats.largest_value = float(np.max(np.abs(rows.values)))
        return stats

    def write(self, tail: np.ndarray) -> None:
        tail[:] = (self.loss, self.rows, self.correct, self.stop, self.epoch_end, self.positives, self.largest_value)

    @classmethod
    def read(cls, tail: np.ndarray) -> StepStats:
        if tail.size != cls.SIZE:
            raise ValueError(f"step stats take {cls.SIZE} slots, got {tail.size}")
        return cls(*tail.tolist())


@dataclass
class PendingExchange:
    """A step's input on its way: the rank's prepared batch, the leader's key union and its pull in flight."""

    batch: PreparedBatch | None
    union: np.ndarray | None
    ticket: Ticket | None
    ends_epoch: bool = False  # the batch is the last of an epoch of this rank's data


class KeyExchange:
    """The group's pulls, as every member takes part in them.

    Args:
        group: the group's collectives.
        model: the model (prepares batches; its width).
        leader: the leader's part (this rank leads iff it has one).
        faults: injected pull delays.
        group_rows: the dense rows every member keeps (``model.dense_in_group``), merged into pulls.
        preload: the data is preloaded (the same batches every pass): prepare each batch once.
    """

    def __init__(self, *, group: WorkerGroup, model: Model, leader: Leader | None, faults: FaultInjector,
                 group_rows: GroupRows | None, preload: bool) -> None:
        self.group = group
        self.model = model
        self.leader = leader
        self.faults = faults
        self.group_rows = group_rows
        self.preload = preload
        self._prepared: dict[int, PreparedBatch] = {}  # preloaded data: id(batch) -> its prepared form

    def start(self, batch: Batch | None, clock: int) -> PendingExchange:
        """Union of the members' keys; the leader sends the pull for ``clock`` (not waited for)."""
        prepared = self._prepare(batch) if batch is not None else None
        union = self.group.gather_keys(prepared.keys if prepared is not None else None)
        ticket = None
        if self.leader is not None and union is not None:
            union, ticket = self.leader.pull(union, clock)
        return PendingExchange(prepared, union, ticket)

    def finish(self, pending: PendingExchange, stopping: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """The leader waits for the pulled values and broadcasts them: ``(keys, values)`` on every member;
        ``None`` on every member when no member has keys left, or when the leader says ``stopping``."""
        values = None
        if self.leader is not None:
            if pending.union is not None:
                self.faults.delay_pull()  # the members wait in a quiet broadcast meanwhile, not a spinning Allreduce
            if pending.ticket is not None and not stopping:
                values = self.leader.wait(pending.ticket)
        union = None if stopping else pending.union
        pulled = self.group.broadcast_pulled(union, values, self.model.width)
        if pulled is not None and self.group_rows is not None:
            pulled = self.group_rows.merged(*pulled)
        return pulled

    def _prepare(self, batch: Batch) -> PreparedBatch:
        """The model's view of ``batch``; with preloaded data worked out once."""
        if not self.preload:
            return self.model.prepare(batch)
        prepared = self._prepared.get(id(batch))
        if prepared is None or prepared.batch is not batch:
            prepared = self._prepared[id(batch)] = self.model.prepare(batch)
        return prepared

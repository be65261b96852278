"""Held-out evaluation while training: when it is due, one pass over the held-out rows, its record, and
early stopping on the validation logloss.

One group evaluates (the job's first): its members divide the held-out rows and pull
their keys at the group's clock, so the figures are those of the PS's values at that
point of training. It runs every ``every`` clocks and whenever the group's rank 0 ends
an epoch of its data. With ``early_stopping`` every group also writes a checkpoint
cut at each ``every`` clock; the evaluations at those cuts count for early stopping:
the cut with the lowest logloss so far becomes checkpoint ``best``, and after
``early_stopping`` of them without a lower one the leader asks the shards to stop
every group at one clock (as a preemption does: a checkpoint, exit 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

from ..data.batch import Batch
from ..errors import DataError
from ..metrics import MetricsWriter
from ..models.base import Model
from .eval_pass import EvalSums, evaluate_pass
from .exchange import KeyExchange
from .group import WorkerGroup

__all__ = ["Validation", "ValidationSchedule"]

log = logging.getLogger(__name__)

AUC_BINS = 1 << 16
"""Probability bins per class for the AUC (summed over the group once per evaluation: 1 MiB)."""


class ValidationSchedule:
    """When held-out evaluations and the cuts early stopping needs fall (the same for every group).

    Args:
        every: clocks between evaluations (0: after every epoch only).
        early_stopping: evaluations at ``every`` cuts without improvement before stopping (0: never).
    """

    def __init__(self, *, every: int, early_stopping: int) -> None:
        self.every = every
        self.early_stopping = early_stopping

    def counted(self, clock: int) -> bool:
        """Whether an evaluation falls on ``clock`` by the clock (and so, with early stopping, a cut)."""
        return bool(self.every) and clock % self.every == 0

    def cut_due(self, clock: int) -> bool:
        """Whether every group writes a checkpoint cut at ``clock`` for early stopping."""
        return bool(self.early_stopping) and self.counted(clock)


class Validation:
    """The evaluating group's side (every member has one; only the leader logs, records and stops).

    Args:
        schedule: when evaluations fall.
        batches: one pass over this member's share of the held-out rows.
        exchange, group, model: the group's key exchange, collectives and model.
        metrics: the metrics file, for ``kind: "eval"`` records (the leader that writes it).
        mark_best: the leader's: called with the clock of a cut whose logloss is the lowest so far.
    """

    def __init__(self, *, schedule: ValidationSchedule, batches: Callable[[], Iterable[Batch]], exchange: KeyExchange,
                 group: WorkerGroup, model: Model, metrics: MetricsWriter | None = None,
                 mark_best: Callable[[int], None] | None = None) -> None:
        self.schedule = schedule
        self.batches = batches
        self.exchange = exchange
        self.group = group
        self.model = model
        self.metrics = metrics
        self.mark_best = mark_best
        self.best_logloss = math.inf
        self.best_clock = -1
        self.last: EvalSums | None = None
        self._since_best = 0

    def due(self, clock: int, epoch_ended: bool) -> bool:
        return epoch_ended or self.schedule.counted(clock)

    def run(self, clock: int, epoch_ended: bool) -> bool:
        """Evaluate at ``clock``; whether early stopping says to stop now (the leader then asks for it)."""
        sums = evaluate_pass(exchange=self.exchange, group=self.group, model=self.model, batches=self.batches(),
                             clock=clock, auc_bins=AUC_BINS)
        if not sums.rows:  # the same sums on every member: they all raise
            raise DataError("data.eval_path: the held-out data has no rows (only blank lines and comments)")
        self.last = sums
        counted = self.schedule.counted(clock)
        improved = counted and sums.logloss < self.best_logloss
        if improved:
            self.best_logloss, self.best_clock, self._since_best = sums.logloss, clock, 0
        elif counted:
            self._since_best += 1
        if self.group.is_leader:
            log.info("validation at clock %d%s: logloss %.4f, auc %.4f, accuracy %.4f over %d rows%s", clock,
                     " (epoch end)" if epoch_ended else "", sums.logloss, sums.auc, sums.accuracy, sums.rows,
                     " (best so far)" if improved else "")
            if self.metrics is not None:
                self.metrics.write("eval", clock=clock, epoch_end=epoch_ended, logloss=sums.logloss, auc=sums.auc,
                                   accuracy=sums.accuracy, rows=sums.rows, best=improved)
            if improved and self.schedule.early_stopping and self.mark_best is not None:
                self.mark_best(clock)
        patience = self.schedule.early_stopping
        stop = bool(patience) and self._since_best >= patience
        if stop and self.group.is_leader and self._since_best == patience:  # said once
            log.warning("early stopping at clock %d: no lower validation logloss in %d evaluations; the best, "
                        "%.4f, is the cut at clock %d", clock, patience, self.best_logloss, self.best_clock)
        return stop

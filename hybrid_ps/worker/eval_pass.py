"""An evaluation pass of a group: every member's rows scored with the PS's values, summed over the group."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..data.batch import Batch
from ..models.base import Model, PreparedBatch
from .exchange import KeyExchange, StepStats
from .group import WorkerGroup

__all__ = ["EvalSums", "evaluate_pass"]


@dataclass
class EvalSums:
    """Sums over the group's rows: log loss, rows, correct predictions."""

    loss: float = 0.0
    rows: int = 0
    correct: float = 0.0


def evaluate_pass(*, exchange: KeyExchange, group: WorkerGroup, model: Model, batches: Iterable[Batch],
                  clock: int) -> EvalSums:
    """Score every member's ``batches`` with the values pulled at ``clock`` (``FINAL_CLOCK``: once every
    group finished); every member takes part until the last member's rows are done."""
    sums = EvalSums()
    for batch in batches:
        pending = exchange.start(batch, clock)
        _accumulate(group, model, pending.batch, exchange.finish(pending), sums)
    while (pulled := exchange.finish(exchange.start(None, clock))) is not None:
        _accumulate(group, model, None, pulled, sums)  # other members still have rows
    return sums


def _accumulate(group: WorkerGroup, model: Model, batch: PreparedBatch | None,
                pulled: tuple[np.ndarray, np.ndarray] | None, sums: EvalSums) -> None:
    totals = np.zeros(StepStats.SIZE, dtype=np.float64)
    stats = StepStats()
    if batch is not None and batch.batch.num_rows and pulled is not None:
        keys, values = pulled
        stats.loss, _, probability = model.loss_and_gradient(batch, keys, values)
        stats.correct = float(np.sum((probability > 0.5) == (batch.batch.labels > 0.5)))
        stats.rows = batch.batch.num_rows
    stats.write(totals)
    group.allreduce_sum(totals)
    summed = StepStats.read(totals)
    sums.loss += summed.loss
    sums.rows += int(summed.rows)
    sums.correct += summed.correct

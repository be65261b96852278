"""An evaluation pass of a group: every member's rows scored with the PS's values, summed over the group."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..data.batch import Batch
from ..metrics import auc_from_histograms
from ..models.base import Model, PreparedBatch
from .exchange import KeyExchange, StepStats
from .group import WorkerGroup

__all__ = ["EvalSums", "evaluate_pass"]


@dataclass
class EvalSums:
    """Sums over the group's rows: log loss, rows, correct predictions, and (with ``auc_bins``) per-class
    histograms of the probabilities."""

    loss: float = 0.0
    rows: int = 0
    correct: float = 0.0
    positive_bins: np.ndarray = field(default_factory=lambda: np.zeros(0))
    negative_bins: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def logloss(self) -> float:
        return self.loss / self.rows if self.rows else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows if self.rows else float("nan")

    @property
    def auc(self) -> float:
        """From the histograms (NaN without them, or while a class is missing)."""
        return auc_from_histograms(self.positive_bins, self.negative_bins) if self.positive_bins.size else float("nan")


def evaluate_pass(*, exchange: KeyExchange, group: WorkerGroup, model: Model, batches: Iterable[Batch],
                  clock: int, auc_bins: int = 0) -> EvalSums:
    """Score every member's ``batches`` with the values pulled at ``clock`` (``FINAL_CLOCK``: once every
    group finished); every member takes part until the last member's rows are done. With ``auc_bins``
    the probabilities are also counted in that many bins per class (summed over the group at the end)."""
    sums = EvalSums(positive_bins=np.zeros(auc_bins), negative_bins=np.zeros(auc_bins))
    for batch in batches:
        pending = exchange.start(batch, clock)
        _accumulate(group, model, pending.batch, exchange.finish(pending), sums)
    while (pulled := exchange.finish(exchange.start(None, clock))) is not None:
        _accumulate(group, model, None, pulled, sums)  # other members still have rows
    if auc_bins:
        histograms = np.concatenate([sums.positive_bins, sums.negative_bins])
        group.allreduce_sum(histograms)
        sums.positive_bins, sums.negative_bins = histograms[:auc_bins], histograms[auc_bins:]
    return sums


def _accumulate(group: WorkerGroup, model: Model, batch: PreparedBatch | None,
                pulled: tuple[np.ndarray, np.ndarray] | None, sums: EvalSums) -> None:
    totals = np.zeros(StepStats.SIZE, dtype=np.float64)
    stats = StepStats()
    if batch is not None and batch.batch.num_rows and pulled is not None:
        keys, values = pulled
        stats.loss, _, probability = model.loss_and_gradient(batch, keys, values)
        positive = batch.batch.labels > 0.5
        stats.correct = float(np.sum((probability > 0.5) == positive))
        stats.rows = batch.batch.num_rows
        bins = sums.positive_bins.size
        if bins:
            index = np.minimum((np.asarray(probability) * bins).astype(np.int64), bins - 1)
            sums.positive_bins += np.bincount(index[positive], minlength=bins)
            sums.negative_bins += np.bincount(index[~positive], minlength=bins)
    stats.write(totals)
    group.allreduce_sum(totals)
    summed = StepStats.read(totals)
    sums.loss += summed.loss
    sums.rows += int(summed.rows)
    sums.correct += summed.correct

"""Sparse logistic regression: one weight per feature key plus a bias under a reserved key."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.batch import Batch

__all__ = ["BIAS_KEY", "LogisticRegression", "PreparedBatch", "sigmoid"]

BIAS_KEY = np.uint64(np.iinfo(np.uint64).max)
"""The bias weight's key; feature keys must not use 2**64 - 1."""


def sigmoid(margin: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return np.exp(-np.logaddexp(0.0, -margin))


@dataclass(frozen=True)
class PreparedBatch:
    """A batch with its key set worked out once (one sort), for the exchange and the gradient.

    Attributes:
        batch: the rows.
        keys: sorted unique keys the rows touch, then ``BIAS_KEY`` (the largest uint64, so still sorted).
        inverse: int32 (int64 for huge batches) ``[nnz]``, the index in ``keys`` of each of ``batch.keys``.
        row_ids: int32 (or int64) ``[nnz]``, the row of each nonzero.
    """

    batch: Batch
    keys: np.ndarray
    inverse: np.ndarray
    row_ids: np.ndarray

    def positions_in(self, keys: np.ndarray) -> np.ndarray:
        """The index in ``keys`` (sorted, covering ``self.keys``) of each nonzero."""
        if keys.size == self.keys.size:  # the same set: a single-rank group, or members with equal keys
            return self.inverse
        return np.searchsorted(keys, self.keys)[self.inverse]  # sorted queries: cache friendly


class LogisticRegression:
    """``p(y=1|x) = sigmoid(bias + sum_j w[key_j] * x_j)``, vectorised over a CSR batch."""

    kind = "logistic_regression"
    width = 1

    def prepare(self, batch: Batch) -> PreparedBatch:
        """The batch's sorted key set (bias included) and each nonzero's place in it."""
        unique, inverse = np.unique(batch.keys, return_inverse=True)
        keys = np.empty(unique.size + 1, dtype=np.uint64)
        keys[:-1] = unique
        keys[-1] = BIAS_KEY
        index = np.int32 if batch.keys.size < 2**31 else np.int64  # half the memory when batches are kept
        return PreparedBatch(batch, keys, inverse.reshape(-1).astype(index), batch.row_ids.astype(index))

    def _prepared(self, batch: Batch | PreparedBatch) -> PreparedBatch:
        return batch if isinstance(batch, PreparedBatch) else self.prepare(batch)

    def touched_keys(self, batch: Batch) -> np.ndarray:
        """Sorted unique keys a batch needs, the bias key included."""
        return self.prepare(batch).keys

    def margins(self, batch: Batch | PreparedBatch, keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row margins and the position of each batch key inside ``keys``.

        Args:
            batch: the rows (prepared or not).
            keys: sorted keys covering the batch's keys and ``BIAS_KEY``.
            weights: ``[len(keys), 1]`` or ``[len(keys)]`` weights for ``keys``.
        """
        prepared = self._prepared(batch)
        rows = prepared.batch
        w = weights.reshape(-1)
        position = prepared.positions_in(keys)
        margin = np.bincount(
            prepared.row_ids, weights=w[position] * rows.values, minlength=rows.num_rows
        ).astype(np.float64, copy=False)  # bincount of no weights returns int64
        margin += w[-1] if keys[-1] == BIAS_KEY else 0.0
        return margin, position

    def loss_and_gradient(
        self, batch: Batch | PreparedBatch, keys: np.ndarray, weights: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Summed logloss, summed gradient over ``keys``, and predicted probabilities.

        Returns:
            ``(loss_sum, grad [len(keys)] float64, probabilities [rows])``.
        """
        prepared = self._prepared(batch)
        rows = prepared.batch
        margin, position = self.margins(prepared, keys, weights)
        labels = rows.labels.astype(np.float64)
        loss = float(np.sum(np.logaddexp(0.0, margin) - labels * margin))
        probability = sigmoid(margin)
        residual = probability - labels
        grad = np.bincount(position, weights=residual[prepared.row_ids] * rows.values, minlength=keys.size)
        grad = grad.astype(np.float64, copy=False)
        grad[-1] += residual.sum()
        return loss, grad, probability

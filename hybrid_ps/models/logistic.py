"""Sparse logistic regression: one weight per feature key plus a bias under a reserved key."""

from __future__ import annotations

import numpy as np

from ..data.batch import Batch

__all__ = ["BIAS_KEY", "LogisticRegression", "sigmoid"]

BIAS_KEY = np.uint64(np.iinfo(np.uint64).max)
"""The bias weight's key; feature keys must not use 2**64 - 1."""


def sigmoid(margin: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return np.exp(-np.logaddexp(0.0, -margin))


class LogisticRegression:
    """``p(y=1|x) = sigmoid(bias + sum_j w[key_j] * x_j)``, vectorised over a CSR batch."""

    kind = "logistic_regression"
    width = 1

    def touched_keys(self, batch: Batch) -> np.ndarray:
        """Sorted unique keys a batch needs, the bias key included."""
        return np.union1d(batch.keys, np.array([BIAS_KEY], dtype=np.uint64))

    def margins(self, batch: Batch, keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row margins and the position of each batch key inside ``keys``.

        Args:
            batch: the rows.
            keys: sorted keys covering ``batch.keys`` and ``BIAS_KEY``.
            weights: ``[len(keys), 1]`` or ``[len(keys)]`` weights for ``keys``.
        """
        w = weights.reshape(-1)
        position = np.searchsorted(keys, batch.keys)
        margin = np.bincount(
            batch.row_ids, weights=w[position] * batch.values, minlength=batch.num_rows
        ).astype(np.float64, copy=False)  # bincount of no weights returns int64
        margin += w[-1] if keys[-1] == BIAS_KEY else 0.0
        return margin, position

    def loss_and_gradient(
        self, batch: Batch, keys: np.ndarray, weights: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Summed logloss, summed gradient over ``keys``, and predicted probabilities.

        Returns:
            ``(loss_sum, grad [len(keys)] float64, probabilities [rows])``.
        """
        margin, position = self.margins(batch, keys, weights)
        labels = batch.labels.astype(np.float64)
        loss = float(np.sum(np.logaddexp(0.0, margin) - labels * margin))
        probability = sigmoid(margin)
        residual = probability - labels
        grad = np.bincount(position, weights=residual[batch.row_ids] * batch.values, minlength=keys.size)
        grad = grad.astype(np.float64, copy=False)
        grad[-1] += residual.sum()
        return loss, grad, probability

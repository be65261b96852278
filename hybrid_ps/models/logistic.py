"""Sparse logistic regression: one weight per feature key plus a bias under ``BIAS_KEY``."""

from __future__ import annotations

import numpy as np

from ..data.batch import Batch
from .base import BIAS_KEY, Model, PreparedBatch, logistic_loss, sigmoid

__all__ = ["BIAS_KEY", "LogisticRegression", "PreparedBatch", "sigmoid"]


class LogisticRegression(Model):
    """``p(y=1|x) = sigmoid(bias + sum_j w[key_j] * x_j)``, vectorised over a CSR batch (width 1)."""

    kind = "logistic_regression"
    width = 1

    def margins(self, batch: Batch | PreparedBatch, keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row margins and the position of each batch key inside ``keys``.

        Args:
            batch: the rows (prepared or not).
            keys: sorted keys covering the batch's keys and ``BIAS_KEY``.
            weights: ``[len(keys), 1]`` or ``[len(keys)]`` weights for ``keys``.
        """
        prepared = self.prepared(batch)
        rows = prepared.batch
        w = weights.reshape(-1)
        position = prepared.positions_in(keys)
        margin = np.bincount(
            prepared.row_ids, weights=w[position] * rows.values, minlength=rows.num_rows
        ).astype(np.float64, copy=False)  # bincount of no weights returns int64
        margin += w[-1] if keys[-1] == BIAS_KEY else 0.0
        return margin, position

    def loss_and_gradient(self, batch: Batch | PreparedBatch, keys: np.ndarray,
                          stored: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        prepared = self.prepared(batch)
        rows = prepared.batch
        margin, position = self.margins(prepared, keys, stored)
        loss, residual, probability = logistic_loss(margin, rows.labels)
        grad = np.bincount(position, weights=residual[prepared.row_ids] * rows.values, minlength=keys.size)
        grad = grad.astype(np.float64, copy=False)
        grad[-1] += residual.sum()
        return loss, grad.reshape(-1, 1), probability

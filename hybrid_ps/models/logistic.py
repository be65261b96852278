"""Sparse logistic regression: one weight per feature key plus a bias under ``BIAS_KEY``."""

from __future__ import annotations

import numpy as np

from ..data.batch import Batch
from ._kernels import logistic_loss_and_gradient, logistic_margins
from .base import BIAS_KEY, Model, PreparedBatch, sigmoid
from .kernel_inputs import bias_index, csr_arrays, float_rows

__all__ = ["BIAS_KEY", "LogisticRegression", "PreparedBatch", "sigmoid"]


class LogisticRegression(Model):
    """``p(y=1|x) = sigmoid(bias + sum_j w[key_j] * x_j)``, one compiled pass per row (width 1, float64 sums)."""

    kind = "logistic_regression"
    width = 1

    def margins(self, batch: Batch | PreparedBatch, keys: np.ndarray,
                weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row margins and the position of each batch key inside ``keys``.

        Args:
            batch: the rows (prepared or not).
            keys: sorted keys covering the batch's keys and ``BIAS_KEY``.
            weights: ``[len(keys), 1]`` or ``[len(keys)]`` weights for ``keys``.
        """
        prepared = self.prepared(batch)
        csr = csr_arrays(prepared, keys)
        margin = np.empty(prepared.batch.num_rows)
        logistic_margins(csr.indptr, csr.positions, csr.values, float_rows(weights, (keys.size,)),
                         bias_index=bias_index(keys), margins_out=margin)
        return margin, csr.positions

    def loss_and_gradient(self, batch: Batch | PreparedBatch, keys: np.ndarray,
                          stored: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        prepared = self.prepared(batch)
        csr = csr_arrays(prepared, keys)
        grad = np.zeros(keys.size)
        probability = np.empty(prepared.batch.num_rows)
        loss = logistic_loss_and_gradient(csr.indptr, csr.positions, csr.values, csr.labels,
                                          float_rows(stored, (keys.size,)), bias_index=bias_index(keys),
                                          grad_out=grad, probabilities_out=probability)
        return loss, grad.reshape(-1, 1), probability

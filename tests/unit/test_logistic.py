"""Logistic regression: loss against a dense computation, gradient against finite differences."""

from __future__ import annotations

import numpy as np

from hybrid_ps.data.batch import Batch
from hybrid_ps.models.logistic import BIAS_KEY, LogisticRegression


def _batch() -> Batch:
    rng = np.random.default_rng(2)
    rows, nnz = 30, 6
    keys = rng.integers(0, 12, rows * nnz).astype(np.uint64) * np.uint64(1000)  # repeats inside rows
    return Batch(
        labels=rng.integers(0, 2, rows).astype(np.float32),
        indptr=np.arange(rows + 1, dtype=np.int64) * nnz,
        keys=keys,
        values=rng.normal(size=rows * nnz).astype(np.float32),
    )


def test_touched_keys_are_sorted_unique_with_bias_last():
    model = LogisticRegression()
    keys = model.touched_keys(_batch())
    assert keys[-1] == BIAS_KEY and np.all(np.diff(keys.astype(np.float64)) > 0)


def test_loss_matches_a_dense_computation():
    model, batch = LogisticRegression(), _batch()
    keys = model.touched_keys(batch)
    weights = np.random.default_rng(0).normal(size=keys.size)
    dense = np.zeros((batch.num_rows, keys.size))
    np.add.at(dense, (batch.row_ids, np.searchsorted(keys, batch.keys)), batch.values)
    dense[:, -1] = 1.0  # bias
    margin = dense @ weights
    expected = np.sum(np.logaddexp(0, margin) - batch.labels * margin)
    loss, _, probability = model.loss_and_gradient(batch, keys, weights)
    assert np.isclose(loss, expected)
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-margin)), rtol=1e-10)


def test_gradient_matches_finite_differences():
    model, batch = LogisticRegression(), _batch()
    keys = model.touched_keys(batch)
    weights = np.random.default_rng(1).normal(size=keys.size) * 0.3
    _, grad, _ = model.loss_and_gradient(batch, keys, weights)
    eps = 1e-6
    numeric = np.empty_like(weights)
    for j in range(keys.size):
        step = np.zeros_like(weights)
        step[j] = eps
        numeric[j] = (model.loss_and_gradient(batch, keys, weights + step)[0]
                      - model.loss_and_gradient(batch, keys, weights - step)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)

"""hybrid_ps.models.logistic: loss against a dense numpy computation, gradient against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ps.data.batch import Batch
from hybrid_ps.models.logistic import BIAS_KEY, LogisticRegression, sigmoid


def _batch(seed: int = 2, rows: int = 30) -> Batch:
    """Rows of varying length (some empty) with keys repeated inside rows, spread over the uint64 range."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 9, rows)
    lengths[0], lengths[1] = 0, 8
    vocabulary = np.array([0, 1, 7, 1000, 2**32, 2**63, 2**64 - 2, 12345678901234], dtype=np.uint64)
    keys = vocabulary[rng.integers(0, vocabulary.size, int(lengths.sum()))]
    keys[1:4] = keys[0]  # row 1 starts with one key four times (its values add up)
    batch = Batch(
        labels=rng.integers(0, 2, rows).astype(np.float32),
        indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        keys=keys,
        values=rng.normal(size=int(lengths.sum())).astype(np.float32),
    )
    rows_with_repeats = sum(
        np.unique(batch.keys[batch.indptr[i] : batch.indptr[i + 1]]).size < lengths[i] for i in range(rows))
    assert rows_with_repeats >= 3
    return batch


def _dense(batch: Batch, keys: np.ndarray) -> np.ndarray:
    """The design matrix over ``keys`` (repeated keys summed), bias column = 1."""
    dense = np.zeros((batch.num_rows, keys.size))
    for row in range(batch.num_rows):
        for j in range(batch.indptr[row], batch.indptr[row + 1]):
            column = int(np.flatnonzero(keys == batch.keys[j])[0])
            dense[row, column] += float(batch.values[j])
    dense[:, list(keys).index(BIAS_KEY)] = 1.0
    return dense


def _dense_loss(batch: Batch, keys: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    x = _dense(batch, keys)
    y = batch.labels.astype(np.float64)
    margin = x @ weights
    p = 1.0 / (1.0 + np.exp(-margin))
    loss = float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return loss, x.T @ (p - y), p


def test_prepared_keys_are_sorted_unique_with_the_bias_last():
    model, batch = LogisticRegression(), _batch()
    keys = model.prepare(batch).keys
    assert keys.dtype == np.uint64 and keys[-1] == BIAS_KEY == np.uint64(2**64 - 1)
    assert np.all(keys[1:] > keys[:-1])
    np.testing.assert_array_equal(keys[:-1], np.unique(batch.keys))
    assert model.width == 1


def test_loss_and_probabilities_equal_a_dense_computation():
    model, batch = LogisticRegression(), _batch()
    keys = model.prepare(batch).keys
    weights = np.random.default_rng(0).normal(size=keys.size)
    loss, grad, probability = model.loss_and_gradient(batch, keys, weights)
    grad = grad[:, 0]
    expected_loss, expected_grad, expected_p = _dense_loss(batch, keys, weights)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(probability, expected_p, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-12)
    assert grad.dtype == np.float64 and grad.shape == (keys.size,)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gradient_matches_central_finite_differences(seed):
    model, batch = LogisticRegression(), _batch(seed)
    keys = model.prepare(batch).keys
    weights = np.random.default_rng(seed).normal(size=keys.size) * 0.5
    _, grad, _ = model.loss_and_gradient(batch, keys, weights)
    grad = grad[:, 0]
    eps = 1e-6
    numeric = np.empty_like(weights)
    for j in range(keys.size):
        step = np.zeros_like(weights)
        step[j] = eps
        numeric[j] = (model.loss_and_gradient(batch, keys, weights + step)[0]
                      - model.loss_and_gradient(batch, keys, weights - step)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)
    assert abs(grad[-1]) > 1e-3  # the bias takes part


def test_bias_gradient_is_the_summed_residual():
    model, batch = LogisticRegression(), _batch()
    keys = model.prepare(batch).keys
    weights = np.random.default_rng(4).normal(size=keys.size)
    _, grad, probability = model.loss_and_gradient(batch, keys, weights)
    grad = grad[:, 0]
    assert grad[-1] == pytest.approx(np.sum(probability - batch.labels), rel=1e-12)


def test_repeated_keys_in_a_row_add_up():
    model = LogisticRegression()
    repeated = Batch(labels=np.array([1.0], np.float32), indptr=np.array([0, 3]),
                     keys=np.array([5, 5, 9], np.uint64), values=np.array([1.0, 2.0, 0.5], np.float32))
    merged = Batch(labels=np.array([1.0], np.float32), indptr=np.array([0, 2]),
                   keys=np.array([5, 9], np.uint64), values=np.array([3.0, 0.5], np.float32))
    keys = model.prepare(repeated).keys
    weights = np.array([0.3, -0.7, 0.1])
    a, b = model.loss_and_gradient(repeated, keys, weights), model.loss_and_gradient(merged, keys, weights)
    assert a[0] == pytest.approx(b[0], rel=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12)
    margin = 0.3 * 3.0 - 0.7 * 0.5 + 0.1
    assert a[0] == pytest.approx(np.logaddexp(0, margin) - margin, rel=1e-12)


def test_float32_weights_from_the_ps_and_a_column_shape():
    model, batch = LogisticRegression(), _batch()
    keys = model.prepare(batch).keys
    weights = np.random.default_rng(5).normal(size=(keys.size, 1)).astype(np.float32)
    loss, grad, _ = model.loss_and_gradient(batch, keys, weights)
    grad = grad[:, 0]
    expected_loss, expected_grad, _ = _dense_loss(batch, keys, weights[:, 0].astype(np.float64))
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_keys_beyond_the_batch_get_zero_gradient():
    model, batch = LogisticRegression(), _batch()
    extra = np.array([3, 99, 2**40], np.uint64)  # pulled but unused by this batch
    keys = np.union1d(model.prepare(batch).keys, extra)
    assert keys[-1] == BIAS_KEY
    weights = np.random.default_rng(6).normal(size=keys.size)
    loss, grad, _ = model.loss_and_gradient(batch, keys, weights)
    grad = grad[:, 0]
    unused = np.isin(keys, extra)
    assert np.all(grad[unused] == 0)
    assert loss == pytest.approx(_dense_loss(batch, keys, weights)[0], rel=1e-12)


def test_extreme_margins_stay_finite():
    model = LogisticRegression()
    batch = Batch(labels=np.array([1.0, 0.0], np.float32), indptr=np.array([0, 1, 2]),
                  keys=np.array([1, 2], np.uint64), values=np.array([1.0, 1.0], np.float32))
    keys = model.prepare(batch).keys
    loss, grad, probability = model.loss_and_gradient(batch, keys, np.array([-800.0, 800.0, 0.0]))
    assert np.isfinite(loss) and loss == pytest.approx(1600.0)
    assert np.all(np.isfinite(grad)) and np.all(np.isfinite(probability))
    np.testing.assert_allclose(grad[:, 0], [-1.0, 1.0, 0.0], atol=1e-12)


def test_rows_without_features():
    """Regression (found by this test; LogisticRegression.margins): a batch with no nonzeros crashed.

    ``np.bincount`` of an empty ``row_ids`` returns an int64 array even with ``weights``, so
    ``margin += w[-1]`` raised numpy's UFuncTypeError (float64 into int64). Reachable from the trainer
    and from evaluation: libsvm lines holding only a label ("1") are accepted by the reader, and a batch
    made only of such rows (e.g. ``--batch-size 1``) has rows but no keys; ``Batch.empty()`` failed the same way.
    """
    model = LogisticRegression()
    batch = Batch(labels=np.array([1.0, 0.0], np.float32), indptr=np.zeros(3, np.int64),
                  keys=np.zeros(0, np.uint64), values=np.zeros(0, np.float32))
    keys = model.prepare(batch).keys
    np.testing.assert_array_equal(keys, [BIAS_KEY])
    bias = 0.4
    try:
        loss, grad, probability = model.loss_and_gradient(batch, keys, np.array([bias]))
    except Exception as e:  # noqa: BLE001 - any exception is the bug
        raise AssertionError(f"BUG: loss_and_gradient on rows without features raised {e!r}") from e
    p = 1 / (1 + np.exp(-bias))
    assert loss == pytest.approx(-np.log(p) - np.log(1 - p), rel=1e-12)
    np.testing.assert_allclose(probability, [p, p], rtol=1e-12)
    np.testing.assert_allclose(grad[:, 0], [(p - 1) + p], rtol=1e-12)


def test_empty_batch():
    model = LogisticRegression()
    keys = model.prepare(Batch.empty()).keys
    np.testing.assert_array_equal(keys, [BIAS_KEY])
    loss, grad, probability = model.loss_and_gradient(Batch.empty(), keys, np.array([0.4]))
    assert loss == 0.0 and grad.tolist() == [[0.0]] and probability.size == 0


def test_sigmoid():
    margins = np.array([-1000.0, -5.0, 0.0, 5.0, 1000.0])
    np.testing.assert_allclose(sigmoid(margins), [0.0, 1 / (1 + np.exp(5)), 0.5, 1 / (1 + np.exp(-5)), 1.0],
                               rtol=1e-12, atol=1e-300)


def test_prepared_batch_maps_every_nonzero_to_its_key():
    batch = _batch()
    prepared = LogisticRegression().prepare(batch)
    assert prepared.keys[-1] == BIAS_KEY and np.all(np.diff(prepared.keys[:-1].astype(np.float64)) > 0)
    np.testing.assert_array_equal(prepared.keys[prepared.inverse], batch.keys)
    np.testing.assert_array_equal(prepared.row_ids, batch.row_ids)
    wider = np.union1d(prepared.keys, np.array([3, 2**40], dtype=np.uint64))  # a group's union holds more keys
    np.testing.assert_array_equal(wider[prepared.positions_in(wider)], batch.keys)


def test_prepared_and_plain_batches_give_the_same_loss_and_gradient():
    model, batch = LogisticRegression(), _batch(seed=5)
    keys = np.union1d(model.prepare(batch).keys, np.array([42], dtype=np.uint64))
    weights = np.random.default_rng(0).normal(size=keys.size)
    plain, prepared = model.loss_and_gradient(batch, keys, weights), model.loss_and_gradient(model.prepare(batch), keys, weights)
    assert plain[0] == pytest.approx(prepared[0])
    np.testing.assert_allclose(plain[1], prepared[1])

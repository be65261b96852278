"""hybrid_ps.models._kernels: every compiled row loop against its plain-numpy reference on generated batches.

The references are the vectorised numpy passes the models ran before the kernels (one bincount or
reduceat per sum) and the numpy ``hashed_uniform``. Both sides compute in float64 but add up in
different orders, so a result may differ by rounding: ``|kernel - reference| <= 1e-12 * (|reference|
+ magnitude)``, the magnitude being the same sum over absolute values (``_magnitudes``: where terms
cancel, the rounding is relative to the terms, not to their sum). ``merged_values`` adds in numpy's
order and ``fill_hashed_uniform`` rounds once: both must agree exactly.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hybrid_ps.data.batch import Batch
from hybrid_ps.models import _kernels
from hybrid_ps.models.base import logistic_loss
from hybrid_ps.models.fm import FactorizationMachine, merged_values
from hybrid_ps.models.logistic import LogisticRegression
from hybrid_ps.placement.ring import mix64

RTOL = 1e-12
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- plain-numpy references


def _row_ids(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(indptr.size - 1), np.diff(indptr))


def reference_merged(indptr: np.ndarray, positions: np.ndarray, values: np.ndarray, keys: int) -> np.ndarray | None:
    """Per nonzero, the sum of its key's values in its row (one sort of (row, key) pairs); None without repeats."""
    if positions.size < 2:
        return None
    pair = _row_ids(indptr).astype(np.int64) * np.int64(keys) + positions
    unique, group = np.unique(pair, return_inverse=True)
    if unique.size == pair.size:
        return None
    group = group.reshape(-1)
    return np.bincount(group, weights=values.astype(np.float64), minlength=unique.size)[group]


def reference_logistic(indptr: np.ndarray, positions: np.ndarray, values: np.ndarray, labels: np.ndarray,
                       weights: np.ndarray, bias_index: int) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Margins, summed logloss, gradient and probabilities of logistic regression (weights widened to float64)."""
    rows = indptr.size - 1
    row_ids = _row_ids(indptr)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    margin = np.bincount(row_ids, weights=w[positions] * values, minlength=rows).astype(np.float64, copy=False)
    margin += w[bias_index] if bias_index >= 0 else 0.0
    loss, residual, probability = logistic_loss(margin, labels)
    grad = np.bincount(positions, weights=residual[row_ids] * values, minlength=w.size).astype(np.float64, copy=False)
    if bias_index >= 0:
        grad[bias_index] += residual.sum()
    return margin, loss, grad, probability


def reference_fm(indptr: np.ndarray, positions: np.ndarray, values: np.ndarray, merged: np.ndarray | None,
                 labels: np.ndarray, params: np.ndarray,
                 bias_index: int) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Margins, summed logloss, gradient and probabilities of the factorization machine (``params`` float64)."""
    rows, k = indptr.size - 1, params.shape[1] - 1
    row_ids = _row_ids(indptr)
    x = values.astype(np.float64)
    gathered = params[positions]  # [nnz, 1 + k]
    # Per nonzero: [w_i x_n, v_i1 x_n .. v_ik x_n, sum_f v_if^2 x_n X_i], then one segmented sum per row.
    terms = np.empty((x.size, k + 2), dtype=np.float64)
    np.multiply(gathered, x[:, None], out=terms[:, : k + 1])
    vx = terms[:, 1 : k + 1]
    if merged is None:  # X_i = x_n
        np.einsum("nf,nf->n", vx, vx, out=terms[:, k + 1])
    else:  # summed over a key's nonzeros in a row: v^2 X^2
        np.einsum("nf,nf->n", vx, gathered[:, 1:], out=terms[:, k + 1])
        terms[:, k + 1] *= merged
    per_row = np.zeros((rows, k + 2), dtype=np.float64)
    starts = indptr[:-1] - indptr[0]
    nonempty = np.flatnonzero(indptr[1:] > indptr[:-1])
    if nonempty.size:
        per_row[nonempty] = np.add.reduceat(terms, starts[nonempty], axis=0)
    sums = per_row[:, 1 : k + 1]
    margin = per_row[:, 0] + 0.5 * (np.einsum("rf,rf->r", sums, sums) - per_row[:, k + 1])
    if bias_index >= 0:
        margin += params[bias_index, 0]
    self_term = vx if merged is None else gathered[:, 1:] * merged[:, None]
    loss, residual, probability = logistic_loss(margin, labels)
    # Per nonzero n of key i: d margin / d w_i += x_n; d margin / d v_if += x_n (S_f - v_if X_i).
    scale = residual[row_ids] * x
    per_nonzero = np.empty((scale.size, k + 1), dtype=np.float64)
    per_nonzero[:, 0] = scale
    np.subtract(sums[row_ids], self_term, out=per_nonzero[:, 1:])
    per_nonzero[:, 1:] *= scale[:, None]
    flat = (positions.astype(np.int64)[:, None] * (k + 1) + np.arange(k + 1, dtype=np.int64)).reshape(-1)
    summed = np.bincount(flat, weights=per_nonzero.reshape(-1), minlength=params.size)
    grad = summed.astype(np.float64, copy=False).reshape(params.shape)
    if bias_index >= 0:
        grad[bias_index, 0] += residual.sum()
    return margin, loss, grad, probability


def reference_hashed_uniform(keys: np.ndarray, columns: int, salt: int) -> np.ndarray:
    """``[len(keys), columns]`` float64 uniform in [-1, 1), a fixed function of (key, column, salt), in numpy."""
    per_key = mix64(keys.astype(np.uint64) ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF))  # distinct keys stay distinct
    bits = mix64(per_key[:, None] + np.arange(columns, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (2.0 / 2**53) - 1.0


def _scatter(index: np.ndarray, values: np.ndarray, count: int, columns: int) -> np.ndarray:
    flat_index = (index.astype(np.int64)[:, None] * columns + np.arange(columns)).reshape(-1)
    return np.bincount(flat_index, weights=values.reshape(-1), minlength=count * columns).reshape(count, columns)


def reference_pool(indptr: np.ndarray, positions: np.ndarray, values: np.ndarray, params: np.ndarray,
                   bias_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Wide & deep's linear part ``bias + sum w x`` and sum-pooled embeddings ``sum v x`` per row."""
    rows, k = indptr.size - 1, params.shape[1] - 1
    row_ids, x = _row_ids(indptr), values.astype(np.float64)
    wide = np.bincount(row_ids, weights=params[positions, 0] * x, minlength=rows).astype(np.float64)
    wide += params[bias_index, 0] if bias_index >= 0 else 0.0
    return wide, _scatter(row_ids, params[positions, 1:] * x[:, None], rows, k)


def reference_scatter(indptr: np.ndarray, positions: np.ndarray, values: np.ndarray, residual: np.ndarray,
                      pooled_grad: np.ndarray, bias_index: int, keys: int) -> np.ndarray:
    """Wide & deep's gradient of the rows' linear part and pooled embeddings with respect to the key rows."""
    k = pooled_grad.shape[1]
    row_ids, x = _row_ids(indptr), values.astype(np.float64)
    grad = np.zeros((keys, 1 + k))
    grad[:, 0] = np.bincount(positions, weights=residual[row_ids] * x, minlength=keys)
    if bias_index >= 0:
        grad[bias_index, 0] += residual.sum()
    grad[:, 1:] += _scatter(positions, pooled_grad[row_ids] * x[:, None], keys, k)
    return grad


def _magnitudes(indptr: np.ndarray, positions: np.ndarray, values: np.ndarray, merged: np.ndarray | None,
                params: np.ndarray, bias_index: int) -> tuple[np.ndarray, np.ndarray, float]:
    """What the rounding of the FM's (or, at width 1, LR's) sums is relative to: per row the margin's sum over
    absolute terms, per parameter its gradient's (each term also carrying the rounding of its row's residual,
    at most that margin bound), and for the loss the sum over rows."""
    rows, k = indptr.size - 1, params.shape[1] - 1
    row_ids = _row_ids(indptr)
    x = np.abs(values.astype(np.float64))
    big_x = x if merged is None else np.abs(merged)
    theta = np.abs(params[positions])
    bias = abs(params[bias_index, 0]) if bias_index >= 0 else 0.0
    linear = np.bincount(row_ids, weights=theta[:, 0] * x, minlength=rows)
    sums = _scatter(row_ids, theta[:, 1:] * x[:, None], rows, k)
    squares = np.bincount(row_ids, weights=(theta[:, 1:] ** 2).sum(axis=1) * x * big_x, minlength=rows)
    margin = bias + linear + 0.5 * ((sums**2).sum(axis=1) + squares)
    carried = (1.0 + margin)[row_ids] * x
    per_nonzero = np.empty_like(theta)
    per_nonzero[:, 0] = carried
    per_nonzero[:, 1:] = carried[:, None] * (sums[row_ids] + theta[:, 1:] * big_x[:, None])
    grad = _scatter(positions, per_nonzero, params.shape[0], k + 1)
    if bias_index >= 0:
        grad[bias_index, 0] += (1.0 + margin).sum()
    return margin, grad, float((1.0 + margin).sum())


def assert_close(got: np.ndarray | float, want: np.ndarray | float, magnitude: np.ndarray | float) -> None:
    """``got`` within ``RTOL`` of ``want`` relative to ``|want| + magnitude``; both finite."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and np.all(np.isfinite(got)) and np.all(np.isfinite(want))
    error = np.abs(got - want)
    allowed = RTOL * (np.abs(want) + magnitude)
    assert np.all(error <= allowed), f"worst excess {np.max(error - allowed)}: got {got}, want {want}"


# ---------------------------------------------------------------- generated inputs


@st.composite
def csr_batches(draw: st.DrawFn, max_rows: int = 8, max_nonzeros: int = 7, eighths: bool = False) -> dict:
    """Rows of 0..``max_nonzeros`` nonzeros over a few keys (repeats in a row are common), some keys unused,
    the bias row or none, and parameters small or huge (margins in the thousands and beyond).

    ``eighths``: values are multiples of 1/8, so that a row's sums of them are exact in float32.
    """
    rows = draw(st.integers(0, max_rows))
    lengths = np.array(draw(st.lists(st.integers(0, max_nonzeros), min_size=rows, max_size=rows)), dtype=np.int64)
    nnz = int(lengths.sum())
    used = draw(st.integers(1, 5))
    keys = used + draw(st.integers(0, 2)) + 1  # unused keys, then the bias row
    positions = np.array(draw(st.lists(st.integers(0, used - 1), min_size=nnz, max_size=nnz)), dtype=np.int64)
    value = st.integers(-32, 32).map(lambda eighth: eighth / 8) if eighths else st.floats(-4, 4, width=32)
    values = draw(st.lists(value | st.just(1.0), min_size=nnz, max_size=nnz))
    labels = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=rows, max_size=rows))
    return {
        "indptr": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "positions": positions.astype(draw(st.sampled_from([np.int32, np.int64]))),
        "values": np.array(values, dtype=np.float32),
        "labels": np.array(labels, dtype=np.float32),
        "keys": keys,
        "bias_index": draw(st.sampled_from([keys - 1, -1])),
        "scale": draw(st.sampled_from([0.5, 2.0, 300.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "float32": draw(st.booleans()),
    }


def _parameters(case: dict, width: int, with_initial: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The stored rows (float32 or float64), the initial offsets or None, and their float64 sum."""
    rng = np.random.default_rng(case["seed"])
    stored = rng.normal(size=(case["keys"], width)) * case["scale"]
    stored = stored.astype(np.float32 if case["float32"] else np.float64)
    initial = rng.uniform(-1, 1, size=stored.shape) * case["scale"] if with_initial else None
    params = stored.astype(np.float64) + (0.0 if initial is None else initial)
    return stored, initial, params


_NO_ROWS = {"indptr": np.zeros(1, np.int64), "positions": np.zeros(0, np.int32), "values": np.zeros(0, np.float32),
            "labels": np.zeros(0, np.float32), "keys": 1, "bias_index": 0, "scale": 1.0, "seed": 0, "float32": True}
_EMPTY_ROWS = {**_NO_ROWS, "indptr": np.zeros(3, np.int64), "labels": np.array([1.0, 0.0], np.float32)}
_ONE_KEY = {"indptr": np.array([0, 1]), "positions": np.zeros(1, np.int64), "values": np.array([0.5], np.float32),
            "labels": np.array([1.0], np.float32), "keys": 1, "bias_index": -1, "scale": 1.0, "seed": 1,
            "float32": False}
_REPEATED = {"indptr": np.array([0, 4, 6]), "positions": np.array([0, 1, 0, 0, 1, 1], np.int32),
             "values": np.array([1.0, 0.5, 2.0, -0.5, 1.0, 1.0], np.float32),
             "labels": np.array([1.0, 0.0], np.float32), "keys": 3, "bias_index": 2, "scale": 1.0, "seed": 2,
             "float32": True}
_HUGE = {"indptr": np.array([0, 2, 4]), "positions": np.array([0, 1, 1, 0]),
         "values": np.array([4.0, -4.0, 4.0, 4.0], np.float32), "labels": np.array([1.0, 0.0], np.float32),
         "keys": 3, "bias_index": 2, "scale": 1e4, "seed": 3, "float32": True}


def _untouched(case: dict) -> np.ndarray:
    """The key rows neither a nonzero nor the bias uses."""
    return np.setdiff1d(np.arange(case["keys"]), np.append(case["positions"], case["bias_index"]))


def _examples(**others: object) -> Callable[[Callable], Callable]:
    """The named corner cases (with ``others`` for the test's other arguments), on top of what hypothesis draws."""
    def decorate(test: Callable) -> Callable:
        for case in (_NO_ROWS, _EMPTY_ROWS, _ONE_KEY, _REPEATED, _HUGE):
            test = example(case=case, **others)(test)
        return test
    return decorate


# ---------------------------------------------------------------- the kernels


@SETTINGS
@given(case=csr_batches())
@_examples()
def test_logistic_kernel_matches_the_numpy_reference(case):
    weights, _, params = _parameters(case, 1, with_initial=False)
    weights = weights.reshape(-1)
    csr = case["indptr"], case["positions"], case["values"]
    margin, loss, grad, probability = reference_logistic(*csr, case["labels"], weights, case["bias_index"])
    magnitude, grad_magnitude, loss_magnitude = _magnitudes(*csr, None, params, case["bias_index"])

    got_grad, got_probability = np.zeros(case["keys"]), np.empty(case["labels"].size)
    got_loss = _kernels.logistic_loss_and_gradient(*csr, case["labels"], weights, bias_index=case["bias_index"],
                                                   grad_out=got_grad, probabilities_out=got_probability)
    got_margin = np.empty(case["labels"].size)
    _kernels.logistic_margins(*csr, weights, bias_index=case["bias_index"], margins_out=got_margin)
    assert_close(got_margin, margin, magnitude)
    assert_close(got_probability, probability, magnitude)
    assert_close(got_loss, loss, loss_magnitude)
    assert_close(got_grad, grad, grad_magnitude[:, 0])
    assert np.all(got_grad[_untouched(case)] == 0.0), "keys no row holds get exactly zero"


@SETTINGS
@given(case=csr_batches(), width=st.sampled_from([1, 2, 17]), with_initial=st.booleans(), with_merged=st.booleans())
@_examples(width=17, with_initial=True, with_merged=True)
def test_fm_kernel_matches_the_numpy_reference(case, width, with_initial, with_merged):
    stored, initial, params = _parameters(case, width, with_initial)
    csr = case["indptr"], case["positions"], case["values"]
    merged = reference_merged(*csr, case["keys"]) if with_merged else None
    margin, loss, grad, probability = reference_fm(*csr, merged, case["labels"], params, case["bias_index"])
    magnitude, grad_magnitude, loss_magnitude = _magnitudes(*csr, merged, params, case["bias_index"])

    got_grad, got_probability = np.zeros(stored.shape), np.empty(case["labels"].size)
    got_loss = _kernels.fm_loss_and_gradient(*csr, case["labels"], stored, initial=initial, merged=merged,
                                             bias_index=case["bias_index"], grad_out=got_grad,
                                             probabilities_out=got_probability)
    got_margin = np.empty(case["labels"].size)
    _kernels.fm_margins(*csr, stored, initial=initial, merged=merged, bias_index=case["bias_index"],
                        margins_out=got_margin)
    assert_close(got_margin, margin, magnitude)
    assert_close(got_probability, probability, magnitude)
    assert_close(got_loss, loss, loss_magnitude)
    assert_close(got_grad, grad, grad_magnitude)
    assert np.all(got_grad[_untouched(case)] == 0.0), "keys no row holds get exactly zero"
    if case["bias_index"] >= 0:
        assert np.all(got_grad[case["bias_index"], 1:] == 0.0), "only column 0 of the bias row is used"


@SETTINGS
@given(case=csr_batches(eighths=True), width=st.sampled_from([1, 2, 17]), with_initial=st.booleans())
@_examples(width=17, with_initial=True)
def test_fm_kernel_scores_a_repeated_key_as_the_merged_row(case, width, with_initial):
    """With ``merged``, a row's copies of a key score as one nonzero holding their summed value."""
    stored, initial, params = _parameters(case, width, with_initial)
    indptr, positions, values = case["indptr"], case["positions"], case["values"]
    merged = _kernels.merged_values(indptr, positions, values, case["keys"])
    row_ids = _row_ids(indptr)
    dense = np.zeros((indptr.size - 1, case["keys"]))
    np.add.at(dense, (row_ids, positions), values.astype(np.float64))
    rows, columns = (np.ascontiguousarray(a) for a in np.nonzero(dense))  # the merged batch (a zero sum drops out:
    merged_indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=indptr.size - 1))])  # it scores 0)
    got, want = np.empty(indptr.size - 1), np.empty(indptr.size - 1)
    _kernels.fm_margins(indptr, positions, values, stored, initial=initial, merged=merged,
                        bias_index=case["bias_index"], margins_out=got)
    _kernels.fm_margins(merged_indptr.astype(np.int64), columns, dense[rows, columns].astype(np.float32), stored,
                        initial=initial, merged=None, bias_index=case["bias_index"], margins_out=want)
    assert_close(got, want, _magnitudes(indptr, positions, values, merged, params, case["bias_index"])[0])


@SETTINGS
@given(case=csr_batches(), width=st.sampled_from([1, 2, 17]), with_initial=st.booleans())
@_examples(width=17, with_initial=True)
def test_pool_and_scatter_kernels_match_the_numpy_reference(case, width, with_initial):
    stored, initial, params = _parameters(case, width, with_initial)
    csr = case["indptr"], case["positions"], case["values"]
    rows, k = case["labels"].size, width - 1
    wide, pooled = reference_pool(*csr, params, case["bias_index"])
    wide_magnitude, pooled_magnitude = reference_pool(case["indptr"], case["positions"], np.abs(case["values"]),
                                                      np.abs(params), case["bias_index"])
    got_wide, got_pooled = np.empty(rows), np.empty((rows, k))
    _kernels.pool_rows(*csr, stored, initial=initial, bias_index=case["bias_index"], linear_out=got_wide,
                       pooled_out=got_pooled)
    assert_close(got_wide, wide, wide_magnitude)
    assert_close(got_pooled, pooled, pooled_magnitude)

    rng = np.random.default_rng(case["seed"] + 1)
    residual, pooled_grad = rng.uniform(-1, 1, rows), rng.normal(size=(rows, k))
    grad = reference_scatter(*csr, residual, pooled_grad, case["bias_index"], case["keys"])
    grad_magnitude = reference_scatter(case["indptr"], case["positions"], np.abs(case["values"]), np.abs(residual),
                                       np.abs(pooled_grad), case["bias_index"], case["keys"])
    got_grad = np.zeros((case["keys"], width))
    _kernels.scatter_rows(*csr, residual, pooled_grad, bias_index=case["bias_index"], grad_out=got_grad)
    assert_close(got_grad, grad, grad_magnitude)


@SETTINGS
@given(case=csr_batches())
@_examples()
def test_merged_values_equal_the_sorting_reference_exactly(case):
    csr = case["indptr"], case["positions"], case["values"]
    got, want = _kernels.merged_values(*csr, case["keys"]), reference_merged(*csr, case["keys"])
    assert (got is None) == (want is None)
    if want is not None:
        np.testing.assert_array_equal(got, want)


@SETTINGS
@given(keys=st.lists(st.integers(0, 2**64 - 1), max_size=20), columns=st.integers(0, 17),
       salt=st.integers(0, 2**64 - 1), scale=st.sampled_from([1.0, 0.01, 0.3]), strided=st.booleans())
@example(keys=[0, 2**64 - 1], columns=8, salt=0x2545F4914F6CDD1D, scale=0.01, strided=True)
def test_fill_hashed_uniform_is_the_numpy_formula_bit_for_bit(keys, columns, salt, scale, strided):
    """The embeddings' starting point (checkpoints depend on it) is the numpy formula, bit for bit, at any stride."""
    keys = np.array(keys, dtype=np.uint64)
    table = np.full((keys.size, columns + 1), np.nan)
    out = table[:, 1:] if strided else np.empty((keys.size, columns))
    _kernels.fill_hashed_uniform(keys, salt, scale, out)
    np.testing.assert_array_equal(out, scale * reference_hashed_uniform(keys, columns, salt))
    if strided:
        assert np.all(np.isnan(table[:, 0])), "the column before the view is left alone"
    assert np.all((-scale <= out) & (out < scale))


# ---------------------------------------------------------------- the models on top


def _model_batch(case: dict) -> Batch:
    vocabulary = np.array([0, 7, 2**40, 2**63, 2**64 - 2], dtype=np.uint64)
    return Batch(labels=case["labels"], indptr=case["indptr"], keys=vocabulary[case["positions"]],
                 values=case["values"])


@SETTINGS
@given(case=csr_batches(), extra=st.booleans())
@_examples(extra=True)
def test_logistic_regression_is_the_reference_on_its_keys(case, extra):
    model, batch = LogisticRegression(), _model_batch(case)
    keys = model.prepare(batch).keys
    keys = np.union1d(keys, np.array([3], np.uint64)) if extra else keys
    weights, _, params = _parameters({**case, "keys": keys.size}, 1, with_initial=False)
    csr = batch.indptr, np.searchsorted(keys, batch.keys), batch.values
    margin, loss, grad, probability = reference_logistic(*csr, batch.labels, weights, keys.size - 1)
    magnitude, grad_magnitude, loss_magnitude = _magnitudes(*csr, None, params, keys.size - 1)
    got_loss, got_grad, got_probability = model.loss_and_gradient(batch, keys, weights)
    assert got_grad.shape == (keys.size, 1) and got_grad.dtype == np.float64
    assert_close(model.margins(batch, keys, weights)[0], margin, magnitude)
    assert_close(got_loss, loss, loss_magnitude)
    assert_close(got_grad[:, 0], grad, grad_magnitude[:, 0])
    assert_close(got_probability, probability, magnitude)


@SETTINGS
@given(case=csr_batches(), embedding_dim=st.sampled_from([1, 16]), init_scale=st.sampled_from([0.0, 0.7]),
       prepared_by_lr=st.booleans())
@_examples(embedding_dim=16, init_scale=0.7, prepared_by_lr=False)
def test_factorization_machine_is_the_reference_on_its_parameters(case, embedding_dim, init_scale, prepared_by_lr):
    model, batch = FactorizationMachine(embedding_dim, init_scale), _model_batch(case)
    prepared = (LogisticRegression() if prepared_by_lr else model).prepare(batch)  # merged values: on the fly
    keys = prepared.keys
    stored, _, _ = _parameters({**case, "keys": keys.size}, model.width, with_initial=False)
    params = model.parameters(keys, stored)
    csr = batch.indptr, np.searchsorted(keys, batch.keys), batch.values
    merged = merged_values(prepared)
    margin, loss, grad, probability = reference_fm(*csr, merged, batch.labels, params, keys.size - 1)
    magnitude, grad_magnitude, loss_magnitude = _magnitudes(*csr, merged, params, keys.size - 1)
    got_loss, got_grad, got_probability = model.loss_and_gradient(prepared, keys, stored)
    assert_close(model.margins(prepared, keys, stored), margin, magnitude)
    assert_close(got_loss, loss, loss_magnitude)
    assert_close(got_grad, grad, grad_magnitude)
    assert_close(got_probability, probability, magnitude)


# ---------------------------------------------------------------- refused inputs


def _logistic_call(indptr=(0, 1, 2), positions=(0, 1), values=(1.0, 1.0), keys=2, bias_index=-1, grad=None):
    labels = np.zeros(len(indptr) - 1, np.float32)
    return _kernels.logistic_loss_and_gradient(
        np.array(indptr, np.int64), np.array(positions, np.int64), np.array(values, np.float32), labels,
        np.zeros(keys), bias_index=bias_index, grad_out=np.zeros(keys) if grad is None else grad,
        probabilities_out=np.empty(labels.size))


def test_kernels_refuse_positions_outside_the_key_set_and_bad_offsets():
    assert _logistic_call() == pytest.approx(2 * np.log(2))
    with pytest.raises(ValueError, match="outside the key set"):
        _logistic_call(positions=(0, 2))
    with pytest.raises(ValueError, match="outside the key set"):
        _logistic_call(positions=(-1, 0))
    with pytest.raises(ValueError, match="outside the key set"):
        _kernels.merged_values(np.array([0, 2]), np.zeros(2, np.int32), np.ones(2, np.float32), 0)
    with pytest.raises(ValueError, match="non-decreasing"):
        _logistic_call(indptr=(0, 2, 1, 2), positions=(0, 1))
    with pytest.raises(ValueError, match="spans 1 nonzeros"):
        _logistic_call(indptr=(0, 1, 1))
    with pytest.raises(ValueError, match="2 positions for 1 values"):
        _logistic_call(values=(1.0,))
    with pytest.raises(ValueError, match="bias_index 2"):
        _logistic_call(bias_index=2)
    with pytest.raises(ValueError, match="grad_out of shape 3x1, 2x1 expected"):
        _logistic_call(grad=np.zeros(3))
    stored = np.zeros((2, 3))
    with pytest.raises(ValueError, match="grad_out of shape 2x2, 2x3 expected"):
        _kernels.fm_loss_and_gradient(np.array([0, 1]), np.zeros(1, np.int32), np.ones(1, np.float32),
                                      np.zeros(1, np.float32), stored, initial=None, merged=None, bias_index=-1,
                                      grad_out=np.zeros((2, 2)), probabilities_out=np.empty(1))
    with pytest.raises(ValueError, match="initial of shape 2x2"):
        _kernels.fm_margins(np.array([0, 1]), np.zeros(1, np.int32), np.ones(1, np.float32), stored,
                            initial=np.zeros((2, 2)), merged=None, bias_index=-1, margins_out=np.empty(1))
    with pytest.raises(ValueError, match="merged of shape 2x1, 1x1 expected"):
        _kernels.fm_margins(np.array([0, 1]), np.zeros(1, np.int32), np.ones(1, np.float32), stored,
                            initial=None, merged=np.zeros(2), bias_index=-1, margins_out=np.empty(1))

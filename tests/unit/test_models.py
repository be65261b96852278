"""hybrid_ps.models: every registered model's gradient against finite differences, the factorization machine
against a dense reference, and a small in-process training run (LR vs FM on data with pairwise structure)."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ps.config import ModelConfig
from hybrid_ps.data.batch import Batch
from hybrid_ps.data.synthetic import SyntheticSpec, generate_all, true_logit
from hybrid_ps.errors import CheckpointError, ConfigError
from hybrid_ps.models import MODELS, build_model, model_from_checkpoint
from hybrid_ps.models.base import BIAS_KEY, Model, logistic_loss
from hybrid_ps.models.fm import FactorizationMachine, FactorizedBatch, merged_values
from hybrid_ps.models.logistic import LogisticRegression
from hybrid_ps.server.shard import Shard
from hybrid_ps.tables.optimizers import make_optimizer

KINDS = sorted(MODELS)
VOCABULARY = np.array([0, 1, 7, 1000, 2**32, 2**63, 2**64 - 2, 12345678901234], dtype=np.uint64)
EXTRA_KEYS = np.array([3, 99, 2**40], dtype=np.uint64)  # pulled (a group's union) but not in the batch


def _model(kind: str, embedding_dim: int = 3, init_scale: float = 0.3) -> Model:
    return build_model(ModelConfig(name=kind, embedding_dim=embedding_dim, init_scale=init_scale))


def _batch(seed: int, rows: int = 12) -> Batch:
    """Rows of 0..6 nonzeros: row 0 has none, row 1 holds one key three times, others repeat by chance."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 7, rows)
    lengths[0], lengths[1] = 0, 5
    keys = VOCABULARY[rng.integers(0, VOCABULARY.size, int(lengths.sum()))]
    keys[1:3] = keys[0]  # row 1 starts with one key three times
    return Batch(
        labels=rng.integers(0, 2, rows).astype(np.float32),
        indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        keys=keys,
        values=rng.normal(size=int(lengths.sum())).astype(np.float32),
    )


def _keys_with_extras(model: Model, batch: Batch) -> np.ndarray:
    keys = np.union1d(model.prepare(batch).keys, EXTRA_KEYS)
    assert keys[-1] == BIAS_KEY
    return keys


def _numeric_gradient(model: Model, batch: Batch, keys: np.ndarray, stored: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    numeric = np.empty_like(stored)
    for index in np.ndindex(*stored.shape):
        step = np.zeros_like(stored)
        step[index] = eps
        numeric[index] = (model.loss_and_gradient(batch, keys, stored + step)[0]
                          - model.loss_and_gradient(batch, keys, stored - step)[0]) / (2 * eps)
    return numeric


# ---------------------------------------------------------------- every model


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_matches_central_finite_differences(kind, seed):
    model, batch = _model(kind), _batch(seed)
    keys = _keys_with_extras(model, batch)
    stored = np.random.default_rng(seed).normal(size=(keys.size, model.width)) * 0.4  # float64 rows
    loss, grad, probability = model.loss_and_gradient(batch, keys, stored)
    assert grad.dtype == np.float64 and grad.shape == (keys.size, model.width)
    assert np.isfinite(loss) and probability.shape == (batch.num_rows,)
    np.testing.assert_allclose(grad, _numeric_gradient(model, batch, keys, stored), rtol=1e-6, atol=1e-6)
    assert np.all(grad[np.isin(keys, EXTRA_KEYS)] == 0.0), "keys beyond the batch get exactly zero"
    assert np.all(grad[-1, 1:] == 0.0), "only column 0 of the bias row is used"
    assert abs(grad[-1, 0]) > 1e-3  # the bias takes part
    features = ~np.isin(keys, EXTRA_KEYS) & ~np.isin(keys, model.model_keys())
    assert np.all(np.abs(grad[features, 0]) > 0), "every feature of the batch gets a weight gradient"


@pytest.mark.parametrize("kind", KINDS)
def test_repeated_keys_in_a_row_add_up(kind):
    """A key repeated in a row is one feature whose values add up (``Batch``), for every model."""
    model = _model(kind)
    repeated = Batch(labels=np.array([1.0, 0.0], np.float32), indptr=np.array([0, 4, 6]),
                     keys=np.array([5, 9, 5, 5, 9, 9], np.uint64),
                     values=np.array([1.0, 0.5, 2.0, -0.5, 1.0, 1.0], np.float32))
    merged = Batch(labels=np.array([1.0, 0.0], np.float32), indptr=np.array([0, 2, 3]),
                   keys=np.array([5, 9, 9], np.uint64), values=np.array([2.5, 0.5, 2.0], np.float32))
    keys = model.prepare(repeated).keys
    stored = np.random.default_rng(0).normal(size=(keys.size, model.width))
    a, b = model.loss_and_gradient(repeated, keys, stored), model.loss_and_gradient(merged, keys, stored)
    assert a[0] == pytest.approx(b[0], rel=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_without_features_and_the_empty_batch(kind):
    model = _model(kind)
    batch = Batch(labels=np.array([1.0, 0.0], np.float32), indptr=np.zeros(3, np.int64),
                  keys=np.zeros(0, np.uint64), values=np.zeros(0, np.float32))
    keys = model.prepare(batch).keys
    np.testing.assert_array_equal(keys, model.model_keys())
    if keys.size > 1:  # dense blocks (wide & deep): the MLP of an empty row still counts; finite and shaped
        loss, grad, probability = model.loss_and_gradient(batch, keys, np.zeros((keys.size, model.width)))
        assert np.isfinite(loss) and grad.shape == (keys.size, model.width) and probability.shape == (2,)
        return
    np.testing.assert_array_equal(keys, [BIAS_KEY])
    stored = np.full((1, model.width), 0.4)
    loss, grad, probability = model.loss_and_gradient(batch, keys, stored)
    p = 1 / (1 + np.exp(-0.4))
    assert loss == pytest.approx(-np.log(p) - np.log(1 - p), rel=1e-12)
    np.testing.assert_allclose(probability, [p, p], rtol=1e-12)
    np.testing.assert_allclose(grad, [[2 * p - 1] + [0.0] * (model.width - 1)], rtol=1e-12)
    loss, grad, probability = model.loss_and_gradient(Batch.empty(), keys, stored)
    assert loss == 0.0 and grad.tolist() == [[0.0] * model.width] and probability.size == 0


@pytest.mark.parametrize("kind", KINDS)
def test_prepared_plain_and_float32_rows_agree(kind):
    model, batch = _model(kind), _batch(5)
    keys = _keys_with_extras(model, batch)
    stored = np.random.default_rng(1).normal(size=(keys.size, model.width)).astype(np.float32)
    plain = model.loss_and_gradient(batch, keys, stored)
    prepared = model.loss_and_gradient(model.prepare(batch), keys, stored)
    assert prepared[0] == pytest.approx(plain[0], rel=1e-12)
    np.testing.assert_allclose(prepared[1], plain[1], rtol=1e-12, atol=1e-12)
    wide = model.loss_and_gradient(batch, keys, stored.astype(np.float64))  # LR multiplies in float32
    assert wide[0] == pytest.approx(plain[0], rel=1e-6)
    np.testing.assert_allclose(wide[1], plain[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_build_model_and_checkpoint_round_trip(kind):
    model = _model(kind, embedding_dim=5, init_scale=0.02)
    again = model_from_checkpoint(model.kind, {**model.attrs(), "future_setting": 1}, "ckpt")
    assert type(again) is type(model) and again.kind == kind and again.width == model.width
    assert again.attrs() == model.attrs()


def test_unknown_kind_from_a_checkpoint():
    with pytest.raises(CheckpointError, match="ckpt-7: model kind 'deep_cross' is not one of"):
        model_from_checkpoint("deep_cross", {}, "ckpt-7")


# ---------------------------------------------------------------- factorization machine


def _dense_fm_margins(model: FactorizationMachine, batch: Batch, keys: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Rendle's formula row by row, over distinct features (repeated keys merged), pairs i < j spelt out."""
    params = model.parameters(keys, stored)
    margins = np.empty(batch.num_rows)
    for row in range(batch.num_rows):
        x: dict[int, float] = {}
        for j in range(batch.indptr[row], batch.indptr[row + 1]):
            column = int(np.searchsorted(keys, batch.keys[j]))
            x[column] = x.get(column, 0.0) + float(batch.values[j])
        features = sorted(x)
        margin = params[-1, 0] + sum(params[i, 0] * x[i] for i in features)
        for a, i in enumerate(features):
            for j in features[a + 1:]:
                margin += float(params[i, 1:] @ params[j, 1:]) * x[i] * x[j]
        margins[row] = margin
    return margins


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fm_equals_rendles_formula_on_dense_rows(seed):
    model, batch = FactorizationMachine(embedding_dim=4, init_scale=0.5), _batch(seed, rows=40)
    keys = _keys_with_extras(model, batch)
    stored = np.random.default_rng(seed).normal(size=(keys.size, model.width)) * 0.5
    expected = _dense_fm_margins(model, batch, keys, stored)
    np.testing.assert_allclose(model.margins(batch, keys, stored), expected, rtol=1e-10, atol=1e-12)
    loss, _, probability = model.loss_and_gradient(batch, keys, stored)
    expected_loss, _, expected_p = logistic_loss(expected, batch.labels)
    assert loss == pytest.approx(expected_loss, rel=1e-10)
    np.testing.assert_allclose(probability, expected_p, rtol=1e-10)


def test_fm_prepare_records_merged_values_only_for_repeats():
    model = FactorizationMachine()
    batch = _batch(2)
    prepared = model.prepare(batch)
    assert isinstance(prepared, FactorizedBatch) and prepared.merged is not None
    row1 = slice(batch.indptr[1], batch.indptr[2])
    first = batch.keys[row1][0]
    same = batch.keys[row1] == first
    assert same.sum() >= 3
    np.testing.assert_allclose(prepared.merged[row1][same], batch.values[row1][same].astype(np.float64).sum())
    single = Batch(labels=np.zeros(2, np.float32), indptr=np.array([0, 2, 4]),
                   keys=np.array([5, 9, 5, 9], np.uint64), values=np.ones(4, np.float32))
    assert model.prepare(single).merged is None, "the same key in two rows is no repeat"
    plain = LogisticRegression().prepare(batch)  # prepared by another model: worked out on the fly
    np.testing.assert_array_equal(merged_values(plain), prepared.merged)


def test_fm_with_zero_embeddings_is_logistic_regression():
    batch = _batch(4, rows=30)
    fm, lr = FactorizationMachine(embedding_dim=4, init_scale=0.0), LogisticRegression()
    keys = _keys_with_extras(fm, batch)
    weights = np.random.default_rng(4).normal(size=keys.size)
    rows = np.zeros((keys.size, fm.width))
    rows[:, 0] = weights
    fm_loss, fm_grad, fm_p = fm.loss_and_gradient(batch, keys, rows)
    lr_loss, lr_grad, lr_p = lr.loss_and_gradient(batch, keys, weights)
    np.testing.assert_allclose(fm.margins(batch, keys, rows), lr.margins(batch, keys, weights)[0], rtol=1e-12)
    assert fm_loss == pytest.approx(lr_loss, rel=1e-12)
    np.testing.assert_allclose(fm_p, lr_p, rtol=1e-12)
    np.testing.assert_allclose(fm_grad[:, :1], lr_grad, rtol=1e-12, atol=1e-15)
    assert np.all(fm_grad[:, 1:] == 0.0), "a zero start has a zero embedding gradient"
    # The same with a nonzero start cancelled by the stored rows: the PS holds the difference.
    started = FactorizationMachine(embedding_dim=4, init_scale=0.3)
    offset = rows - started.initial_values(keys)
    assert started.loss_and_gradient(batch, keys, offset)[0] == pytest.approx(lr_loss, rel=1e-12)


def test_fm_initial_values_are_a_fixed_function_of_key_and_column():
    model = FactorizationMachine(embedding_dim=6, init_scale=0.05)
    keys = np.array([0, 1, 2, 7, 2**40, 12345678901234, 2**64 - 2, BIAS_KEY], dtype=np.uint64)
    start = model.initial_values(keys)
    assert start.shape == (keys.size, 7) and start.dtype == np.float64
    assert np.all(start[:, 0] == 0.0), "weights start at zero"
    assert np.all(start[-1] == 0.0), "the bias row starts at zero"
    embeddings = start[:-1, 1:]
    assert np.all(np.abs(embeddings) <= 0.05) and np.unique(embeddings).size == embeddings.size
    np.testing.assert_array_equal(FactorizationMachine(6, 0.05).initial_values(keys), start)  # any replica
    order = np.array([3, 0, 7, 5, 1, 6, 2, 4])
    np.testing.assert_array_equal(model.initial_values(keys[order]), start[order])  # per key, not per position
    np.testing.assert_allclose(FactorizationMachine(6, 0.1).initial_values(keys), 2 * start, rtol=1e-15)
    many = FactorizationMachine(8, 1.0).initial_values(np.arange(20_000, dtype=np.uint64))[:, 1:]
    assert abs(many.mean()) < 0.01 and abs(many.std() - 1 / np.sqrt(3)) < 0.01  # uniform in [-1, 1)
    assert FactorizationMachine(6, 0.0).initial_values(keys) is None
    np.testing.assert_array_equal(model.parameters(keys, np.zeros((keys.size, 7), np.float32)), start)


def test_fm_initial_values_differ_for_keys_far_apart():
    keys = np.array([0, 2**63], dtype=np.uint64)
    start = FactorizationMachine(embedding_dim=6, init_scale=1.0).initial_values(keys)
    assert not np.array_equal(start[0], start[1])


def test_fm_attrs_and_validation():
    model = FactorizationMachine.from_attrs({"embedding_dim": np.int64(16), "init_scale": np.float64(0.2), "x": 1})
    assert model.width == 17 and model.attrs() == {"embedding_dim": 16, "init_scale": 0.2}
    assert FactorizationMachine.from_attrs(model.attrs()).attrs() == model.attrs()
    assert FactorizationMachine.from_attrs({}).attrs() == {"embedding_dim": 8, "init_scale": 0.01}
    assert MODELS["factorization_machine"] is FactorizationMachine
    for bad in ({"embedding_dim": 0}, {"embedding_dim": 2.5}, {"embedding_dim": True}):
        with pytest.raises(ConfigError, match="model.embedding_dim"):
            FactorizationMachine.from_attrs(bad)
    for bad in ({"init_scale": -0.1}, {"init_scale": float("nan")}, {"init_scale": "0.1"}):
        with pytest.raises(ConfigError, match="model.init_scale"):
            FactorizationMachine.from_attrs(bad)


def test_fm_gradient_on_a_larger_batch_matches_a_dense_reference():
    """Vectorised gradient vs d loss / d params of the dense formula (autograd by hand) on many rows."""
    spec = SyntheticSpec(rows=300, features=40, nnz_per_row=5, seed=9, interactions=0.5)
    batch = generate_all(spec)  # frequent repeats within rows
    model = FactorizationMachine(embedding_dim=3, init_scale=0.1)
    keys = model.prepare(batch).keys
    stored = np.random.default_rng(9).normal(size=(keys.size, model.width)) * 0.3
    _, grad, probability = model.loss_and_gradient(batch, keys, stored)
    params = model.parameters(keys, stored)
    dense = np.zeros((batch.num_rows, keys.size))
    np.add.at(dense, (batch.row_ids, np.searchsorted(keys, batch.keys)), batch.values.astype(np.float64))
    residual = probability - batch.labels
    expected = np.zeros_like(grad)
    expected[:, 0] = dense.T @ residual
    expected[-1, 0] = residual.sum()
    sums = dense @ params[:, 1:]  # [rows, k]
    expected[:, 1:] = dense.T @ (residual[:, None] * sums) - params[:, 1:] * ((dense**2).T @ residual)[:, None]
    expected[-1, 1:] = 0.0
    np.testing.assert_allclose(grad, expected, rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------- learning


def _train_and_test_logloss(model: Model, train: Batch, test: Batch, epochs: int = 2, batch_rows: int = 256) -> float:
    """AdaGrad on one in-process shard, pulled and pushed per batch as the runtime does; held-out logloss."""
    shard = Shard(model.width, make_optimizer("adagrad", 0.1))
    prepared = [model.prepare(train.rows(s, min(s + batch_rows, train.num_rows)))
                for s in range(0, train.num_rows, batch_rows)]
    for _ in range(epochs):
        for batch in prepared:
            _, grad, _ = model.loss_and_gradient(batch, batch.keys, shard.pull(batch.keys))
            shard.push(batch.keys, grad / batch.batch.num_rows)
    held_out = model.prepare(test)
    return model.loss_and_gradient(held_out, held_out.keys, shard.pull(held_out.keys))[0] / test.num_rows


@pytest.fixture(scope="module")
def learned() -> dict[float, dict[str, float]]:
    """Held-out logloss of LR and FM (default shape) on 100k synthetic rows, with and without interactions."""
    result = {}
    for interactions in (0.0, 0.5):
        spec = SyntheticSpec(rows=100_000, features=2000, nnz_per_row=10, seed=1, interactions=interactions)
        data = generate_all(spec)
        train, test = data.rows(0, 80_000), data.rows(80_000, 100_000)
        result[interactions] = {
            "bayes": logistic_loss(true_logit(test, spec), test.labels)[0] / test.num_rows,
            "constant": float(-np.mean(test.labels * np.log(train.labels.mean())
                                       + (1 - test.labels) * np.log(1 - train.labels.mean()))),
            **{kind: _train_and_test_logloss(build_model(ModelConfig(name=kind)), train, test) for kind in KINDS},
        }
    return result


def test_fm_learns_pairwise_structure_that_lr_cannot(learned):
    got = learned[0.5]
    lr, fm = got["logistic_regression"], got["factorization_machine"]
    assert fm < lr - 0.05, got  # measured: LR 0.494, FM 0.418, Bayes 0.373
    assert got["bayes"] < fm < got["constant"] - 0.2, got


def test_fm_is_not_worse_than_lr_on_linear_data(learned):
    got = learned[0.0]
    lr, fm = got["logistic_regression"], got["factorization_machine"]
    assert fm < lr + 0.02, got  # measured: LR 0.453, FM 0.463, Bayes 0.440
    assert got["bayes"] < lr < got["constant"] - 0.1, got


def test_wide_deep_keeps_its_mlp_in_fixed_size_blocks_spread_over_every_shard():
    from hybrid_ps.models.wide_deep import WideDeep
    from hybrid_ps.placement.ring import HashRing

    model = WideDeep(embedding_dim=8, hidden=(32, 16))
    blocks = model.dense_keys()
    assert blocks.size == -(-(8 * 32 + 32 + 32 * 16 + 16 + 16 + 1) // model.width)
    assert np.all(blocks[1:] > blocks[:-1]) and blocks[-1] < BIAS_KEY
    assert np.array_equal(model.model_keys(), np.append(blocks, BIAS_KEY))
    assert set(HashRing(range(4)).shard_of(blocks).tolist()) == {0, 1, 2, 3}

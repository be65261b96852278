"""hybrid_ps.data.synthetic: the built-in Criteo-like dataset, identical for any rank count."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hybrid_ps.data.batch import Batch
from hybrid_ps.data.synthetic import (
    BLOCK_ROWS,
    LATENT_RANK,
    SyntheticShard,
    SyntheticSpec,
    _PowerLawSampler,
    _ZipfSampler,
    feature_key,
    generate_all,
    mix64,
    true_latent,
    true_logit,
    true_weight,
)
from hybrid_ps.errors import ConfigError

SMALL = SyntheticSpec(rows=2 * BLOCK_ROWS + 1808, features=5000, nnz_per_row=6, seed=3)


def _assert_batches_equal(got: Batch, want: Batch) -> None:
    for field in ("labels", "indptr", "keys", "values"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


@pytest.fixture(scope="module")
def small_all() -> Batch:
    return generate_all(SMALL)


def test_generate_all_shape_and_types(small_all):
    data = small_all
    assert data.num_rows == SMALL.rows
    assert data.labels.dtype == np.float32 and set(np.unique(data.labels)) <= {0.0, 1.0}
    assert data.indptr.dtype == np.int64
    np.testing.assert_array_equal(data.indptr, np.arange(SMALL.rows + 1) * SMALL.nnz_per_row)
    assert data.keys.dtype == np.uint64 and data.keys.size == SMALL.rows * SMALL.nnz_per_row
    assert data.values.dtype == np.float32 and np.all(data.values == 1.0)
    assert not np.any(data.keys == np.uint64(2**64 - 1)), "2**64 - 1 is the bias key"
    assert np.unique(data.keys).size <= SMALL.features


@pytest.mark.parametrize("num_ranks", [1, 2, 3, 7])
@pytest.mark.parametrize("batch_size", [1000, 333, 4096])
def test_shards_in_rank_order_are_the_whole_dataset(small_all, num_ranks, batch_size):
    shards = [SyntheticShard(SMALL, rank, num_ranks) for rank in range(num_ranks)]
    parts = [b for shard in shards for b in shard.batches(batch_size)]
    _assert_batches_equal(Batch.concat(parts), small_all)
    sizes = [shard.num_rows for shard in shards]
    assert sum(sizes) == SMALL.rows and max(sizes) - min(sizes) <= 1


def test_batches_have_exactly_batch_size_rows_except_the_last():
    shard = SyntheticShard(SMALL, 1, 3)
    for batch_size in (1, 100, 512, shard.num_rows, shard.num_rows + 5):
        sizes = [b.num_rows for b in shard.batches(batch_size)]
        assert sum(sizes) == shard.num_rows
        assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size


def test_more_ranks_than_rows():
    spec = SyntheticSpec(rows=5, features=10, nnz_per_row=2)
    shards = [SyntheticShard(spec, rank, 8) for rank in range(8)]
    assert [s.num_rows for s in shards] == [0, 1, 0, 1, 1, 0, 1, 1]
    assert list(shards[0].batches(4)) == []
    _assert_batches_equal(Batch.concat([b for s in shards for b in s.batches(4)]), generate_all(spec))


def test_same_seed_same_data_other_seed_other_data(small_all):
    _assert_batches_equal(generate_all(SMALL), small_all)
    other = generate_all(dataclasses.replace(SMALL, seed=4))
    assert not np.array_equal(other.keys, small_all.keys)
    assert np.intersect1d(other.keys, small_all.keys).size < 10, "keys are hashed with the seed"


def test_key_frequency_follows_the_power_law():
    spec = SyntheticSpec(rows=20_000, features=100_000, nnz_per_row=20, zipf_exponent=1.1)
    data = generate_all(spec)
    weights = np.arange(1, spec.features + 1, dtype=np.float64) ** -spec.zipf_exponent
    expected = weights / weights.sum() * data.keys.size
    keys, counts = np.unique(data.keys, return_counts=True)
    count_of = dict(zip(keys.tolist(), counts.tolist()))
    for i in (0, 1, 2, 10):
        got = count_of[int(feature_key(np.array([i]), spec.seed)[0])]
        assert abs(got - expected[i]) < 5 * np.sqrt(expected[i]) + 0.02 * expected[i], i
    ranked = np.sort(counts)[::-1]
    assert ranked[0] > 100 * ranked[999], "the top key is far more frequent than the 1000th"
    assert ranked[:100].sum() > 0.4 * data.keys.size, "a few keys carry much of the traffic"


def test_labels_follow_the_true_model(small_all):
    logit = true_logit(small_all, SMALL)
    assert roc_auc_score(small_all.labels, logit) > 0.7
    probability = 1.0 / (1.0 + np.exp(-logit))
    assert abs(small_all.labels.mean() - probability.mean()) < 0.02
    assert 0.2 < small_all.labels.mean() < 0.8
    np.testing.assert_allclose(SyntheticShard(SMALL).true_logit(small_all), logit)


def test_true_weights_are_uniform_and_keyed_by_feature():
    spec = SyntheticSpec(weight_scale=2.0)
    weights = true_weight(np.arange(20_000), spec)
    assert weights.min() >= -2.0 and weights.max() <= 2.0
    assert abs(weights.mean()) < 0.05 and abs(weights.std() - 2.0 / np.sqrt(3.0)) < 0.05
    one_row = Batch(
        labels=np.zeros(1, np.float32),
        indptr=np.array([0, 3], np.int64),
        keys=feature_key(np.array([5, 7, 5]), spec.seed),
        values=np.ones(3, np.float32),
    )
    np.testing.assert_allclose(true_logit(one_row, spec), [spec.bias + true_weight(np.array([5, 7, 5]), spec).sum()])


def test_feature_keys_are_distinct_hashes():
    index = np.arange(200_000)
    keys = feature_key(index, seed=0)
    assert keys.dtype == np.uint64 and np.unique(keys).size == index.size
    assert not np.array_equal(np.sort(keys), keys), "hashed, not in index order"
    assert not np.array_equal(feature_key(index, seed=1), keys)
    assert mix64(np.arange(1000, dtype=np.uint64)).dtype == np.uint64


@pytest.mark.parametrize(
    ("features", "exponent"),
    [(1, 1.1), (2, 0.5), (7, 3.0), (5000, 1.1), (100_000, 1.1), (3000, 0.01), (3_000_000, 1.05)],
)
def test_zipf_sampler_is_exactly_the_inverse_cdf(features, exponent):
    """The guide table only speeds up the search (also with fewer buckets than features)."""
    sampler = _ZipfSampler(features, exponent)
    uniform = np.random.default_rng(0).random(100_000)
    uniform[:4] = [0.0, 0.5, 1.0 - 2**-53, sampler._cdf[0] if features > 1 else 0.25]  # hits a step exactly
    want = np.minimum(np.searchsorted(sampler._cdf, uniform, side="right"), features - 1)
    np.testing.assert_array_equal(sampler(uniform), want)


def test_the_default_data_is_the_same_bit_for_bit_as_before_the_analytic_sampler():
    """The exact CDF is kept up to EXACT_FEATURES: the default data (and every figure measured on it) is unchanged.
    These digests were taken from the generator before the analytic tail existed."""
    digests = []
    for spec in (SyntheticSpec(), SyntheticSpec(rows=9000, features=3_000_000, zipf_exponent=0.5, interactions=0.5)):
        data = generate_all(spec)
        digests.append(hashlib.sha256(data.keys.tobytes() + data.labels.tobytes()).hexdigest()[:16])
    assert digests == ["30ccb24bba850e4b", "c8c1e0b22992368f"]


@pytest.mark.parametrize("exponent", [0.3, 0.5, 1.0, 1.1, 2.0])
def test_the_analytic_tail_draws_the_same_power_law_as_the_exact_cdf(exponent):
    """With only 1,000 features kept exactly, a million-feature power law is drawn as by its whole CDF: the same
    share in the head, the same counts in every log-spaced bin of the tail (within sampling noise)."""
    uniform = np.random.default_rng(5).random(2_000_000)
    exact = _ZipfSampler(1_000_000, exponent)(uniform)
    analytic = _PowerLawSampler(1_000_000, exponent, head=1000)(uniform)
    assert (analytic < 1000).mean() == pytest.approx((exact < 1000).mean(), abs=1e-4)
    bins = np.unique(np.logspace(3, 6, 30).astype(np.int64))
    counts, _ = np.histogram(exact, bins)
    approx, _ = np.histogram(analytic, bins)
    assert (np.abs(approx - counts) <= 3 * np.sqrt(counts) + 2).all()
    assert analytic.min() >= 0 and analytic.max() <= 999_999


@pytest.mark.parametrize("features", [10**10, 2**63 + 5, 2**64 - 2])
def test_any_key_space_up_to_2_64_minus_2_in_memory_that_does_not_grow_with_it(features):
    sampler = _PowerLawSampler(features, 1.1)
    held = sum(v.nbytes for v in vars(sampler._head).values() if isinstance(v, np.ndarray))
    assert held < 20 << 20, "only the head's CDF and guide table (16 MB)"
    index = sampler(np.random.default_rng(0).random(200_000))
    assert int(index.max()) < features and (index.astype(np.float64) > features / 1000).any(), "the tail is reached"
    spec = SyntheticSpec(rows=3 * BLOCK_ROWS + 77, features=features, nnz_per_row=5, zipf_exponent=0.5, seed=9)
    whole = generate_all(spec)
    assert whole.keys.max() < np.uint64(2**64 - 1), "never the bias key"
    parts = [Batch.concat(list(SyntheticShard(spec, rank, 3).batches(1000))) for rank in range(3)]
    _assert_batches_equal(Batch.concat(parts), whole)  # the same data for any rank count


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rows", 0),
        ("rows", -5),
        ("rows", 2.5),
        ("features", 0),
        ("features", 2**64 - 1),
        ("nnz_per_row", 0),
        ("zipf_exponent", 0.0),
        ("zipf_exponent", float("nan")),
        ("weight_scale", -1.0),
        ("bias", float("inf")),
        ("seed", -1),
        ("interactions", -0.5),
        ("interactions", float("nan")),
    ],
)
def test_spec_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^data\.{field} must be .*, got {value!r}$"):
        SyntheticSpec(**{field: value})


def test_bad_rank_and_batch_size():
    with pytest.raises(ConfigError, match="rank 2"):
        SyntheticShard(SMALL, 2, 2)
    with pytest.raises(ConfigError, match="batch_size"):
        next(SyntheticShard(SMALL).batches(0))


def _digest(batch: Batch) -> str:
    h = hashlib.sha256()
    for field in ("labels", "indptr", "keys", "values"):
        h.update(np.ascontiguousarray(getattr(batch, field)).tobytes())
    return h.hexdigest()


def test_no_interactions_keeps_the_rows_bit_for_bit(small_all):
    """The digest of SMALL's rows before ``interactions`` existed (generated with the earlier code)."""
    assert SMALL.interactions == 0.0
    assert _digest(small_all) == "754617be9450a303078078397540ec60a23a8d2653e32a83cb674b77474a6128"
    _assert_batches_equal(generate_all(dataclasses.replace(SMALL, interactions=0)), small_all)


def _brute_force_pairwise(batch: Batch, spec: SyntheticSpec) -> np.ndarray:
    """``sum_{i<j} <u_i, u_j> x_i x_j`` over each row's distinct features, spelt out."""
    index = {int(k): i for i, k in enumerate(feature_key(np.arange(spec.features), spec.seed))}
    out = np.zeros(batch.num_rows)
    for row in range(batch.num_rows):
        x: dict[int, float] = {}
        for j in range(batch.indptr[row], batch.indptr[row + 1]):
            x[int(batch.keys[j])] = x.get(int(batch.keys[j]), 0.0) + float(batch.values[j])
        keys = sorted(x)
        u = true_latent(np.array([index[k] for k in keys]), spec)
        for a in range(len(keys)):
            for b in range(a + 1, len(keys)):
                out[row] += float(u[a] @ u[b]) * x[keys[a]] * x[keys[b]]
    return out


def test_interactions_change_only_the_labels(small_all):
    spec = dataclasses.replace(SMALL, interactions=0.5)
    data = generate_all(spec)
    for field in ("indptr", "keys", "values"):
        np.testing.assert_array_equal(getattr(data, field), getattr(small_all, field), err_msg=field)
    assert 0.05 < np.mean(data.labels != small_all.labels) < 0.5
    shards = [SyntheticShard(spec, rank, 3) for rank in range(3)]
    _assert_batches_equal(Batch.concat([b for shard in shards for b in shard.batches(1000)]), data)


def test_interactions_are_a_low_rank_pairwise_term_in_the_true_logit(small_all):
    spec = dataclasses.replace(SMALL, interactions=0.5, features=50)  # few features: many repeats in a row
    data = generate_all(spec)
    rows = data.rows(0, 300)
    repeats = sum(np.unique(rows.keys[rows.indptr[i]:rows.indptr[i + 1]]).size < spec.nnz_per_row
                  for i in range(rows.num_rows))
    assert repeats > 50
    linear = true_logit(rows, dataclasses.replace(spec, interactions=0.0))
    np.testing.assert_allclose(true_logit(rows, spec), linear + 0.5 * _brute_force_pairwise(rows, spec),
                               rtol=1e-10, atol=1e-10)
    # Non-unit values and rows without features in a hand-made batch.
    hand = Batch(labels=np.zeros(3, np.float32), indptr=np.array([0, 0, 3, 5], np.int64),
                 keys=feature_key(np.array([1, 2, 1, 4, 4]), spec.seed),
                 values=np.array([0.5, 2.0, 1.5, 1.0, -1.0], np.float32))
    np.testing.assert_allclose(true_logit(hand, spec) - true_logit(hand, dataclasses.replace(spec, interactions=0)),
                               0.5 * _brute_force_pairwise(hand, spec), rtol=1e-12, atol=1e-12)
    latent = true_latent(np.arange(20_000), SyntheticSpec())
    assert latent.shape == (20_000, LATENT_RANK)
    assert abs(np.mean(np.sum(latent**2, axis=1)) - 1.0) < 0.02, "E|u|^2 = 1"
    full = generate_all(dataclasses.replace(SMALL, interactions=0.5))
    logit = true_logit(full, dataclasses.replace(SMALL, interactions=0.5))
    linear = true_logit(full, SMALL)
    assert roc_auc_score(full.labels, logit) > roc_auc_score(full.labels, linear) + 0.05
    assert abs(full.labels.mean() - np.mean(1 / (1 + np.exp(-logit)))) < 0.02


def test_interactions_are_plumbed_from_the_config_and_the_checkpoint(monkeypatch):
    from hybrid_ps.config import DataConfig
    from hybrid_ps.models import evaluation
    from hybrid_ps.data import open_data_shard

    config = DataConfig(rows=500, features=100, nnz_per_row=4, seed=2, interactions=0.25)
    shard = open_data_shard(config, 0, 1)
    assert shard.spec == SyntheticSpec(rows=500, features=100, nnz_per_row=4, seed=2, interactions=0.25)
    recorded = {"source": "synthetic", "rows": 500, "features": 100, "nnz_per_row": 4, "zipf_exponent": 1.1, "seed": 2}
    for extra, interactions in (({}, 0.0), ({"interactions": 0.25}, 0.25)):  # older checkpoints record none
        monkeypatch.setattr(evaluation, "checkpoint_info", lambda path, extra=extra: {"data": {**recorded, **extra}})
        got = Batch.concat(list(evaluation.data_batches("synthetic", "ckpt", 128)))
        _assert_batches_equal(got, generate_all(dataclasses.replace(shard.spec, interactions=interactions)))


def test_drift_moves_the_head_on_as_the_rows_go_and_the_data_is_the_same_for_any_rank_count():
    """Row r draws index i + floor(r * drift): early and late rows share few keys, the distinct keys grow with the
    rows (an unbounded stream), and ranks still split one dataset."""
    spec = SyntheticSpec(rows=40_000, features=5_000, nnz_per_row=10, zipf_exponent=1.1, seed=3, drift=0.5)
    data = generate_all(spec)
    early, late = data.keys[: 40_000], data.keys[-40_000:]  # the first and the last 4,000 rows
    assert np.intersect1d(early, late).size < 0.05 * np.unique(early).size
    fixed = generate_all(dataclasses.replace(spec, drift=0.0))
    assert np.unique(data.keys).size > 2 * np.unique(fixed.keys).size
    for rows, first_index in ((early, 0), (late, 18_000)):  # the head then: indices from floor(row * 0.5) on
        values, counts = np.unique(rows, return_counts=True)
        assert np.isin(values[np.argsort(counts)[-20:]], feature_key(np.arange(first_index, first_index + 2_000), 3)).all()
    parts = [SyntheticShard(spec, rank, 3) for rank in range(3)]
    keys = np.concatenate([b.keys for part in parts for b in part.batches(999)])
    np.testing.assert_array_equal(keys, data.keys)
    np.testing.assert_array_equal(fixed.keys, generate_all(dataclasses.replace(spec, drift=0.0)).keys)

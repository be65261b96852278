"""hybrid_ps.data.synthetic: the built-in Criteo-like dataset, identical for any rank count."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hybrid_ps.data.batch import Batch
from hybrid_ps.data.synthetic import (
    BLOCK_ROWS,
    SyntheticShard,
    SyntheticSpec,
    _ZipfSampler,
    feature_key,
    generate_all,
    mix64,
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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rows", 0),
        ("rows", -5),
        ("rows", 2.5),
        ("features", 0),
        ("nnz_per_row", 0),
        ("zipf_exponent", 0.0),
        ("zipf_exponent", float("nan")),
        ("weight_scale", -1.0),
        ("bias", float("inf")),
        ("seed", -1),
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

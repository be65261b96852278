"""hybrid_ps.data.scaling: FeatureScales.of over batches, merged across tables, apply to a batch, and scaled()
batch sources (preloaded: scaled once; streamed: on every pass)."""

from __future__ import annotations

import numpy as np

from hybrid_ps.data.batch import Batch
from hybrid_ps.data.scaling import FeatureScales, scaled


def _batch(rows: list[list[tuple[int, float]]]) -> Batch:
    """A batch of rows given as ``(key, value)`` pairs (labels alternate 0, 1)."""
    indptr = np.cumsum([0] + [len(row) for row in rows]).astype(np.int64)
    pairs = [pair for row in rows for pair in row]
    return Batch(labels=(np.arange(len(rows)) % 2).astype(np.float32), indptr=indptr,
                 keys=np.array([k for k, _ in pairs], dtype=np.uint64),
                 values=np.array([v for _, v in pairs], dtype=np.float32))


def _table(scales: FeatureScales) -> dict[int, float]:
    return dict(zip(scales.keys.tolist(), scales.scales.tolist(), strict=True))


def test_only_keys_with_a_value_beyond_one_in_magnitude_enter_the_table():
    batch = _batch([[(1, 0.5), (2, 1.0), (3, -1.0), (4, 1.5)], [(5, 0.0), (6, -0.99), (7, 3.0)]])
    scales = FeatureScales.of([batch])
    assert _table(scales) == {4: 1.5, 7: 3.0}
    assert scales.keys.dtype == np.uint64 and scales.scales.dtype == np.float32


def test_each_key_gets_its_largest_magnitude_over_every_batch_and_negative_values_count_by_magnitude():
    first = _batch([[(10, 2.0), (20, -50.0)], [(10, 7.0), (30, 0.25)]])
    second = _batch([[(10, -9.0), (20, 40.0), (30, 4.0)]])
    scales = FeatureScales.of([first, Batch.empty(), second])
    assert _table(scales) == {10: 9.0, 20: 50.0, 30: 4.0}
    assert scales.keys.tolist() == sorted(scales.keys.tolist())
    assert (scales.scales > 0).all()


def test_batches_with_no_large_value_give_an_empty_table():
    assert len(FeatureScales.of([_batch([[(1, 1.0), (2, -0.5)]]), Batch.empty()])) == 0
    assert len(FeatureScales.of([])) == 0


def test_the_per_rank_limit_keeps_the_keys_of_the_largest_magnitudes():
    batch = _batch([[(1, 5.0), (2, -100.0), (3, 2.0)], [(4, 50.0), (5, 3.0), (1, -6.0)]])
    scales = FeatureScales.of([batch], limit=3)
    assert _table(scales) == {1: 6.0, 2: 100.0, 4: 50.0}  # still sorted by key
    assert scales.keys.tolist() == [1, 2, 4]


def test_merged_takes_the_largest_scale_of_each_key_across_tables():
    a = FeatureScales(np.array([1, 3, 5], np.uint64), np.array([2.0, 30.0, 4.0], np.float32))
    b = FeatureScales(np.array([2, 3, 5], np.uint64), np.array([8.0, 10.0, 40.0], np.float32))
    merged = FeatureScales.merged([a, FeatureScales.empty(), b])
    assert _table(merged) == {1: 2.0, 2: 8.0, 3: 30.0, 5: 40.0}
    assert merged.keys.tolist() == [1, 2, 3, 5]


def test_merged_keeps_at_most_the_job_limit_of_the_largest_scales():
    a = FeatureScales(np.array([1, 2], np.uint64), np.array([2.0, 90.0], np.float32))
    b = FeatureScales(np.array([3, 4], np.uint64), np.array([70.0, 3.0], np.float32))
    assert _table(FeatureScales.merged([a, b], limit=2)) == {2: 90.0, 3: 70.0}


def test_merged_of_nothing_or_empty_tables_is_empty():
    assert len(FeatureScales.merged([])) == 0
    assert len(FeatureScales.merged([FeatureScales.empty(), FeatureScales.empty()])) == 0


def test_apply_divides_only_the_values_of_the_tables_keys():
    scales = FeatureScales(np.array([2, 7], np.uint64), np.array([4.0, 10.0], np.float32))
    batch = _batch([[(1, 3.0), (2, 8.0)], [(7, -5.0), (9, 20.0), (2, -2.0)]])
    result = scales.apply(batch)
    assert result is not batch
    np.testing.assert_array_equal(result.values, np.array([3.0, 2.0, -0.5, 20.0, -0.5], np.float32))
    assert result.values.dtype == np.float32
    assert result.labels is batch.labels and result.indptr is batch.indptr and result.keys is batch.keys


def test_apply_never_modifies_the_input_arrays():
    scales = FeatureScales(np.array([2], np.uint64), np.array([4.0], np.float32))
    batch = _batch([[(1, 3.0), (2, 8.0)]])
    before = [array.copy() for array in (batch.labels, batch.indptr, batch.keys, batch.values)]
    scales.apply(batch)
    for array, copy in zip((batch.labels, batch.indptr, batch.keys, batch.values), before, strict=True):
        np.testing.assert_array_equal(array, copy)


def test_apply_returns_the_same_batch_when_no_key_matches():
    scales = FeatureScales(np.array([2, 7], np.uint64), np.array([4.0, 10.0], np.float32))
    batch = _batch([[(1, 3.0), (8, 8.0)], [(100, 5.0)]])
    assert scales.apply(batch) is batch
    assert scales.apply(Batch.empty()).num_rows == 0
    assert FeatureScales.empty().apply(batch) is batch


def test_keys_beyond_the_last_scaled_key_are_left_alone():
    scales = FeatureScales(np.array([5], np.uint64), np.array([2.0], np.float32))
    batch = _batch([[(5, 4.0), (2**64 - 1, 3.0), (6, 9.0)]])
    np.testing.assert_array_equal(scales.apply(batch).values, [2.0, 3.0, 9.0])


def test_a_table_built_of_the_data_scales_every_value_into_minus_one_to_one():
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 50, 400).astype(np.uint64)
    values = (rng.normal(size=400) * 10.0 ** rng.integers(-1, 6, 400)).astype(np.float32)
    batch = Batch(labels=np.zeros(100, np.float32), indptr=np.arange(0, 401, 4, dtype=np.int64), keys=keys,
                  values=values)
    result = FeatureScales.of([batch]).apply(batch)
    assert np.abs(result.values).max() <= 1.0
    assert np.abs(result.values).max() == 1.0


class _Source:
    """A batch source counting its passes."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return iter(self.batches)


def test_preloaded_batches_are_scaled_once_and_the_source_read_once():
    scales = FeatureScales(np.array([2], np.uint64), np.array([4.0], np.float32))
    source = _Source([_batch([[(2, 8.0)]]), _batch([[(1, 3.0)]])])
    batches = scaled(source, scales, preload=True)
    assert source.calls == 1  # read and scaled here
    first, second = list(batches()), list(batches())
    assert source.calls == 1
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert first[0].values.tolist() == [2.0] and first[1] is source.batches[1]
    assert source.batches[0].values.tolist() == [8.0]


def test_streamed_batches_are_scaled_on_every_pass():
    scales = FeatureScales(np.array([2], np.uint64), np.array([4.0], np.float32))
    source = _Source([_batch([[(2, 8.0)]])])
    batches = scaled(source, scales, preload=False)
    assert source.calls == 0  # nothing read until a pass
    for passes in (1, 2):
        assert [b.values.tolist() for b in batches()] == [[2.0]]
        assert source.calls == passes
    assert source.batches[0].values.tolist() == [8.0]


def test_an_empty_table_returns_the_source_unchanged():
    source = _Source([_batch([[(2, 8.0)]])])
    assert scaled(source, FeatureScales.empty(), preload=True) is source
    assert scaled(source, FeatureScales.empty(), preload=False) is source
    assert source.calls == 0

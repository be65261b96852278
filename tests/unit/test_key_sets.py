"""hybrid_ps.data._key_sets: batch preparation's hash-unique against ``np.unique`` (the plain-numpy reference)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_ps.data._key_sets import positions_in_sorted, unique_inverse, unique_sorted
from hybrid_ps.placement.ring import mix64

keys_lists = st.lists(st.one_of(st.sampled_from([0, 1, 2**64 - 2, 2**64 - 1]), st.integers(0, 2**64 - 1),
                                st.integers(0, 50)), max_size=400)


@settings(max_examples=150, deadline=None)
@given(keys=keys_lists)
def test_unique_inverse_equals_np_unique(keys):
    array = np.array(keys, dtype=np.uint64)
    unique, inverse = unique_inverse(array)
    expected, expected_inverse = np.unique(array, return_inverse=True)
    np.testing.assert_array_equal(unique, expected)
    np.testing.assert_array_equal(inverse, expected_inverse.reshape(-1))
    assert inverse.dtype == np.int32 and unique.dtype == np.uint64
    np.testing.assert_array_equal(unique_sorted(array), expected)


def test_a_power_law_batch_with_repeats():
    rng = np.random.default_rng(0)
    keys = mix64(np.minimum(rng.zipf(1.2, 80_000), 10**6).astype(np.uint64))
    unique, inverse = unique_inverse(keys)
    np.testing.assert_array_equal(unique[inverse], keys)
    np.testing.assert_array_equal(unique, np.unique(keys))


@settings(max_examples=100, deadline=None)
@given(keys=keys_lists, picks=st.lists(st.integers(0, 10_000), max_size=50))
def test_positions_in_sorted_equals_searchsorted(keys, picks):
    haystack = np.unique(np.array(keys, dtype=np.uint64))
    if not haystack.size:
        return
    needles = haystack[np.array(picks, dtype=np.int64) % haystack.size] if picks else haystack[:0]
    for ordered in (np.sort(needles), needles):  # sorted: one merge walk; unsorted: restarts by bisection
        np.testing.assert_array_equal(positions_in_sorted(haystack, ordered), np.searchsorted(haystack, ordered))


def test_positions_in_sorted_refuses_a_missing_needle():
    with pytest.raises(ValueError, match="missing"):
        positions_in_sorted(np.array([1, 5, 9], np.uint64), np.array([5, 6], np.uint64))

"""hybrid_ps.server.key_index: the vectorised open-addressing key -> slot table against a dict reference."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ps.server.key_index import KeyIndex

EXTREMES = np.array([0, 1, 2**63, 2**64 - 2, 2**64 - 1], dtype=np.uint64)


def _unique_random_keys(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = np.unique(np.concatenate([EXTREMES, rng.integers(0, 2**64 - 1, count, dtype=np.uint64, endpoint=True)]))
    return rng.permutation(keys)


def _check_against(index: KeyIndex, reference: dict[int, int], probes: np.ndarray) -> None:
    expected = np.array([reference.get(k, -1) for k in probes.tolist()], dtype=np.int64)
    got = index.lookup(probes)
    assert got.dtype == np.int64 and got.shape == probes.shape
    np.testing.assert_array_equal(got, expected)


def test_empty_index():
    index = KeyIndex(capacity=16)
    assert len(index) == 0 and index.keys.size == 0
    np.testing.assert_array_equal(index.lookup(EXTREMES), [-1] * EXTREMES.size)
    assert index.lookup(np.zeros(0, np.uint64)).size == 0


def test_insert_gives_dense_slots_in_insertion_order():
    index = KeyIndex(capacity=16)
    np.testing.assert_array_equal(index.insert(np.array([10, 20, 30], np.uint64)), [0, 1, 2])
    np.testing.assert_array_equal(index.insert(np.array([5], np.uint64)), [3])
    np.testing.assert_array_equal(index.insert(np.zeros(0, np.uint64)), [])
    assert len(index) == 4
    np.testing.assert_array_equal(index.keys, [10, 20, 30, 5])
    np.testing.assert_array_equal(index.lookup(np.array([20, 99, 10, 20, 5], np.uint64)), [1, -1, 0, 1, 3])


def test_lookup_or_insert_mixes_present_and_absent_keys():
    index = KeyIndex(capacity=16)
    index.insert(np.array([10, 20], np.uint64))
    slots = index.lookup_or_insert(np.array([40, 10, 50, 20], np.uint64))
    np.testing.assert_array_equal(slots, [2, 0, 3, 1])
    np.testing.assert_array_equal(index.keys, [10, 20, 40, 50])
    np.testing.assert_array_equal(index.lookup_or_insert(np.array([50, 40], np.uint64)), [3, 2])
    assert len(index) == 4


def test_extreme_keys():
    index = KeyIndex(capacity=16)
    slots = index.lookup_or_insert(EXTREMES)
    np.testing.assert_array_equal(slots, np.arange(EXTREMES.size))
    np.testing.assert_array_equal(index.lookup(EXTREMES[::-1]), np.arange(EXTREMES.size)[::-1])
    np.testing.assert_array_equal(index.lookup(np.array([2, 2**64 - 3, 2**63 - 1], np.uint64)), [-1, -1, -1])


def test_key_zero_is_not_confused_with_empty_slots():
    index = KeyIndex(capacity=1024)  # slot_keys is zero-filled past the held keys
    index.insert(np.array([7, 8], np.uint64))
    assert index.lookup(np.array([0], np.uint64))[0] == -1
    index.insert(np.array([0], np.uint64))
    assert index.lookup(np.array([0], np.uint64))[0] == 2


def test_against_a_dict_across_many_resizes():
    keys = _unique_random_keys(200_000, seed=1)
    index = KeyIndex(capacity=16)
    reference: dict[int, int] = {}
    table_sizes = {index._table.size}
    absent = np.random.default_rng(2).integers(0, 2**64 - 1, 2000, dtype=np.uint64)
    absent = absent[~np.isin(absent, keys)]
    # chunks growing geometrically from 1 key, so the table doubles at many sizes (16 .. 2**19)
    bounds = np.unique(np.geomspace(1, keys.size, 60).astype(np.int64))
    chunks = np.split(keys, bounds[:-1])
    for number, chunk in enumerate(chunks):
        # each chunk: half new keys, half keys seen before (when there are any)
        seen = keys[: sum(c.size for c in chunks[:number])]
        again = seen[:: max(1, seen.size // 200)][:200] if seen.size else seen[:0]
        request = np.concatenate([chunk, again])
        slots = index.lookup_or_insert(request)
        for key, slot in zip(chunk.tolist(), slots[: chunk.size].tolist()):
            assert key not in reference
            reference[key] = slot
        np.testing.assert_array_equal(slots[chunk.size :], [reference[k] for k in again.tolist()])
        table_sizes.add(index._table.size)
        assert len(index) <= index._table.size * index.max_load  # load stays bounded
        if number % 8 == 0:
            _check_against(index, reference, np.concatenate([keys[: seen.size + chunk.size : 97], absent]))
    assert len(table_sizes) >= 14  # many resizes happened on the way
    assert len(index) == keys.size == len(reference)
    assert sorted(reference.values()) == list(range(keys.size))  # dense slots
    _check_against(index, reference, np.concatenate([keys, absent]))
    np.testing.assert_array_equal(index.keys[index.lookup(keys)], keys)


def test_insert_in_many_small_chunks_against_a_dict():
    keys = _unique_random_keys(20_000, seed=7)
    index = KeyIndex(capacity=16)
    reference: dict[int, int] = {}
    for start in range(0, keys.size, 37):
        chunk = keys[start : start + 37]
        slots = index.insert(chunk)
        reference.update(zip(chunk.tolist(), slots.tolist()))
    _check_against(index, reference, keys)
    assert len(index) == keys.size


@pytest.mark.parametrize("capacity", [0, 1, 16, 100, 1 << 16])
def test_any_initial_capacity(capacity):
    keys = _unique_random_keys(3000, seed=capacity)
    index = KeyIndex(capacity=capacity)
    slots = index.lookup_or_insert(keys)
    np.testing.assert_array_equal(slots, np.arange(keys.size))
    np.testing.assert_array_equal(index.lookup(keys), np.arange(keys.size))


def _keys_with_home(index: KeyIndex, home: int, count: int) -> np.ndarray:
    candidates = np.arange(2_000_000, dtype=np.uint64)
    homes = index._home(candidates)
    found = candidates[homes == home]
    assert found.size >= count
    return found[:count]


def test_keys_sharing_a_home_position_probe_linearly():
    index = KeyIndex(capacity=16)
    table_size = index._table.size
    same_home = _keys_with_home(index, 5, 7)  # seven keys, one home position
    index.insert(same_home[:6])
    assert index._table.size == table_size  # no resize: the collisions are resolved by probing
    np.testing.assert_array_equal(index.lookup(same_home[:6]), np.arange(6))
    assert index.lookup(same_home[6:])[0] == -1  # probes past all six, then hits an empty slot
    np.testing.assert_array_equal(np.sort(index._table[5:11]), np.arange(6))  # six consecutive table cells


def test_colliding_keys_inserted_one_by_one_and_across_the_table_end():
    index = KeyIndex(capacity=16)
    last = index._table.size - 1
    wrapping = _keys_with_home(index, last, 4)  # probing wraps from the last cell to cell 0
    others = _keys_with_home(index, 0, 2)
    reference = {}
    for key in np.concatenate([wrapping[:2], others, wrapping[2:]]):
        reference[int(key)] = int(index.lookup_or_insert(np.array([key], np.uint64))[0])
    assert index._table.size == last + 1
    _check_against(index, reference, np.concatenate([wrapping, others, np.array([12345678901], np.uint64)]))


def test_colliding_keys_in_one_batch_survive_resizes():
    index = KeyIndex(capacity=16)
    crowd = np.concatenate([_keys_with_home(index, home, 5) for home in (3, 4, 15)])  # overlapping probe runs
    slots = index.lookup_or_insert(crowd)
    np.testing.assert_array_equal(slots, np.arange(crowd.size))
    more = _unique_random_keys(5000, seed=9)
    more = more[~np.isin(more, crowd)]
    index.insert(more)
    np.testing.assert_array_equal(index.lookup(crowd), np.arange(crowd.size))
    np.testing.assert_array_equal(index.lookup(more), np.arange(crowd.size, crowd.size + more.size))


def test_lookup_accepts_lists_and_other_integer_arrays():
    index = KeyIndex(capacity=16)
    index.insert(np.array([3, 9], np.uint64))
    np.testing.assert_array_equal(index.lookup([9, 3, 4]), [1, 0, -1])
    np.testing.assert_array_equal(index.lookup(np.array([9, 3], np.int64)), [1, 0])


def test_lookup_does_not_insert():
    index = KeyIndex(capacity=16)
    index.lookup(np.arange(100, dtype=np.uint64))
    assert len(index) == 0

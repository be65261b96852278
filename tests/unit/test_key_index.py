"""Vectorised key -> slot index against a dict reference."""

from __future__ import annotations

import numpy as np

from hybrid_ps.server.key_index import KeyIndex


def test_against_a_dict_across_many_resizes():
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(0, 2**64 - 1, 200_000, dtype=np.uint64, endpoint=False))
    keys = np.unique(np.concatenate([np.array([0, 2**64 - 2], dtype=np.uint64), keys]))
    rng.shuffle(keys)
    index = KeyIndex(capacity=16)
    reference: dict[int, int] = {}
    for chunk in np.array_split(keys, 37):
        slots = index.lookup_or_insert(chunk)
        for key, slot in zip(chunk.tolist(), slots.tolist()):
            reference.setdefault(key, slot)
            assert reference[key] == slot
    assert len(index) == keys.size
    np.testing.assert_array_equal(index.lookup(keys), [reference[k] for k in keys.tolist()])
    np.testing.assert_array_equal(index.keys[index.lookup(keys)], keys)


def test_absent_keys_and_repeated_lookups():
    index = KeyIndex(capacity=16)
    slots = index.insert(np.array([10, 20, 30], dtype=np.uint64))
    np.testing.assert_array_equal(slots, [0, 1, 2])
    np.testing.assert_array_equal(index.lookup(np.array([20, 99, 10, 20], np.uint64)), [1, -1, 0, 1])
    np.testing.assert_array_equal(index.lookup_or_insert(np.array([40, 10], np.uint64)), [3, 0])


def test_keys_sharing_a_home_position_probe_correctly():
    index = KeyIndex(capacity=16)
    table_size = index._table.size
    candidates = np.arange(100_000, dtype=np.uint64)
    homes = index._home(candidates)
    same_home = candidates[homes == homes[0]][:6]  # six keys, one home slot
    assert same_home.size == 6
    index.insert(same_home)
    assert index._table.size == table_size
    np.testing.assert_array_equal(index.lookup(same_home), np.arange(6))
    assert index.lookup(candidates[homes == homes[0]][6:7])[0] == -1

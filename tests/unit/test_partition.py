"""Consistent-hash ring: balance, minimal movement, split."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ps.errors import ConfigError
from hybrid_ps.partition import HashRing, mix64

KEYS = np.random.default_rng(0).integers(0, 2**63, 100_000, dtype=np.uint64)


def test_mix64_is_deterministic_and_injective_on_samples():
    sample = np.arange(200_000, dtype=np.uint64)
    mixed = mix64(sample)
    assert np.unique(mixed).size == sample.size
    np.testing.assert_array_equal(mixed, mix64(sample))
    assert mix64(np.array([0], np.uint64))[0] != 0


@pytest.mark.parametrize("shards", [2, 3, 4, 8])
@pytest.mark.parametrize("keys", [KEYS, np.arange(100_000, dtype=np.uint64)], ids=["hashed", "sequential"])
def test_balanced_within_fifteen_percent(shards, keys):
    counts = np.bincount(HashRing(range(shards)).shard_of(keys), minlength=shards)
    assert counts.max() / counts.mean() < 1.15 and counts.min() / counts.mean() > 0.85


def test_adding_a_shard_moves_about_one_in_five_keys_and_only_to_it():
    before = HashRing(range(4)).shard_of(KEYS)
    after = HashRing(range(5)).shard_of(KEYS)
    moved = before != after
    assert 0.15 < moved.mean() < 0.25
    assert np.all(after[moved] == 4)


def test_removing_a_shard_moves_only_its_keys():
    before = HashRing(range(5)).shard_of(KEYS)
    after = HashRing([0, 1, 3, 4]).shard_of(KEYS)
    moved = before != after
    assert np.all(before[moved] == 2) and np.all(moved[before == 2])


def test_split_groups_by_shard_and_keeps_order():
    ring = HashRing(range(3))
    keys = np.sort(KEYS[:5000])
    order, bounds = ring.split(keys)
    owners = ring.shard_of(keys)
    assert bounds[-1] == keys.size
    for index, shard in enumerate(ring.shard_ids):
        part = order[bounds[index] : bounds[index + 1]]
        assert np.all(owners[part] == shard)
        assert np.all(np.diff(part) > 0)  # relative order kept, so each part stays sorted


def test_bad_rings():
    with pytest.raises(ConfigError, match="at least one shard"):
        HashRing([])
    with pytest.raises(ConfigError, match="vnodes"):
        HashRing([0], vnodes=0)

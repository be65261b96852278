"""HashRing's owner table (the fast path of shard_of/split) agrees with the plain binary search over the ring."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ps.placement.ring import HashRing, mix64


def _reference_shard_of(ring: HashRing, keys: np.ndarray) -> np.ndarray:
    """The definition: the owner of the first ring point at or after the key's hash, wrapping around."""
    index = np.searchsorted(ring._points, mix64(keys), side="left")
    index[index == ring._points.size] = 0
    return ring._owners[index]


def _unmix64(z: np.ndarray) -> np.ndarray:
    """Inverse of mix64 (vectorised), to build keys whose hash lands exactly where a test wants."""
    def unshift(value, shift):
        result = value.copy()
        for _ in range(64 // shift + 1):
            result = value ^ (result >> np.uint64(shift))
        return result

    with np.errstate(over="ignore"):
        z = unshift(z, 31)
        z = unshift(z * np.uint64(pow(0x94D049BB133111EB, -1, 2**64)), 27)
        z = unshift(z * np.uint64(pow(0xBF58476D1CE4E5B9, -1, 2**64)), 30)
        return z - np.uint64(0x9E3779B97F4A7C15)


RINGS = [(range(2), 256), (range(3), 1), (range(5), 64), ([7, 2, 40, 11], 16), (range(40), 256), ([3, 9], 4)]


@pytest.mark.parametrize("shard_ids, vnodes", RINGS)
def test_shard_of_matches_the_binary_search_everywhere(shard_ids, vnodes):
    ring = HashRing(shard_ids, vnodes)
    rng = np.random.default_rng(1)
    hashes = [rng.integers(0, 2**64 - 1, 200_000, dtype=np.uint64, endpoint=True),
              ring._points, ring._points + np.uint64(1), ring._points - np.uint64(1),  # on and next to every point
              np.arange(1 << 16, dtype=np.uint64) << np.uint64(48),  # the first and last hash of every table bucket
              (np.arange(1 << 16, dtype=np.uint64) << np.uint64(48)) - np.uint64(1),
              np.array([0, 2**64 - 1], dtype=np.uint64)]
    keys = _unmix64(np.concatenate(hashes))
    np.testing.assert_array_equal(mix64(keys), np.concatenate(hashes))
    np.testing.assert_array_equal(ring.shard_of(keys), _reference_shard_of(ring, keys))
    grid = keys[:1000].reshape(10, 100)
    np.testing.assert_array_equal(ring.shard_of(grid), _reference_shard_of(ring, grid.reshape(-1)).reshape(10, 100))


@pytest.mark.parametrize("shard_ids, vnodes", RINGS + [([5], 8)])
@pytest.mark.parametrize("count", [0, 1, 1000])
def test_split_groups_keys_by_shard_in_order(shard_ids, vnodes, count):
    ring = HashRing(shard_ids, vnodes)
    keys = np.unique(np.random.default_rng(count).integers(0, 2**64 - 1, count, dtype=np.uint64, endpoint=True))
    order, bounds = ring.split(keys)
    owners = _reference_shard_of(ring, keys)
    assert bounds.tolist()[0] == 0 and bounds.tolist()[-1] == keys.size and len(bounds) == ring.num_shards + 1
    assert sorted(order.tolist()) == list(range(keys.size))
    for index, shard in enumerate(ring.shard_ids.tolist()):
        part = order[bounds[index] : bounds[index + 1]]
        assert np.all(np.diff(part) > 0)  # original order kept inside a shard
        np.testing.assert_array_equal(part, np.flatnonzero(owners == shard))


@pytest.mark.parametrize("shard_ids, vnodes", RINGS + [([5], 8)])
def test_positions_by_shard_agree_with_split(shard_ids, vnodes):
    ring = HashRing(shard_ids, vnodes)
    keys = np.unique(np.random.default_rng(3).integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True))
    order, bounds = ring.split(keys)
    parts = ring.positions_by_shard(keys)
    assert len(parts) == ring.num_shards
    for index, part in enumerate(parts):
        np.testing.assert_array_equal(part, order[bounds[index] : bounds[index + 1]])

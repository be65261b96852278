"""hybrid_ps.placement._ring_kernels: grouping keys by owner and the ownership check against numpy references."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_ps.placement._ring_kernels import first_outside, group_by_owner
from hybrid_ps.placement.replicas import Placement
from hybrid_ps.placement.ring import HashRing, mix64


@settings(max_examples=100, deadline=None)
@given(points=st.lists(st.integers(0, 29), max_size=300), replicas=st.integers(1, 3), seed=st.integers(0, 1000))
def test_group_by_owner_equals_one_flatnonzero_per_slot(points, replicas, seed):
    owners = np.random.default_rng(seed).integers(-1, 5, size=(30, replicas)).astype(np.int32)
    point_array = np.array(points, dtype=np.int32)
    positions, bounds = group_by_owner(point_array, owners, 5)
    for slot in range(5):  # a key goes to a slot once per time its point names it
        repeats = (owners[point_array] == slot).sum(axis=1) if point_array.size else np.zeros(0, np.int64)
        expected = np.repeat(np.arange(point_array.size), repeats)
        np.testing.assert_array_equal(positions[bounds[slot] : bounds[slot + 1]], expected)


def test_first_outside_finds_the_first_key_of_a_point_not_allowed():
    allowed = np.array([1, 1, 0, 1], np.uint8)
    assert first_outside(np.array([0, 1, 3, 2, 2], np.int32), allowed) == 3
    assert first_outside(np.array([0, 3], np.int32), allowed) == -1
    assert first_outside(np.zeros(0, np.int32), allowed) == -1


def test_split_and_parts_equal_the_per_shard_masks_of_the_ring():
    ring = HashRing(range(5), vnodes=64)
    keys = mix64(np.arange(20_000, dtype=np.uint64))
    owner = ring.shard_of(keys)
    order, bounds = ring.split(keys)
    for i, shard in enumerate(ring.shard_ids):
        np.testing.assert_array_equal(order[bounds[i] : bounds[i + 1]], np.flatnonzero(owner == shard))
    placement = Placement(ring, replication=2, dead=[3])
    replicas = placement.replicas_of(keys)
    for shard, positions in placement.push_parts(keys):
        np.testing.assert_array_equal(positions, np.flatnonzero((replicas == shard).any(axis=1)))
    primary = placement.primary_of(keys)
    for shard, positions in placement.pull_parts(keys):
        np.testing.assert_array_equal(positions, np.flatnonzero(primary == shard))
    mine = keys[primary == 1]
    assert placement.first_stray(mine, 1, primary=True) is None
    stray = placement.first_stray(keys, 1, primary=True)
    assert stray is not None and stray[0] == int(keys[np.flatnonzero(primary != 1)[0]])

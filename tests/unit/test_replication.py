"""hybrid_ps.placement.replicas and the ring's preference lists: replicas, acting primaries, failover, lost ranges."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ps.errors import RangeLostError
from hybrid_ps.placement.replicas import Placement, default_replication
from hybrid_ps.placement.ring import HashRing, mix64

KEYS = np.unique(np.random.default_rng(1).integers(0, 2**64 - 1, 50_000, dtype=np.uint64))


def _reference_points(ring: HashRing, keys: np.ndarray) -> np.ndarray:
    index = np.searchsorted(ring._points, mix64(keys), side="left")
    return np.where(index == ring.num_points, 0, index)


@pytest.mark.parametrize("shards", [1, 3, 8])
def test_point_of_matches_a_binary_search_over_the_ring(shards):
    ring = HashRing(range(shards), vnodes=64)
    assert np.array_equal(ring.point_of(KEYS), _reference_points(ring, KEYS))
    assert np.array_equal(ring._slots[ring.point_of(KEYS)], ring.shard_of(KEYS))


@pytest.mark.parametrize("shards,replication", [(1, 3), (2, 2), (5, 3), (8, 2)])
def test_preference_lists_are_distinct_shards_walking_clockwise(shards, replication):
    ring = HashRing(range(shards), vnodes=32)
    table = ring.preference_slots(replication)
    assert table.shape == (ring.num_points, min(replication, shards))
    assert np.array_equal(table[:, 0], ring._slots)
    for point in range(0, ring.num_points, 7):  # reference: a plain walk
        walk = []
        for step in range(ring.num_points):
            slot = int(ring._slots[(point + step) % ring.num_points])
            if slot not in walk:
                walk.append(slot)
        assert table[point].tolist() == walk[: table.shape[1]]


def test_default_replication_is_two_from_two_servers():
    assert [default_replication(0, s) for s in (1, 2, 5)] == [1, 2, 2]
    assert default_replication(3, 2) == 2 and default_replication(1, 4) == 1


def test_without_failures_pulls_go_to_the_ring_owner_and_pushes_to_every_replica():
    ring = HashRing(range(4), vnodes=64)
    placement = Placement(ring, 2)
    assert np.array_equal(placement.primary_of(KEYS), ring.shard_of(KEYS))
    replicas = placement.replicas_of(KEYS)
    pushed = np.zeros((KEYS.size, 4), dtype=int)
    for shard, positions in placement.push_parts(KEYS):
        pushed[positions, shard] += 1
    assert (pushed.sum(axis=1) == 2).all()
    for column in range(2):
        assert (pushed[np.arange(KEYS.size), replicas[:, column]] == 1).all()
    pulled = np.full(KEYS.size, -1)
    for shard, positions in placement.pull_parts(KEYS):
        pulled[positions] = shard
    assert np.array_equal(pulled, ring.shard_of(KEYS))


def test_a_dead_primary_promotes_the_backup_and_moves_nothing_else():
    ring = HashRing(range(4), vnodes=64)
    before = Placement(ring, 2)
    after = before.without(1)
    replicas = before.replicas_of(KEYS)
    was_primary = replicas[:, 0] == 1
    assert np.array_equal(after.primary_of(KEYS)[was_primary], replicas[was_primary, 1])
    assert np.array_equal(after.primary_of(KEYS)[~was_primary], replicas[~was_primary, 0])
    assert after.live_shards == [0, 2, 3] and after.lost_points == 0
    assert all(shard != 1 for shard, _ in after.push_parts(KEYS))


def test_all_replicas_dead_is_a_lost_range_with_a_clear_error():
    placement = Placement(HashRing(range(3), vnodes=16), 2).without(0).without(1)
    assert placement.lost_points > 0
    with pytest.raises(RangeLostError, match=r"every replica of \d+ of the \d+ key ranges is dead .*--resume latest"):
        placement.pull_parts(KEYS)
    with pytest.raises(RangeLostError):
        placement.push_parts(KEYS)
    assert Placement(HashRing([0], vnodes=4), 1).without(0).primary_of(KEYS[:3]).tolist() == [-1, -1, -1]


def test_first_stray_checks_primary_for_pulls_and_any_replica_for_pushes():
    ring = HashRing(range(3), vnodes=32)
    placement = Placement(ring, 2)
    replicas = placement.replicas_of(KEYS)
    mine = KEYS[replicas[:, 0] == 2]
    backed_up = KEYS[replicas[:, 1] == 2]
    assert placement.first_stray(mine, 2, primary=True) is None
    assert placement.first_stray(backed_up, 2, primary=False) is None
    key, why = placement.first_stray(backed_up, 2, primary=True)
    assert key == int(backed_up[0]) and "is not its acting primary" in why
    assert placement.without(int(replicas[replicas[:, 1] == 2][0, 0])).first_stray(backed_up[:1], 2, True) is None
    others = KEYS[(replicas != 2).all(axis=1)]
    assert "is not one of its replicas" in placement.first_stray(others, 2, primary=False)[1]


def test_is_replica_marks_the_keys_a_shard_holds_dead_or_alive():
    placement = Placement(HashRing(range(4), vnodes=32), 2).without(1)
    replicas = placement.replicas_of(KEYS)
    for shard in range(4):
        assert np.array_equal(placement.is_replica(KEYS, shard), (replicas == shard).any(axis=1))
    assert not placement.is_replica(KEYS, 9).any(), "a shard that is not on the ring holds nothing"


@pytest.mark.parametrize("replication", [2, 3])
def test_a_retired_shards_place_goes_to_the_next_shard_of_the_ring_and_no_primary_moves(replication):
    ring = HashRing(range(5), vnodes=32)
    dead = Placement(ring, replication).without(1)
    retired = dead.with_retired(1)
    old, new = dead.replicas_of(KEYS), retired.replicas_of(KEYS)
    assert retired.retired == (1,) and 1 in retired.dead and retired.live_shards == [0, 2, 3, 4]
    np.testing.assert_array_equal(retired.primary_of(KEYS), dead.primary_of(KEYS))
    assert (new != 1).all() and all(len(set(row)) == replication for row in new.tolist())
    moved = (old == 1).any(axis=1)
    np.testing.assert_array_equal((new != old).any(axis=1), moved)  # only ranges it held change
    for o, n in zip(old[moved].tolist(), new[moved].tolist(), strict=True):
        assert [s for s in o if s != 1] == n[:replication - 1], "the others keep their order; one comes after"
    walk = ring.preference_slots(replication + 1)[ring.point_of(KEYS[moved])]
    firsts = [[s for s in row if s != 1][:replication] for row in ring.shard_ids[walk].tolist()]
    assert new[moved].tolist() == firsts, "the next shard met walking the ring takes the place"


def test_after_retirements_a_second_death_loses_nothing_and_the_last_shard_holds_everything():
    placement = Placement(HashRing(range(3), vnodes=32), 2).without(0).with_retired(0)
    assert placement.without(1).lost_points == 0  # without the retirement, ranges on {0, 1} would be lost
    assert Placement(HashRing(range(3), vnodes=32), 2).without(0).without(1).lost_points > 0
    last = placement.without(1).with_retired(1)
    assert last.replicas_of(KEYS).shape == (KEYS.size, 1) and (last.primary_of(KEYS) == 2).all()
    with pytest.raises(ValueError, match="last shard"):
        last.with_retired(2)
    with pytest.raises(ValueError, match="was retired"):
        last.with_rejoined(1)


def test_the_order_of_restarts_and_retirements_decides_the_acting_primary():
    """A replica holds a range from the start, from its restart, or from the retirement that gave it its place;
    the acting primary is the live one that held it longest."""
    ring = HashRing(range(4), vnodes=32)
    start = Placement(ring, 2)
    # shard 0 restarted (a backup, filled), then shard 1 retired: where 0 had 1 as its partner, 0 stays primary
    # and the shard that takes 1's place is a backup
    a = start.without(0).with_rejoined(0).without(1).with_retired(1)
    np.testing.assert_array_equal(a.primary_of(KEYS), start.without(0).with_rejoined(0).without(1).primary_of(KEYS))
    assert a.history == (("rejoined", 0), ("retired", 1))
    # shard 1 retired first (0 filled its new partners), then 0 died and was restarted: 0 is a backup everywhere
    b = start.without(1).with_retired(1).without(0).with_rejoined(0)
    assert not b.is_primary(KEYS, 0).any()
    assert b.history == (("retired", 1), ("rejoined", 0))
    assert Placement(ring, 2, history=b.history).history == b.history  # a history passed on rebuilds the same
    np.testing.assert_array_equal(Placement(ring, 2, history=b.history).primary_of(KEYS), b.primary_of(KEYS))

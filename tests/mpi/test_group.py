"""In-group collectives: key union, broadcast of pulled values, buffer Allreduce."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ps.worker.group import WorkerGroup


@pytest.mark.mpi(min_size=2)
def test_gather_keys_is_the_sorted_union(world):
    group = WorkerGroup(world)
    rank = world.Get_rank()
    keys = np.unique(np.random.default_rng(rank).integers(0, 1000, 50).astype(np.uint64))
    everyone = world.allgather(keys)
    union = group.gather_keys(keys)
    if group.is_leader:
        np.testing.assert_array_equal(union, np.unique(np.concatenate(everyone)))
    else:
        assert union is None


@pytest.mark.mpi(min_size=2)
def test_exhausted_members_are_left_out_and_all_exhausted_means_stop(world):
    group = WorkerGroup(world)
    rank = world.Get_rank()
    mine = np.array([rank], dtype=np.uint64) if rank % 2 == 0 else None
    union = group.gather_keys(mine)
    if group.is_leader:
        np.testing.assert_array_equal(union, np.arange(0, world.Get_size(), 2, dtype=np.uint64))
    assert group.gather_keys(None) is None  # everybody exhausted: leader sees None too


@pytest.mark.mpi(min_size=2)
def test_broadcast_pulled_and_stop(world):
    group = WorkerGroup(world)
    keys = np.arange(10, dtype=np.uint64) if group.is_leader else None
    values = np.arange(20, dtype=np.float32).reshape(10, 2) if group.is_leader else None
    got = group.broadcast_pulled(keys, values, width=2)
    np.testing.assert_array_equal(got[0], np.arange(10, dtype=np.uint64))
    np.testing.assert_array_equal(got[1], np.arange(20, dtype=np.float32).reshape(10, 2))
    assert group.broadcast_pulled(None, None, width=2) is None


@pytest.mark.mpi(min_size=2)
def test_allreduce_sum_in_place(world):
    group = WorkerGroup(world)
    size, rank = world.Get_size(), world.Get_rank()
    buffer = np.full(1 << 16, rank + 1, dtype=np.float32)
    out = group.allreduce_sum(buffer)
    assert out is buffer
    assert np.all(buffer == size * (size + 1) / 2)


@pytest.mark.mpi(min_size=2)
def test_a_member_gives_up_on_a_silent_leader_with_a_clear_error(world):
    import time

    from hybrid_ps.errors import WaitTimeoutError
    from hybrid_ps.worker.group import wait_quietly

    group = WorkerGroup(world, leader_timeout=0.3)
    if group.is_leader:
        time.sleep(1.0)  # a leader stuck on the PS
        assert group.broadcast_int(5) == 5
    else:
        with pytest.raises(WaitTimeoutError, match=r"waited 0.3s for a broadcast from the leader \(group rank"):
            group.broadcast_int(0)
    wait_quietly(world.Ibarrier())

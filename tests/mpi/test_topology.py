"""build_topology and endpoint exchange on a real MPI world."""

from __future__ import annotations

import pytest

from hybrid_ps.job.topology import build_topology, exchange_endpoints


@pytest.mark.mpi(min_size=4)
def test_roles_groups_and_leaders(world):
    size, rank = world.Get_size(), world.Get_rank()
    topology = build_topology(world, servers=1, groups=2)
    layout = topology.layout
    assert layout.num_servers == 1 and layout.num_groups == 2
    if rank == size - 1:
        assert topology.role == "server" and topology.shard_id == 0
        assert topology.group_comm is None
    else:
        start, stop = layout.group_bounds(topology.group)
        assert start <= rank < stop
        assert topology.group_comm.Get_size() == stop - start
        assert topology.group_rank == rank - start
        assert topology.is_leader == (rank == start)
    # every worker rank belongs to exactly one group, leaders are the first ranks
    roles = world.allgather((topology.role, topology.group, topology.is_leader))
    workers = [r for r in roles if r[0] == "worker"]
    assert len(workers) == size - 1
    assert sum(1 for r in workers if r[2]) == 2
    endpoint = "tcp://127.0.0.1:1" if topology.role == "server" else None
    assert exchange_endpoints(topology, endpoint) == ("tcp://127.0.0.1:1",)


@pytest.mark.mpi(min_size=4)
def test_too_many_groups_fails_on_every_rank_before_any_split(world):
    from hybrid_ps.errors import TopologyError

    with pytest.raises(TopologyError, match="more than the"):
        build_topology(world, servers=1, groups=world.Get_size())

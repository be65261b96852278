"""hybrid_ps.job.topology: plan_layout and Layout (pure; build_topology runs under MPI in tests/mpi)."""

from __future__ import annotations

import dataclasses

import pytest

from hybrid_ps.errors import HybridPSError, TopologyError
from hybrid_ps.job.topology import Layout, plan_layout


def _check_layout(layout: Layout) -> list[int]:
    """Assert the layout's invariants; returns the group sizes."""
    workers = layout.world_size - layout.num_servers
    assert layout.num_workers == workers >= 1 and layout.num_servers >= 1
    covered, sizes = [], []
    for group in range(layout.num_groups):
        start, stop = layout.group_bounds(group)
        assert stop > start  # no empty group
        covered.extend(range(start, stop))
        sizes.append(stop - start)
        for rank in range(start, stop):
            assert layout.group_of(rank) == group and not layout.is_server(rank)
    assert covered == list(range(workers))  # contiguous, in order, every worker exactly once
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the bigger groups come first
    servers = [rank for rank in range(layout.world_size) if layout.is_server(rank)]
    assert servers == list(range(workers, layout.world_size))  # servers are the last ranks
    assert [layout.server_index(rank) for rank in servers] == list(range(layout.num_servers))
    return sizes


@pytest.mark.parametrize(
    "world, servers, groups, sizes",
    [(2, 1, 1, [1]), (4, 1, 1, [3]), (8, 2, 2, [3, 3]), (32, 8, 8, [3] * 8), (16, 4, 4, [3] * 4),
     (3, 1, 1, [2]), (7, 1, 2, [3, 3]), (9, 2, 2, [4, 3])],
)
def test_defaults(world, servers, groups, sizes):
    layout = plan_layout(world)
    assert (layout.world_size, layout.num_servers, layout.num_groups) == (world, servers, groups)
    assert _check_layout(layout) == sizes


@pytest.mark.parametrize("world", range(2, 65))
def test_defaults_are_valid_for_every_world_size(world):
    layout = plan_layout(world)
    assert layout.num_servers == max(1, world // 4)
    assert layout.num_groups == max(1, (world - layout.num_servers) // 3)
    _check_layout(layout)


@pytest.mark.parametrize(
    "world, servers, groups",
    [(8, 2, 2), (32, 4, 5), (7, 1, 6), (5, 2, 1), (10, 1, 9), (10, 3, 7), (33, 3, 4), (100, 7, 13), (2, 1, 0)],
)
def test_explicit_layouts_are_contiguous_balanced_and_complete(world, servers, groups):
    layout = plan_layout(world, servers, groups)
    assert layout.num_servers == servers
    sizes = _check_layout(layout)
    assert sum(sizes) == world - servers


def test_only_servers_or_only_groups_given():
    layout = plan_layout(12, servers=5)
    assert (layout.num_servers, layout.num_groups) == (5, 2)  # groups from the 7 workers
    layout = plan_layout(12, groups=9)
    assert (layout.num_servers, layout.num_groups) == (3, 9)
    assert _check_layout(layout) == [1] * 9


def test_layout_is_frozen_data():
    layout = plan_layout(8)
    assert layout == Layout(8, 2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.num_servers = 3  # type: ignore[misc]


def test_group_of_a_server_rank_is_an_error():
    layout = plan_layout(8, 2, 2)
    with pytest.raises(TopologyError, match="rank 6 is a server, not a worker"):
        layout.group_of(6)


def test_describe():
    assert plan_layout(8, 2, 2).describe() == "8 ranks: 2 servers, 2 groups of [3, 3] workers"
    assert plan_layout(9, 2, 2).describe() == "9 ranks: 2 servers, 2 groups of [4, 3] workers"
    assert plan_layout(4, 1, 1).describe() == "4 ranks: 1 server, 1 group of [3] workers"


@pytest.mark.parametrize("world", [1, 0, -3])
def test_fewer_than_two_ranks(world):
    with pytest.raises(TopologyError) as error:
        plan_layout(world)
    message = str(error.value)
    assert f"needs at least 2 MPI ranks (1 server + 1 worker), got {world}" in message
    assert "mpiexec -n" in message  # tells how to run it


@pytest.mark.parametrize("world, servers", [(4, 4), (4, 5), (2, 2), (32, 32)])
def test_servers_must_leave_workers(world, servers):
    with pytest.raises(TopologyError, match=f"cluster.servers = {servers} leaves no worker ranks in a world of {world}"):
        plan_layout(world, servers)


@pytest.mark.parametrize("world, servers, groups", [(4, 1, 4), (8, 2, 7), (2, 1, 2), (32, 0, 25)])
def test_more_groups_than_workers(world, servers, groups):
    layout_servers = servers or max(1, world // 4)
    workers = world - layout_servers
    with pytest.raises(TopologyError) as error:
        plan_layout(world, servers, groups)
    assert str(error.value) == (f"cluster.groups = {groups} is more than the {workers} worker ranks "
                                f"({world} ranks - {layout_servers} servers)")


def test_topology_errors_are_hybrid_ps_errors():
    assert issubclass(TopologyError, HybridPSError)

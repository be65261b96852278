"""Layout planning (pure; build_topology itself is tested under MPI in tests/mpi)."""

from __future__ import annotations

import pytest

from hybrid_ps.errors import TopologyError
from hybrid_ps.topology import plan_layout


@pytest.mark.parametrize("world, servers, groups", [(2, 1, 1), (4, 1, 1), (8, 2, 2), (32, 8, 8)])
def test_defaults(world, servers, groups):
    layout = plan_layout(world)
    assert (layout.num_servers, layout.num_groups) == (servers, groups)


@pytest.mark.parametrize("world, servers, groups", [(8, 2, 2), (32, 8, 8), (32, 4, 5), (7, 1, 6), (5, 2, 1)])
def test_groups_are_contiguous_balanced_and_cover_every_worker(world, servers, groups):
    layout = plan_layout(world, servers, groups)
    covered = []
    sizes = []
    for group in range(groups):
        start, stop = layout.group_bounds(group)
        covered.extend(range(start, stop))
        sizes.append(stop - start)
        assert all(layout.group_of(rank) == group for rank in range(start, stop))
    assert covered == list(range(world - servers))
    assert max(sizes) - min(sizes) <= 1
    assert [layout.is_server(r) for r in range(world)] == [False] * (world - servers) + [True] * servers
    assert [layout.server_index(r) for r in range(world - servers, world)] == list(range(servers))


@pytest.mark.parametrize(
    "world, servers, groups, message",
    [
        (1, 0, 0, "needs at least 2 MPI ranks"),
        (4, 4, 0, "cluster.servers = 4 leaves no worker ranks"),
        (4, 1, 4, "cluster.groups = 4 is more than the 3 worker ranks"),
    ],
)
def test_bad_layouts(world, servers, groups, message):
    with pytest.raises(TopologyError, match=message):
        plan_layout(world, servers, groups)


def test_describe():
    assert plan_layout(8, 2, 2).describe() == "8 ranks: 2 servers, 2 groups of [3, 3] workers"

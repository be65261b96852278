"""Roles from the MPI world: server ranks, worker groups of contiguous ranks, leaders, endpoints.

World ranks ``0 .. W-1`` are workers, split into ``G`` groups of contiguous
ranks (so a group tends to share a node); ranks ``W .. N-1`` host the PS
shards. Rank 0 of each group is its leader. With a PS tier of its own
(``hybrid_ps.serve``) every rank is a worker, and the job's groups take the
tier's group slots from ``first_group`` on. The functions take a communicator
object and never import mpi4py themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import TopologyError

__all__ = ["Layout", "plan_layout", "Topology", "build_topology", "exchange_endpoints"]


@dataclass(frozen=True)
class Layout:
    """How ``world_size`` ranks are divided (pure data, no MPI)."""

    world_size: int
    num_servers: int
    num_groups: int
    first_group: int = 0  # the id of this job's first group (a PS tier of its own serves several jobs)

    @property
    def num_workers(self) -> int:
        """Ranks that train (all but the servers)."""
        return self.world_size - self.num_servers

    def group_bounds(self, group: int) -> tuple[int, int]:
        """First world rank and one past the last of ``group``."""
        base, extra = divmod(self.num_workers, self.num_groups)
        start = group * base + min(group, extra)
        return start, start + base + (1 if group < extra else 0)

    def group_of(self, rank: int) -> int:
        """The index (from 0, before ``first_group``) of the group of worker ``rank``."""
        for group in range(self.num_groups):
            start, stop = self.group_bounds(group)
            if start <= rank < stop:
                return group
        raise TopologyError(f"rank {rank} is a server, not a worker")

    def server_index(self, rank: int) -> int:
        """The shard id hosted by server ``rank``."""
        return rank - self.num_workers

    def is_server(self, rank: int) -> bool:
        """Whether ``rank`` hosts a PS shard."""
        return rank >= self.num_workers

    def describe(self) -> str:
        """One line, e.g. ``8 ranks: 2 servers, 2 groups of [3, 3] workers``."""
        sizes = [stop - start for start, stop in map(self.group_bounds, range(self.num_groups))]
        servers = f"{self.num_servers} server{'s' if self.num_servers != 1 else ''}"
        groups = f"{self.num_groups} group{'s' if self.num_groups != 1 else ''}"
        if not self.num_servers:
            first, last = self.first_group, self.first_group + self.num_groups - 1
            slots = f"group {first}" if first == last else f"groups {first}-{last}"
            return f"{self.world_size} ranks: {groups} of {sizes} workers ({slots} of a separate PS tier)"
        return f"{self.world_size} ranks: {servers}, {groups} of {sizes} workers"


def plan_layout(world_size: int, servers: int = 0, groups: int = 0, first_group: int | None = None) -> Layout:
    """Choose servers and groups for a world (0 = automatic), or explain why it can't work.

    Defaults: ``servers = max(1, N // 4)``, ``groups = max(1, workers // 3)``.
    With ``first_group`` (a PS tier of its own) the world has no server ranks and its
    groups are the tier's group slots ``first_group, first_group + 1, ...``.

    Raises:
        TopologyError: fewer than 2 ranks, no workers left, or more groups than workers.
    """
    if first_group is not None:
        num_groups = groups or max(1, world_size // 3)
        if num_groups > world_size:
            raise TopologyError(f"cluster.groups = {num_groups} is more than the {world_size} ranks")
        return Layout(world_size, 0, num_groups, first_group)
    if world_size < 2:
        raise TopologyError(
            f"hybrid_ps needs at least 2 MPI ranks (1 server + 1 worker), got {world_size}; "
            "run it as: mpiexec -n 8 python -m hybrid_ps.train"
        )
    num_servers = servers or max(1, world_size // 4)
    if num_servers >= world_size:
        raise TopologyError(
            f"cluster.servers = {num_servers} leaves no worker ranks in a world of {world_size}"
        )
    num_workers = world_size - num_servers
    num_groups = groups or max(1, num_workers // 3)
    if num_groups > num_workers:
        raise TopologyError(
            f"cluster.groups = {num_groups} is more than the {num_workers} worker ranks "
            f"({world_size} ranks - {num_servers} servers)"
        )
    return Layout(world_size, num_servers, num_groups)


@dataclass
class Topology:
    """This rank's place in the job."""

    layout: Layout
    world: Any
    rank: int
    role: str  # "server" or "worker"
    group: int = -1  # worker group id, or -1 for servers
    group_comm: Any = None  # the group's communicator (workers only)
    shard_id: int = -1  # hosted shard id, or -1 for workers
    endpoints: tuple[str, ...] = ()

    @property
    def is_leader(self) -> bool:
        """Whether this rank is rank 0 of its worker group."""
        return self.role == "worker" and self.group_comm.Get_rank() == 0

    @property
    def group_rank(self) -> int:
        """Rank inside the group (-1 for servers)."""
        return self.group_comm.Get_rank() if self.group_comm is not None else -1

    @property
    def label(self) -> str:
        """Log prefix, e.g. ``server 1`` or ``worker 0/2``."""
        if self.role == "server":
            return f"server {self.shard_id}"
        return f"worker {self.group}/{self.group_rank}"


def build_topology(world: Any, servers: int = 0, groups: int = 0, first_group: int | None = None) -> Topology:
    """Split ``world`` (an mpi4py communicator) into servers and worker groups (see ``plan_layout``).

    Collective over ``world``. Servers get a communicator of their own.
    """
    layout = plan_layout(world.Get_size(), servers, groups, first_group)
    rank = world.Get_rank()
    if layout.is_server(rank):
        comm = world.Split(layout.num_groups, rank)
        comm.Free()
        return Topology(layout, world, rank, "server", shard_id=layout.server_index(rank))
    group = layout.group_of(rank)
    comm = world.Split(group, rank)
    return Topology(layout, world, rank, "worker", group=layout.first_group + group, group_comm=comm)


def exchange_endpoints(topology: Topology, endpoint: str | None) -> tuple[str, ...]:
    """All-gather each server's ZeroMQ endpoint over the world; returns them by shard id.

    Collective over the world communicator (bootstrap only, so pickling is fine).
    """
    gathered = topology.world.allgather(endpoint)
    endpoints = tuple(e for e in gathered[topology.layout.num_workers :])
    if any(e is None for e in endpoints):
        raise TopologyError("a server rank did not publish its endpoint")
    topology.endpoints = endpoints
    return endpoints

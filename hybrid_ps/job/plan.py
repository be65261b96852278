"""Planning a job: where the shards are (its own server ranks, or a tier) and how the world splits."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..errors import TopologyError
from ..placement.replicas import default_replication
from ..tier import TierInfo, adopt_tier_settings, read_tier_file
from .topology import Layout, Topology, plan_layout

__all__ = ["JobPlan", "plan_job"]


@dataclass
class JobPlan:
    """Where the shards are and how the world splits: this job's own server ranks, or a tier of its own."""

    layout: Layout
    tier: TierInfo | None
    shard_ids: list[int]
    num_slots: int  # group slots of the vector clock (the tier's, or this job's groups)
    replication: int

    def data_position(self, topology: Topology) -> tuple[int, int]:
        """``(position, count)`` of this rank's data part: with a tier, by group slot (equal group sizes)."""
        if self.tier is None:
            return topology.rank, self.layout.num_workers
        size = topology.group_comm.Get_size()
        return topology.group * size + topology.group_rank, self.num_slots * size


def plan_job(config: Config, world_size: int) -> JobPlan:
    """Read the tier file (adopting its shared settings into ``config``) and plan the layout.

    Raises:
        ConfigError, TopologyError: a bad tier file, or a world that does not fit (named).
    """
    tier = read_tier_file(config.cluster.ps_tier) if config.cluster.ps_tier else None
    if tier is None:
        layout = plan_layout(world_size, config.cluster.servers, config.cluster.groups)
        return JobPlan(layout, None, list(range(layout.num_servers)), layout.num_groups,
                       default_replication(config.cluster.replication, layout.num_servers))
    adopt_tier_settings(config, tier)
    layout = plan_layout(world_size, 0, config.cluster.groups, config.cluster.first_group)
    if layout.first_group + layout.num_groups > tier.num_groups:
        raise TopologyError(f"cluster.first_group = {layout.first_group} with {layout.num_groups} group(s) needs "
                            f"group slots up to {layout.first_group + layout.num_groups - 1}; the tier "
                            f"{config.cluster.ps_tier} has {tier.num_groups}")
    return JobPlan(layout, tier, sorted(tier.endpoints), tier.num_groups,
                   default_replication(config.cluster.replication, len(tier.endpoints)))

"""hybrid_ps.tier (tier files) and planning a job that joins a PS tier of its own (hybrid_ps.job.plan_job)."""

from __future__ import annotations

import math
import stat

import pytest

from hybrid_ps.config import Config
from hybrid_ps.errors import ConfigError, TopologyError
from hybrid_ps.job import plan_job
from hybrid_ps.tier import (
    TierInfo,
    adopt_tier_settings,
    read_tier_file,
    write_tier_file,
)


def _tier(tmp_path, groups: int = 4, **cluster) -> str:
    config = Config()
    config.cluster.staleness, config.cluster.replication = math.inf, 2
    for key, value in cluster.items():
        setattr(config.cluster, key, value)
    path = tmp_path / "tier" / "tier.json"
    endpoints = {0: "tcp://127.0.0.1:5001", 1: "tcp://127.0.0.1:5002", 2: "tcp://127.0.0.1:5003"}
    write_tier_file(path, TierInfo(endpoints, groups,
                                   config.to_json_dict(), str(tmp_path / "ckpt")))
    return str(path)


def test_a_tier_file_round_trips_and_only_its_owner_can_read_it(tmp_path):
    path = _tier(tmp_path)
    tier = read_tier_file(path)
    assert tier.endpoints[2] == "tcp://127.0.0.1:5003" and tier.num_groups == 4
    assert stat.S_IMODE((tmp_path / "tier" / "tier.json").stat().st_mode) == 0o600
    assert not list((tmp_path / "tier").glob("*.tmp"))


@pytest.mark.parametrize("text, message", [
    ("{", "not a hybrid_ps tier file"),
    ('{"kind": "something else"}', "kind is 'something else'"),
    ('{"kind": "hybrid_ps tier", "endpoints": {}}', "'num_groups'"),
    ('{"kind": "hybrid_ps tier", "endpoints": {}, "num_groups": 1, "config": {}, "checkpoint_root": "x"}',
     "needs endpoints and group slots"),
])
def test_bad_tier_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "tier.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        read_tier_file(path)
    assert str(error.value).startswith(f"{path}: ")
    with pytest.raises(ConfigError, match="cannot read the tier file"):
        read_tier_file(tmp_path / "missing.json")


def test_a_worker_job_adopts_the_settings_shards_and_leaders_share(tmp_path):
    tier = read_tier_file(_tier(tmp_path, vnodes=32))
    config = Config()
    adopt_tier_settings(config, tier)
    assert math.isinf(config.cluster.staleness) and config.cluster.replication == 2 and config.cluster.vnodes == 32
    assert config.cluster.servers == 3 and config.checkpoint_root == str(tmp_path / "ckpt")


def test_planning_a_job_on_a_tier_uses_every_rank_as_a_worker_from_its_first_group(tmp_path):
    config = Config()
    config.cluster.ps_tier, config.cluster.groups, config.cluster.first_group = _tier(tmp_path), 2, 1
    plan = plan_job(config, 6)
    assert (plan.layout.num_servers, plan.layout.num_groups, plan.layout.first_group) == (0, 2, 1)
    assert (plan.shard_ids, plan.num_slots, plan.replication) == ([0, 1, 2], 4, 2)
    assert plan.layout.describe() == "6 ranks: 2 groups of [3, 3] workers (groups 1-2 of a separate PS tier)"
    config.cluster.first_group = 3
    with pytest.raises(TopologyError, match="needs group slots up to 4; the tier .* has 4"):
        plan_job(config, 6)


def test_planning_a_job_with_its_own_servers_is_unchanged():
    plan = plan_job(Config(), 8)
    assert (plan.layout.num_servers, plan.shard_ids, plan.num_slots, plan.replication, plan.tier) == (
        2, [0, 1], 2, 2, None)

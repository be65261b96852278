"""Shards joining and leaving a running PS tier (hybrid_ps.serve + hybrid_ps.tierctl): only the ranges the ring
moves travel, and no update is lost; a tier shard that dies is reported by the tier, and leaders fail over at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from hybrid_ps import checkpoint, tierctl
from hybrid_ps.config import Config
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.serve import TierSupervisor
from hybrid_ps.tier import TierView, read_tier_file
from hybrid_ps.worker.client import Announcement, PSClient

pytestmark = pytest.mark.fault

UNIVERSE = np.arange(20_000, dtype=np.uint64)


def _tier(tmp_path, servers: int, replication: int, restarts: int = 3) -> tuple[TierSupervisor, threading.Thread]:
    config = Config()
    config.cluster.servers, config.cluster.groups, config.cluster.replication = servers, 1, replication
    config.cluster.shard_restarts = restarts
    config.cluster.staleness, config.cluster.bind_host = float("inf"), "127.0.0.1"
    config.optimizer.name, config.optimizer.learning_rate = "sgd", 1.0
    config.train.checkpoint_dir = str(tmp_path / "checkpoints")
    tier = TierSupervisor(config.validate(), str(tmp_path / "tier.json"))
    runner = threading.Thread(target=tier.run, daemon=True)
    runner.start()
    return tier, runner


def _pushed_once(tier_file, context: zmq.Context) -> tuple[PSClient, int]:
    """A leader of group 0 of the tier (a 25 s failover timeout: it must fail over on the tier's word), joined,
    that pushed -1 to every key of UNIVERSE; and its clock."""
    client = PSClient(tier_file.endpoints, 0, 1, HashRing(sorted(tier_file.endpoints)), context=context,
                      replication=2, timeout=30, failover_timeout=25, curve_keys=tier_file.curve_keys)
    clock = client.join()
    client.wait(client.push(UNIVERSE, np.ones((UNIVERSE.size, 1), np.float32), clock))
    return client, clock


@pytest.mark.parametrize("replication", [1, 2])
def test_shards_join_and_leave_while_a_group_trains_and_no_update_is_lost(tmp_path, capsys, replication):
    tier, runner = _tier(tmp_path, 3, replication)
    tier_file = str(tmp_path / "tier.json")
    view = lambda: TierView(read_tier_file(tier_file).endpoints, replication)  # noqa: E731
    context = zmq.Context()
    client = PSClient(view().endpoints, 0, 1, HashRing(view().shard_ids), context=context, replication=replication,
                      timeout=30, curve_keys=read_tier_file(tier_file).curve_keys)
    rng = np.random.default_rng(replication)
    acked = np.zeros(UNIVERSE.size, dtype=np.int64)
    changes = {10: ["add"], 25: ["remove", "1"], 40: ["add"]}
    clock = client.join()
    try:
        client.wait(client.push(UNIVERSE, np.zeros((UNIVERSE.size, 1), np.float32), clock))  # every key exists
        for step in range(60):
            if client.announced(clock) is Announcement.RESHARD:  # what GroupTrainer does at the announced clock
                assert client.checkpoint(clock) == clock
                client.reshard(clock, view())
            keys = np.sort(rng.choice(UNIVERSE, 2000, replace=False))
            client.wait(client.push(keys, np.ones((keys.size, 1), np.float32), clock))
            acked[keys] += 1
            clock += 1
            client.wait(client.clock(clock))
            if step in changes:
                capsys.readouterr()
                assert tierctl.main(["--tier-file", tier_file, *changes[step]]) == 0
                assert '"ok": true' in capsys.readouterr().out
        assert client.placement.ring.shard_ids.tolist() == [0, 2, 3, 4]
        applied = -client.wait(client.pull(UNIVERSE, clock))[:, 0]
        assert np.array_equal(applied, acked), "every acknowledged update is there exactly once"
        client.bye()
    finally:
        client.close()
        context.term()
    runner.join(timeout=30)
    assert not runner.is_alive() and tier.codes == {0: 0, 1: 0, 2: 0, 3: 0, 4: 0}
    tier.close()


def _moved_in(tier_log: str) -> int:
    return sum(int(n) for n in re.findall(r"now one of shards \[[0-9, ]+\]: (\d+) keys moved here", tier_log))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_shard_joins_and_another_leaves_while_two_group_jobs_train(start_job, seed):
    rng = np.random.default_rng(seed)
    add_at, remove_at = int(rng.integers(20, 80)), int(rng.integers(150, 250))
    tier, tier_file = start_job.tier("--servers", "2", "--groups", "2", "--group-timeout", "30")
    jobs = [start_job(3, "--ps-tier", tier_file, "--groups", "1", "--first-group", str(g), "--epochs", "4",
                      name=f"group{g}") for g in (0, 1)]
    jobs[0].reached_step(add_at)
    added = subprocess.run([sys.executable, "-m", "hybrid_ps.tierctl", "--tier-file", tier_file, "add"],
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    jobs[0].wait_for(lambda: "shard 2: now one of shards" in tier.stderr, "the new shard taking its ranges")
    moved_on_join = _moved_in(tier.stderr)
    jobs[0].reached_step(remove_at)
    removed = subprocess.run([sys.executable, "-m", "hybrid_ps.tierctl", "--tier-file", tier_file, "remove", "0"],
                             capture_output=True, text=True, timeout=60)
    assert removed.returncode == 0, removed.stderr
    for job in jobs:
        assert job.finish() == 0, job.stderr[-3000:] + tier.stderr[-5000:]
    assert tier.finish(timeout=60) == 0, tier.stderr[-3000:]
    assert "shard 0: the tier no longer has this shard (now [1, 2]): leaving" in tier.stderr
    info = checkpoint.checkpoint_info(tier.output_dir / "checkpoints")
    total = info["total_keys"]
    share = moved_on_join / (2 * total)  # replication 2: the new shard takes 2 of every 3 ranges' replicas
    print(f"add at step {add_at}: {moved_on_join} of {2 * total} key replicas moved ({share:.3f}, ring 1/3); "
          f"remove at step {remove_at}; final logloss {[j.summary['final_logloss'] for j in jobs]}")
    assert 0.25 < share < 0.42
    assert info["shards"] == ["shard-1", "shard-2"]
    for job in jobs:
        assert job.summary["samples"] == 400_000 and job.summary["final_logloss"] < 0.37


def test_a_tier_shard_that_dies_is_reported_by_the_tier_a_leader_fails_over_at_once_and_the_tier_rebuilds_it(
        tmp_path):
    tier, runner = _tier(tmp_path, 3, 2)
    tier_file = read_tier_file(str(tmp_path / "tier.json"))
    context = zmq.Context()
    client, clock = _pushed_once(tier_file, context)
    try:
        os.kill(tier.shards[1].pid, signal.SIGKILL)
        started = time.monotonic()
        values = client.wait(client.pull(UNIVERSE, clock))  # a third of it waited on the dead shard
        assert time.monotonic() - started < 10, "failed over on the tier's word, not after the 25 s timeout"
        np.testing.assert_array_equal(values, -np.ones((UNIVERSE.size, 1), np.float32))
        assert [shard for shard, _ in client.channel.failovers] == [1]
        deadline, pushes = time.monotonic() + 30, 1
        while client.placement.rejoined != (1,):  # the tier restarts it, the others fill it, the leader is told
            assert time.monotonic() < deadline, "shard 1 was not restarted and filled"
            clock, pushes = clock + 1, pushes + 1
            client.wait(client.push(UNIVERSE, np.ones((UNIVERSE.size, 1), np.float32), clock))
        restarted = read_tier_file(str(tmp_path / "tier.json")).endpoints[1]
        assert restarted != tier_file.endpoints[1] and restarted == client.channel.links.endpoints[1]
        np.testing.assert_array_equal(client.wait(client.pull(UNIVERSE, clock))[:, 0], -float(pushes))
        client.bye()
    finally:
        client.close()
        context.term()
    runner.join(timeout=10)  # a shard that stops answers the REJOIN it still owed: the tier does not wait it out
    assert not runner.is_alive() and tier.codes == {0: 0, 1: 0, 2: 0}, tier.codes
    tier.close()


def test_a_tier_with_no_restart_left_retires_a_dead_shard_and_survives_a_second_death(tmp_path):
    tier, runner = _tier(tmp_path, 3, 2, restarts=0)
    context = zmq.Context()
    client, clock = _pushed_once(read_tier_file(str(tmp_path / "tier.json")), context)
    try:
        os.kill(tier.shards[1].pid, signal.SIGKILL)
        deadline, pushes = time.monotonic() + 30, 1
        while client.placement.retired != (1,):  # the tier retires it, the others re-replicate its ranges
            assert time.monotonic() < deadline, "shard 1 was not retired"
            clock, pushes = clock + 1, pushes + 1
            client.wait(client.push(UNIVERSE, np.ones((UNIVERSE.size, 1), np.float32), clock))
        while 1 not in tier.retired:  # the new backups are filled
            assert time.monotonic() < deadline, "shard 1's ranges were not re-replicated"
            time.sleep(0.05)
        assert sorted(tier.retired[1]) == [0, 2] and sum(tier.retired[1].values()) > 0
        os.kill(tier.shards[2].pid, signal.SIGKILL)  # every range of shards 1 and 2 only lives on shard 0 now
        np.testing.assert_array_equal(client.wait(client.pull(UNIVERSE, clock))[:, 0], -float(pushes))
        assert sorted(client.placement.dead) == [1, 2]
        client.bye()
    finally:
        client.close()
        context.term()
    runner.join(timeout=10)
    assert not runner.is_alive() and tier.codes[0] == 0 and tier.codes[1] != 0 and tier.codes[2] != 0, tier.codes
    tier.close()

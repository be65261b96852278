"""Whole training jobs that lose a PS shard: replicated ones finish as if nothing happened; unreplicated ones
stop with a clear message and resume from their last checkpoint."""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np
import pytest
from fault_harness import RunningJob

from hybrid_ps import checkpoint

pytestmark = pytest.mark.fault

LAYOUT = ["--servers", "3", "--groups", "2", "--failover-timeout", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """The same job without a failure: its summary and the key count of its final checkpoint."""
    job = RunningJob(9, tmp_path_factory.mktemp("undisturbed"), *LAYOUT, "--replication", "2")
    assert job.finish() == 0, job.stderr[-3000:]
    return job.summary, checkpoint.checkpoint_info(job.output_dir / "checkpoints")["total_keys"]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_shard_killed_mid_training_does_not_change_the_result(start_job, undisturbed, seed):
    rng = np.random.default_rng(seed)
    victim, at_step = int(rng.integers(0, 3)), int(rng.integers(20, 120))
    # a failover timeout longer than the whole job: the leaders must fail over on the supervisor's notice
    job = start_job(9, *LAYOUT, "--replication", "2", "--failover-timeout", "120")
    pid = job.shard_pid(victim)
    job.reached_step(at_step)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    assert job.finish() == 0, job.stderr[-3000:]
    assert time.monotonic() - killed < 60, "the leaders waited for their heartbeat timeout"
    assert re.search(rf"shard \d says shard {victim} \(tcp://[^)]*\) died", job.stderr), job.stderr[-3000:]
    summary, keys = undisturbed
    print(f"shard {victim} killed at step {at_step}: final logloss {job.summary['final_logloss']:.4f} vs "
          f"{summary['final_logloss']:.4f} undisturbed; {job.summary['samples_per_s']:.0f} vs "
          f"{summary['samples_per_s']:.0f} samples/s")
    assert f"shard {victim} (pid {pid}) died: killed by SIGKILL" in job.stderr
    assert "it is dead to this job; its backups take over" in job.stderr
    assert job.summary["samples"] == summary["samples"]
    assert abs(job.summary["final_logloss"] - summary["final_logloss"]) <= 0.01 * summary["final_logloss"]
    info = checkpoint.checkpoint_info(job.output_dir / "checkpoints")
    assert info["total_keys"] == keys, "the final checkpoint holds every key, written by the acting primaries"
    assert re.search(rf"shard {victim} rebuilt: \d+ rows from shard\(s\)", job.stderr), job.stderr[-3000:]


def test_with_no_restart_left_a_dead_shard_is_retired_and_a_second_death_loses_nothing(start_job, undisturbed):
    """``--shard-restarts 0``: each dead shard is retired, its ranges re-replicated on the others; two deaths that
    3 shards at replication 2 could not survive otherwise, and the job ends as if undisturbed."""
    rng = np.random.default_rng(int(time.time()))
    first, second = (int(v) for v in rng.permutation(3)[:2])
    job = start_job(9, *LAYOUT, "--replication", "2", "--shard-restarts", "0")
    pids = job.shard_pid(first), job.shard_pid(second)
    at_step = int(rng.integers(20, 60))
    job.reached_step(at_step)
    os.kill(pids[0], signal.SIGKILL)
    job.wait_for(lambda: f"shard {first} retired: its ranges re-replicated" in job.stderr, f"shard {first} retired")
    job.reached_step(at_step + 40)
    os.kill(pids[1], signal.SIGKILL)
    assert job.finish() == 0, job.stderr[-3000:]
    summary, keys = undisturbed
    retired = re.search(rf"shard {first} retired: its ranges re-replicated on the other shards, (\d+) rows from "
                        rf"shard\(s\) \[[\d, ]+\] in ([\d.]+)s", job.stderr)
    assert retired, job.stderr[-3000:]
    print(f"shard {first} killed at step {at_step} and retired ({retired[1]} rows re-replicated in {retired[2]} s), "
          f"shard {second} killed 40 steps later: final logloss {job.summary['final_logloss']:.4f} vs "
          f"{summary['final_logloss']:.4f} undisturbed")
    assert "every replica of" not in job.stderr and "restarted as pid" not in job.stderr
    assert f"says shard {first} is retired" in job.stderr, "the leaders were told"
    assert job.summary["samples"] == summary["samples"]
    assert abs(job.summary["final_logloss"] - summary["final_logloss"]) <= 0.01 * summary["final_logloss"]
    assert checkpoint.checkpoint_info(job.output_dir / "checkpoints")["total_keys"] == keys


def test_losing_the_only_replica_stops_the_job_and_resume_latest_finishes_it(start_job, tmp_path):
    root = tmp_path / "checkpoints"
    args = [*LAYOUT, "--replication", "1", "--checkpoint-every", "20", "--checkpoint-dir", str(root), "--epochs", "4"]
    job = start_job(9, *args, name="first")
    pid = job.shard_pid(1)
    job.wait_for(lambda: (root / "latest").exists(), "a checkpoint")
    os.kill(pid, signal.SIGKILL)
    assert job.finish() != 0
    assert "every replica of" in job.stderr and "restart the job with --resume latest" in job.stderr
    cut = checkpoint.checkpoint_info(root)["clock"]
    resumed = start_job(9, *args, "--resume", "latest", name="second")
    assert resumed.finish() == 0, resumed.stderr[-3000:]
    assert f"at clocks [{cut}, {cut}]" in resumed.stderr
    assert resumed.summary["samples"] == 4 * 200_000 - 2 * cut * 3 * 256  # exactly what the cut had not trained
    assert resumed.summary["final_logloss"] < 0.40


@pytest.mark.chaos
def test_a_job_whose_shards_are_killed_and_frozen_at_random_ends_as_if_undisturbed(start_job, undisturbed):
    """Shards killed one after another (two deaths that 3 shards at replication 2 could not survive without a
    rebuild between them), one frozen (SIGSTOP past the failover timeout, then SIGCONT: fenced and restarted), at
    random steps; the same samples, logloss within 1% of the undisturbed job."""
    rng = np.random.default_rng(int(time.time()))
    job = start_job(9, *LAYOUT, "--replication", "2")
    step, done = 10, []
    rebuilds = lambda: len(re.findall(r"shard \d rebuilt: \d+ rows", job.stderr))  # noqa: E731
    for kind in ("kill", "freeze", "kill"):  # the job is ~260 steps: each rebuilt before the next, but the last
        step += int(rng.integers(15, 30))
        victim = int(rng.integers(0, 3))
        pid = job.shard_pid(victim)
        job.reached_step(step)
        if kind == "kill":
            os.kill(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(3.0)  # past the 2 s failover timeout: the leaders evict it, it fences itself on waking
            os.kill(pid, signal.SIGCONT)
        done.append(f"{kind} shard {victim} at step {step}")
        if len(done) < 3:
            job.wait_for(lambda count=len(done): rebuilds() >= count, f"shard {victim} rebuilt after the {kind}")
    assert job.finish() == 0, job.stderr[-3000:]
    summary, keys = undisturbed
    print(f"{', '.join(done)}: final logloss {job.summary['final_logloss']:.4f} vs {summary['final_logloss']:.4f} "
          f"undisturbed; {job.summary['samples_per_s']:.0f} vs {summary['samples_per_s']:.0f} samples/s")
    assert "fenced" in job.stderr and "every replica of" not in job.stderr
    assert rebuilds() >= 2, "each shard was rebuilt before the next event"
    assert job.summary["samples"] == summary["samples"]
    assert abs(job.summary["final_logloss"] - summary["final_logloss"]) <= 0.01 * summary["final_logloss"]
    assert checkpoint.checkpoint_info(job.output_dir / "checkpoints")["total_keys"] == keys

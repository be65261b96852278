"""A training job whose leaders reach the shards through the simulated network (``comm.net_*``)."""

from __future__ import annotations

import os
import re

import pytest

pytestmark = pytest.mark.e2e


def test_a_job_through_the_simulated_network_finishes_and_reports_its_traffic(run_job):
    job = run_job(5, "--rows", "20000", "--features", "2000", "--nnz-per-row", "10", "--epochs", "1",
                  "--servers", "1", "--groups", "2", "--checkpoint", "false",
                  "--net-latency-ms", "1", "--net-bandwidth-gbit", "1", timeout=180)
    assert job.returncode == 0, job.stderr[-3000:]
    summary = job.summary
    network = summary["simulated_network"]
    assert (network["latency_ms"], network["bandwidth_gbit"]) == (1.0, 1.0)
    assert network["connections"] >= 2  # each leader's connection to the one shard
    steps = summary["steps_per_group"] * 2
    for way, sent in (("up", summary["ps_bytes_sent_per_step"]), ("down", summary["ps_bytes_received_per_step"])):
        relayed = network[way]
        # the relay sees the frames plus ZeroMQ's framing, CURVE's handshake and boxes, and heartbeats
        assert sent * steps <= relayed["bytes"] < 2 * sent * steps + 1_000_000
        assert relayed["delay_seconds"] >= relayed["chunks"] * 0.001
        assert relayed["mean_delay_ms"] >= 1.0
        assert relayed["serialization_seconds"] == pytest.approx(relayed["bytes"] * 8 / 1e9, rel=1e-6)
    assert summary["samples"] == 20000 and summary["final_logloss"] < 0.69
    pids = [int(pid) for pid in re.findall(r"simulated network: PS traffic through a relay \(pid (\d+)\)", job.stderr)]
    assert len(pids) == 2, job.stderr[-3000:]  # one relay per leader
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)  # and both stopped with their leaders


def test_the_default_job_has_no_simulated_network(run_job):
    job = run_job(4, "--rows", "5000", "--features", "500", "--epochs", "1", "--checkpoint", "false",
                  "--final-eval", "false", timeout=120)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "simulated_network" not in job.summary and "simulated network" not in job.stderr

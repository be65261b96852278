"""Fixtures of the fault-injection tests (see fault_harness.py)."""

from __future__ import annotations

import sys

import pytest
from fault_harness import RunningJob, Tier


@pytest.fixture
def tier():
    """Start a Tier with ``tier(servers, groups, **cluster settings)``; everything is stopped afterwards."""
    started: list[Tier] = []

    def start(servers: int, groups: int = 1, **cluster) -> Tier:
        started.append(Tier(servers, groups, **cluster))
        return started[-1]

    yield start
    for t in started:
        t.close()


@pytest.fixture
def start_job(tmp_path):
    """``start_job(ranks, *args)`` starts a job in the background; each is killed at the end if still running."""
    jobs: list[RunningJob] = []

    def start(ranks: int, *args: str, name: str = "") -> RunningJob:
        jobs.append(RunningJob(ranks, tmp_path / (name or f"run-{len(jobs)}"), *args))
        return jobs[-1]

    def start_tier(*args: str, name: str = "tier") -> tuple[RunningJob, str]:
        """A PS tier of its own (``hybrid_ps.serve``); returns it and its tier file once written."""
        tier_file = tmp_path / name / "tier.json"
        command = [sys.executable, "-m", "hybrid_ps.serve", "--tier-file", str(tier_file),
                   "--checkpoint-dir", str(tmp_path / name / "checkpoints"), *args]
        jobs.append(RunningJob(0, tmp_path / name, command=command))
        jobs[-1].wait_for(tier_file.exists, "the tier file")
        return jobs[-1], str(tier_file)

    start.tier = start_tier
    yield start
    for job in jobs:
        if job.process.poll() is None:
            job.process.kill()
            job.process.wait()

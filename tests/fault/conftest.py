"""Fixtures of the fault-injection tests (see fault_harness.py)."""

from __future__ import annotations

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

    yield start
    for job in jobs:
        if job.process.poll() is None:
            job.process.kill()
            job.process.wait()

"""Helpers for end-to-end tests: whole ``mpiexec ... python -m hybrid_ps.train`` jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpi_launch.detect import (
    find_mpiexec,
    idle_friendly_environment,
    mpi_implementation,
)


@dataclass
class JobRun:
    """A finished job: exit code, output, and its metrics records."""

    returncode: int
    stdout: str
    stderr: str
    output_dir: Path

    def records(self, kind: str) -> list[dict]:
        path = self.output_dir / "metrics.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == kind]

    @property
    def summary(self) -> dict:
        found = self.records("summary")
        assert found, f"no summary record; exit {self.returncode}; stderr:\n{self.stderr[-3000:]}"
        return found[-1]


@pytest.fixture
def run_job(tmp_path):
    """Run ``hybrid_ps.train`` under mpiexec with ``ranks`` ranks; returns a JobRun."""
    mpiexec = find_mpiexec()
    env = {**os.environ, **idle_friendly_environment(mpi_implementation(mpiexec), 32)}

    def run(ranks: int, *args: str, timeout: float = 300) -> JobRun:
        output_dir = tmp_path / f"run-{ranks}-{len(list(tmp_path.iterdir()))}"
        command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "hybrid_ps.train",
                   "--output-dir", str(output_dir), "--log-interval", "1", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        return JobRun(done.returncode, done.stdout, done.stderr, output_dir)

    return run

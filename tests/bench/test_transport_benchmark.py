"""Smoke test: the PS transport benchmark runs end to end at a tiny size and ends with its ratio line (not timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_transport_benchmark(tmp_path):
    env = {**os.environ, "HYBRID_PS_BENCH_RESULTS": str(tmp_path)}
    job = subprocess.run([sys.executable, "-m", "benchmarks.transport", "--max-keys", "10000"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-3000:]
    assert job.stdout.strip().splitlines()[-1].startswith("RATIO PS transport"), job.stdout[-2000:]
    record = json.loads((tmp_path / "transport.json").read_text())
    assert record["headline"]["ratio"] > 0
    assert {(row["shards"], row["keys"]) for row in record["rows"]} == {(s, n) for s in (1, 2) for n in (1000, 10000)}

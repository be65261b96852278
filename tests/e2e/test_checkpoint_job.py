"""Train -> checkpoint -> evaluate with real mpiexec jobs and real HDF5 files."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import pytest

pytestmark = pytest.mark.e2e

DATA = ["--rows", "20000", "--features", "2000", "--nnz-per-row", "10"]


def test_train_checkpoint_evaluate(run_job):
    job = run_job(8, *DATA, "--checkpoint-every", "20", "--keep", "2")
    assert job.returncode == 0, job.stderr[-3000:]
    root = job.output_dir / "checkpoints"
    published = sorted(p.name for p in root.glob("ckpt-*"))
    assert len(published) == 2 and not list(root.glob("*.partial"))
    latest = root / (root / "latest").read_text().strip()
    with h5py.File(latest / "model.h5") as f:
        assert f["clock_table"][()].tolist() == [f.attrs["clock"]] * 2  # a consistent cut
        assert f["model/keys"].shape[0] == f.attrs["total_keys"] > 1000
    done = subprocess.run([sys.executable, "-m", "hybrid_ps.evaluate", str(root), "--data", "synthetic",
                           "--format", "json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["rows"] == 20000
    assert result["logloss"] == pytest.approx(job.summary["final_logloss"], rel=1e-4)
    assert result["accuracy"] == pytest.approx(job.summary["final_accuracy"], abs=1e-4)

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


RESUME = [*DATA, "--batch-size", "64", "--staleness", "0", "--groups", "1"]


@pytest.mark.parametrize("servers_after", [1, 2], ids=["same servers", "re-sharded to 2 servers"])
def test_resume_continues_exactly_where_the_checkpoint_left_off(run_job, tmp_path, servers_after):
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt")]
    first = run_job(4, *RESUME, *ckpt, "--max-steps", "30", "--final-eval", "false")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_job(3 + servers_after, *RESUME, *ckpt, "--servers", str(servers_after), "--max-steps", "60",
                      "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr and "at clocks [30]" in resumed.stderr
    straight = run_job(4, *RESUME, "--max-steps", "60", "--checkpoint", "false")
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert resumed.summary["samples"] == straight.summary["samples"] / 2  # only the second half was trained
    assert resumed.summary["final_logloss"] == pytest.approx(straight.summary["final_logloss"], rel=1e-5)


def test_resume_with_another_optimizer_is_refused(run_job, tmp_path):
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt")]
    assert run_job(4, *RESUME, *ckpt, "--max-steps", "5", "--final-eval", "false").returncode == 0
    job = run_job(4, *RESUME, *ckpt, "--resume", "latest", "--optimizer", "sgd", timeout=120)
    assert job.returncode != 0
    assert "trained with optimizer 'adagrad', this job uses 'sgd'" in job.stderr

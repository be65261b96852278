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


def test_preemption_signal_checkpoints_one_cut_and_resume_finishes_the_job(run_job, tmp_path):
    """SIGUSR1 to mpiexec (as Slurm sends before walltime): every shard writes the same clock, exit 0;
    the resumed job then trains exactly the rows that were left."""
    import os
    import signal
    import time

    from mpi_launch.detect import find_mpiexec

    output = tmp_path / "preempted"
    args = ["--rows", "40000", "--features", "2000", "--nnz-per-row", "10", "--epochs", "3", "--batch-size", "64",
            "--delay-group", "1", "--delay-seconds", "0.01", "--log-interval", "0.2", "--output-dir", str(output)]
    job = subprocess.Popen([find_mpiexec(), "-n", "8", sys.executable, "-m", "hybrid_ps.train", *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    metrics = output / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and '"progress"' not in (metrics.read_text() if metrics.exists() else ""):
        time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 0, stderr[-3000:]
    assert "stop requested" in stderr and "preempted: stopped at clock" in stderr
    root = output / "checkpoints"
    with h5py.File(root / (root / "latest").read_text().strip() / "model.h5") as f:
        cut = int(f.attrs["clock"])
        assert f["clock_table"][()].tolist() == [cut, cut]
    first = [json.loads(line) for line in metrics.read_text().splitlines()][-1]
    assert first["kind"] == "summary" and first["preempted"]
    assert first["samples"] < 3 * 40000

    resumed = run_job(8, *args[:-2], "--resume", "latest", "--checkpoint-dir", str(root))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at clocks [{cut}, {cut}]" in resumed.stderr
    assert first["samples"] + resumed.summary["samples"] == 3 * 40000  # nothing lost, nothing repeated
    assert resumed.summary["final_logloss"] < 0.6


def test_hdf5_tools_read_the_checkpoint(run_job):
    """The format is plain HDF5: Debian's h5ls/h5dump read model.h5 (virtual datasets, links) and shards."""
    import os
    import shutil

    if not shutil.which("h5ls"):
        if os.environ.get("HYBRID_PS_REQUIRE_HDF5_TOOLS"):
            pytest.fail("h5ls not found although HYBRID_PS_REQUIRE_HDF5_TOOLS is set (apt-get install hdf5-tools)")
        pytest.skip("hdf5-tools not installed (apt-get install hdf5-tools); CI installs it and requires it")
    job = run_job(4, "--rows", "3000", "--features", "300")
    assert job.returncode == 0, job.stderr[-3000:]
    root = job.output_dir / "checkpoints"
    ckpt = root / (root / "latest").read_text().strip()
    listing = subprocess.run(["h5ls", "-r", str(ckpt / "model.h5")], capture_output=True, text=True, check=True).stdout
    for name in ("/model/keys", "/model/values", "/shards/shard-0", "/clock_table", "/config/optimizer"):
        assert name in listing
    dump = subprocess.run(["h5dump", "-d", "/model/values", str(ckpt / "model.h5")], capture_output=True,
                          text=True, cwd=ckpt, check=True).stdout
    assert "H5T_IEEE_F32LE" in dump
    shard = subprocess.run(["h5dump", "-A", str(ckpt / "shard-0.h5")], capture_output=True, text=True, check=True)
    assert '"hybrid_ps shard"' in shard.stdout


def test_delta_checkpoints_are_the_full_ones_bit_for_bit_and_resume_and_evaluate_like_them(run_job, tmp_path):
    """The same deterministic job (one group, BSP) with full checkpoints and with deltas between full ones."""
    import numpy as np

    from hybrid_ps import checkpoint

    args = [*RESUME, "--features", "200000", "--max-steps", "65", "--checkpoint-every", "10", "--final-eval", "false",
            "--keep", "2"]  # many features: each interval touches a fraction of them
    roots = {how: tmp_path / how for how in ("full", "delta")}
    full = run_job(4, *args, "--checkpoint-dir", str(roots["full"]), "--keep", "10")
    delta = run_job(4, *args, "--checkpoint-dir", str(roots["delta"]), "--checkpoint-delta", "2")
    assert full.returncode == 0 and delta.returncode == 0, full.stderr[-2000:] + delta.stderr[-2000:]
    # cuts 10 full, 20 30 deltas, 40 full, 50 60 deltas, 65 full; --keep 2 keeps 60 and 65, and 50 and 40 for 60
    published = sorted((p.name for p in roots["delta"].glob("ckpt-*")), key=lambda n: int(n.split("-")[1]))
    assert published == ["ckpt-40", "ckpt-50", "ckpt-60", "ckpt-65"], published
    for name in published:
        infos = {how: checkpoint.checkpoint_info(roots[how] / name) for how in roots}
        assert infos["delta"]["format_version"] == (2 if name in ("ckpt-50", "ckpt-60") else 1), name
        assert infos["delta"]["total_keys"] == infos["full"]["total_keys"]
        models = {how: checkpoint.load_saved_model(roots[how] / name) for how in roots}
        np.testing.assert_array_equal(models["delta"].keys, models["full"].keys)
        assert models["delta"].values.tobytes() == models["full"].values.tobytes(), f"{name} differs"
        rows = {how: _every_row(roots[how] / name) for how in roots}
        assert rows["delta"] == rows["full"], f"{name}: optimizer state differs"
    sizes = {how: sum(p.stat().st_size for p in (roots[how] / "ckpt-60").glob("shard-*.h5")) for how in roots}
    assert sizes["delta"] < sizes["full"] / 2, sizes
    resumed = run_job(4, *args[:-2], "--checkpoint-dir", str(roots["delta"]), "--max-steps", "70", "--resume",
                      str(roots["delta"] / "ckpt-60"), "--final-eval", "false", "--checkpoint", "false")
    assert resumed.returncode == 0 and "at clocks [60]" in resumed.stderr, resumed.stderr[-3000:]
    evaluated = [json.loads(subprocess.run([sys.executable, "-m", "hybrid_ps.evaluate", str(roots[how] / "ckpt-60"),
                                            "--data", "synthetic", "--format", "json"], capture_output=True,
                                           text=True, check=True).stdout) for how in roots]
    metrics = [{k: v for k, v in e.items() if k != "checkpoint"} for e in evaluated]
    assert metrics[0] == metrics[1], "the same metrics, to the last digit"


def _every_row(directory, *more_state: str) -> bytes:
    """Every key's values and optimizer state (and ``more_state``) in a checkpoint (deltas merged), sorted by key,
    as bytes."""
    import numpy as np

    from hybrid_ps import checkpoint

    parts = list(checkpoint.restore_shard(directory, lambda keys: np.ones(keys.size, bool), "adagrad"))
    keys = np.concatenate([p.keys for p in parts])
    order = np.argsort(keys)
    columns = [np.concatenate([p.values for p in parts])] + [
        np.concatenate([p.state[name] for p in parts]) for name in ("accumulator", *more_state)]
    return keys[order].tobytes() + b"".join(column[order].tobytes() for column in columns)


def test_a_checkpoint_after_admission_and_eviction_resumes_exactly(run_job, tmp_path):
    """On a drifting id stream, with admission at 2 and eviction after 5 clocks at every cut (2 servers, so every
    key on both: the backups follow their primaries' DROPs), a job resumed from its cut at 30 holds at 40 and 60
    exactly what the uninterrupted job held: the same keys, values, optimizer state, stamps (and sketch)."""
    import shutil

    args = [*RESUME, "--features", "20000", "--drift", "0.5", "--servers", "2", "--max-steps", "60",
            "--checkpoint-every", "10", "--evict-after", "5", "--admit-after", "2", "--final-eval", "false",
            "--keep", "10"]
    straight = run_job(5, *args, "--checkpoint-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "evicted" in straight.stderr and "DROP" in straight.stderr
    resumed_root = tmp_path / "resumed"
    resumed_root.mkdir()
    shutil.copytree(tmp_path / "straight" / "ckpt-30", resumed_root / "ckpt-30")
    resumed = run_job(5, *args, "--checkpoint-dir", str(resumed_root), "--resume", str(resumed_root / "ckpt-30"))
    assert resumed.returncode == 0 and "at clocks [30]" in resumed.stderr, resumed.stderr[-3000:]
    for name in ("ckpt-40", "ckpt-60"):
        rows = {how: _every_row(root / name, "updated") for how, root in (("straight", tmp_path / "straight"),
                                                                           ("resumed", resumed_root))}
        assert rows["straight"] == rows["resumed"], f"{name} differs"
    with h5py.File(tmp_path / "straight" / "ckpt-60" / "model.h5") as f:
        held, pushed = int(f.attrs["total_keys"]), 20000 + int(40000 * 0.5)
    assert held < pushed / 4, (held, pushed)  # old ids left, new ones came

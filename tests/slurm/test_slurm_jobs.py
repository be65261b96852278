"""jobs/slurm/train.sbatch under a real Slurm: a whole run, then preemption, requeue and resume."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import h5py
import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "jobs" / "slurm" / "train.sbatch"


def _submit(slurm, tmp_path, train_args: str, *sbatch_args: str) -> tuple[int, Path, Path]:
    output_dir = tmp_path / "run"
    log = tmp_path / "job.out"
    exports = ",".join([
        "ALL", f"HYBRID_PS_PYTHON={sys.executable}", f"PYTHONPATH={REPO}", f"OUTPUT_DIR={output_dir}",
        f"TRAIN_ARGS={train_args}",
    ])
    done = slurm.run("sbatch", "--parsable", "--chdir", str(REPO), "--output", str(log), "--export", exports,
                     *sbatch_args, str(SCRIPT), timeout=400, check=False)  # --wait: the job's exit code
    assert done.stdout.strip(), f"sbatch failed: {done.stderr}"
    return int(done.stdout.strip().split(";")[0]), output_dir, log


def _latest(output_dir: Path) -> Path:
    root = output_dir / "checkpoints"
    return root / (root / "latest").read_text().strip()


def test_sbatch_trains_and_checkpoints(slurm, tmp_path):
    job, output_dir, log = _submit(slurm, tmp_path, "--rows 20000 --features 2000", "--wait")
    text = log.read_text()
    assert f"hybrid_ps: job {job} on" in text and "hybrid_ps: exit 0" in text, text[-3000:]
    assert "done: 40000 samples" in text
    assert "[worker 0/0]" in text and "[server 1]" in text
    with h5py.File(_latest(output_dir) / "model.h5") as f:
        assert f.attrs["total_keys"] > 1000


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_preemption_signal_checkpoints_requeues_and_resumes(slurm, tmp_path):
    args = ("--rows 40000 --features 2000 --epochs 5 --batch-size 64 --delay-group 1 --delay-seconds 0.03 "
            "--log-interval 0.5")
    job, output_dir, log = _submit(slurm, tmp_path, args)
    _wait_for(lambda: log.exists() and "train logloss" in log.read_text(), 120, "the job to start training")
    slurm.run("scancel", "--signal=USR1", "--batch", str(job))
    _wait_for(lambda: "requeueing job" in log.read_text(), 120, "the job to checkpoint and requeue itself")
    first_cut = int(_latest(output_dir).name.split("-")[1])

    # A requeued job waits ~120 s before it may start again. Slurm revokes the old run's credential at
    # requeue time, so a new start within the same second is refused: wait until the job is pending
    # again and 2 s have passed, then ask it to start now.
    _wait_for(lambda: slurm.run("squeue", "-h", "-j", str(job), "-o", "%T", check=False).stdout.strip() == "PENDING",
              60, "the requeued job to be pending")
    time.sleep(2)

    def restarted() -> bool:
        slurm.run("scontrol", "update", f"jobid={job}", "StartTime=now", check=False)
        return "restart 1" in log.read_text()

    _wait_for(restarted, 120, "the requeued job to start again")
    _wait_for(lambda: log.read_text().count("hybrid_ps: exit") == 2, 300, "the requeued job to finish")
    text = log.read_text()
    assert "restart 1" in text, text[-3000:]
    assert f"resuming from {output_dir}/checkpoints/ckpt-{first_cut}" in text
    assert re.search(rf"resumed \d+ keys at clocks \[{first_cut}, {first_cut}\]", text)
    assert "done:" in text and text.rstrip().endswith("hybrid_ps: exit 0")
    assert int(_latest(output_dir).name.split("-")[1]) > first_cut


def test_a_failing_rank_fails_the_slurm_job_with_its_error(slurm, tmp_path):
    bad = tmp_path / "bad.svm"
    bad.write_text("".join(f"1 {i}:1\n" for i in range(1, 300)) + "1 2:x\n" + "".join(f"0 {i}:1\n" for i in range(1, 300)))
    job, _, log = _submit(slurm, tmp_path, f"--data {bad}", "--wait")
    text = log.read_text()
    assert f"{bad}:300: value is not a number" in text, text[-3000:]
    assert re.search(r"hybrid_ps: exit [1-9]", text)
    state = slurm.run("scontrol", "show", "job", str(job), check=False).stdout
    assert "JobState=FAILED" in state or "ExitCode=0:0" not in state

"""jobs/pbs/train.pbs run as PBS would run it (no PBS server here): the environment PBS sets, a real job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_pbs_script_trains_with_the_ranks_pbs_allocated(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\n" * 4)
    env = {
        **os.environ, "PBS_JOBID": "77.pbsserver", "PBS_O_WORKDIR": str(REPO), "PBS_NODEFILE": str(nodefile),
        "HYBRID_PS_PYTHON": sys.executable, "PYTHONPATH": str(REPO), "OUTPUT_DIR": str(tmp_path / "run"),
        "TRAIN_ARGS": "--rows 8000 --features 500",
    }
    done = subprocess.run(["bash", str(REPO / "jobs" / "pbs" / "train.pbs")], capture_output=True, text=True,
                          env=env, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "mpi_launch (pbs)" in output and " -n 4 " in output
    assert "4 ranks: 1 server, 1 group of [3] workers" in output
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()

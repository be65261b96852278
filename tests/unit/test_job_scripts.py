"""The batch scripts in jobs/: shell syntax, and the scheduler directives users rely on."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

JOBS = Path(__file__).resolve().parents[2] / "jobs"
SLURM = JOBS / "slurm" / "train.sbatch"
PBS = JOBS / "pbs" / "train.pbs"


def _directives(path: Path, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in path.read_text().splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("script", [SLURM, PBS, *JOBS.glob("*.sh")], ids=lambda p: p.name)
def test_bash_syntax(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_slurm_directives():
    options = dict(re.match(r"--([\w-]+)=?(.*)", d).groups() for d in _directives(SLURM, "#SBATCH"))
    assert options["signal"] == "B:USR1@120"  # the warning reaches the batch script, which forwards it
    assert "requeue" in options and options["open-mode"] == "append"
    assert re.fullmatch(r"\d+:\d\d:\d\d", options["time"])
    assert int(options["ntasks-per-node"]) >= 2 and int(options["nodes"]) >= 1


def test_pbs_directives():
    directives = _directives(PBS, "#PBS")
    flags = {d.split()[0]: d.split(maxsplit=1)[1] for d in directives}
    assert flags["-r"] == "y" and flags["-j"] == "oe" and flags["-N"]
    resources = [d.split(maxsplit=1)[1] for d in directives if d.startswith("-l")]
    assert any(re.fullmatch(r"walltime=\d+:\d\d:\d\d", r) for r in resources)
    assert any(re.fullmatch(r"select=\d+:ncpus=\d+:mpiprocs=\d+", r) for r in resources)
    for line in PBS.read_text().splitlines():  # every directive comes before the first command
        if line.strip() and not line.startswith("#"):
            break
        assert not line.startswith("# PBS") and not line.startswith("#PBS:")


@pytest.mark.parametrize("script", [SLURM, PBS], ids=lambda p: p.name)
def test_scripts_forward_preemption_and_resume(script):
    text = script.read_text()
    assert "trap 'forward USR1' USR1" in text and "trap 'forward TERM' TERM" in text
    assert 'kill -USR1 "$launcher"' in text and "--resume latest" in text
    assert "-m mpi_launch" in text

"""mpi_launch: mpiexec resolution, implementation detection, oversubscription environment."""

from __future__ import annotations

import subprocess
import sys

from mpi_launch.detect import find_mpiexec, idle_friendly_environment, mpi_implementation


def test_override_and_the_virtualenv_mpiexec_first(monkeypatch):
    monkeypatch.setenv("HYBRID_PS_MPIEXEC", "/opt/mpi/bin/mpiexec")
    assert find_mpiexec() == "/opt/mpi/bin/mpiexec"
    monkeypatch.delenv("HYBRID_PS_MPIEXEC")
    assert find_mpiexec()  # the test environment has one (wheel or system)


def test_detects_the_installed_implementation():
    assert mpi_implementation(find_mpiexec()) in ("mpich", "openmpi")
    assert mpi_implementation("/no/such/mpiexec") == "unknown"


def test_environment_for_oversubscribed_runs():
    mpich = idle_friendly_environment("mpich", ranks=32, cores=2)
    assert mpich == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    openmpi = idle_friendly_environment("openmpi", ranks=32, cores=2)
    assert openmpi["PRTE_MCA_rmaps_default_mapping_policy"] == ":oversubscribe"
    assert openmpi["OMPI_MCA_mpi_yield_when_idle"] == "1"
    assert "PRTE_MCA_rmaps_default_mapping_policy" not in idle_friendly_environment("openmpi", ranks=2, cores=2)


def test_dry_run_prints_the_command():
    out = subprocess.run([sys.executable, "-m", "mpi_launch", "-n", "4", "--dry-run", "--", "--epochs", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert "OMP_NUM_THREADS=1" in out and " -n 4 " in out and out.strip().endswith("-m hybrid_ps.train --epochs 1")

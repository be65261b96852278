"""mpi_launch: mpiexec resolution, implementation detection, oversubscription environment."""

from __future__ import annotations

import subprocess
import sys

from mpi_launch.detect import (
    find_mpiexec,
    idle_friendly_environment,
    mpi_implementation,
)


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


def test_allocation_from_slurm_variables():
    from mpi_launch.detect import allocation, scheduler

    env = {"SLURM_JOB_ID": "42", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2"}
    assert scheduler(env) == "slurm"
    assert allocation(env) == allocation({**env, "PBS_JOBID": "ignored"})
    assert (allocation(env).ranks, allocation(env).nodes) == (16, 2)


def test_allocation_from_pbs_variables(tmp_path):
    from mpi_launch.detect import allocation

    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn1\nn2\nn2\nn2\n")
    pro = {"PBS_JOBID": "7.server", "PBS_NODEFILE": str(nodefile)}  # PBS Pro: one line per rank slot
    assert allocation(pro) == allocation(pro).__class__("pbs", 6, 2)
    torque = {"PBS_JOBID": "7.server", "PBS_NP": "12", "PBS_NUM_NODES": "3"}
    assert (allocation(torque).ranks, allocation(torque).nodes) == (12, 3)
    assert allocation({}).scheduler == "local" and allocation({}).ranks is None


def test_launch_takes_ranks_and_one_group_per_node_from_the_allocation(tmp_path):
    import os

    env = {**os.environ, "SLURM_JOB_ID": "1", "SLURM_NTASKS": "12", "SLURM_JOB_NUM_NODES": "3"}
    out = subprocess.run([sys.executable, "-m", "mpi_launch", "--dry-run", "--", "--epochs", "1"],
                         capture_output=True, text=True, check=True, env=env).stdout
    assert " -n 12 " in out and out.strip().endswith("--epochs 1 --groups 3")
    mine = subprocess.run([sys.executable, "-m", "mpi_launch", "--dry-run", "--", "--groups", "2"],
                          capture_output=True, text=True, check=True, env=env).stdout
    assert mine.strip().endswith("--groups 2")

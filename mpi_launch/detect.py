"""Find the mpiexec to use and which MPI implementation it belongs to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "find_mpiexec",
    "mpi_implementation",
    "idle_friendly_environment",
    "scheduler",
    "allocation",
    "Allocation",
]


def find_mpiexec() -> str:
    """The mpiexec next to this Python (the virtualenv's wheel), else the first on PATH.

    ``HYBRID_PS_MPIEXEC`` overrides both. A ``/usr/bin/mpiexec`` may belong to
    another MPI (or a scheduler's wrapper), so the virtualenv's comes first.
    """
    override = os.environ.get("HYBRID_PS_MPIEXEC")
    if override:
        return override
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpiexec found: pip install 'hybrid_ps[mpich]' or load your MPI module")
    return found


def mpi_implementation(mpiexec: str) -> str:
    """``"mpich"``, ``"openmpi"`` or ``"unknown"``, from ``mpiexec --version``."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "HYDRA" in out or "MPICH" in out.upper():
        return "mpich"
    if "Open MPI" in out or "OpenRTE" in out or "prte" in out.lower():
        return "openmpi"
    return "unknown"


def idle_friendly_environment(implementation: str, ranks: int, cores: int | None = None) -> dict[str, str]:
    """Environment settings for ranks that may outnumber the cores.

    - every implementation: one BLAS/OpenMP thread per rank;
    - Open MPI: run as root if we are root, allow oversubscription, yield when idle;
    - MPICH: no setting stops its busy polling; hybrid_ps itself waits on
      non-blocking requests with a sleeping backoff instead.
    """
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cores = cores or os.cpu_count() or 1
    if implementation == "openmpi":
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        if ranks > cores:
            env["PRTE_MCA_rmaps_default_mapping_policy"] = ":oversubscribe"
            env["OMPI_MCA_mpi_yield_when_idle"] = "1"
    return env


def scheduler(env: Mapping[str, str] | None = None) -> str:
    """``"slurm"``, ``"pbs"`` or ``"local"``: where this process runs, from the environment."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID"):
        return "slurm"
    if env.get("PBS_JOBID"):
        return "pbs"
    return "local"


@dataclass(frozen=True)
class Allocation:
    """What the scheduler gave the job: MPI ranks and distinct nodes (``None`` = not known)."""

    scheduler: str
    ranks: int | None
    nodes: int | None


def allocation(env: Mapping[str, str] | None = None) -> Allocation:
    """Ranks and nodes of the current allocation.

    Slurm: ``SLURM_NTASKS`` and ``SLURM_JOB_NUM_NODES``. PBS: ``PBS_NP`` (Torque)
    or the lines of ``PBS_NODEFILE`` (one per rank slot; PBS Pro), and the
    distinct hosts in it. Local: unknown.
    """
    env = os.environ if env is None else env
    kind = scheduler(env)
    if kind == "slurm":
        return Allocation(kind, _int(env.get("SLURM_NTASKS")), _int(env.get("SLURM_JOB_NUM_NODES")))
    if kind == "pbs":
        hosts: list[str] = []
        nodefile = env.get("PBS_NODEFILE")
        if nodefile and Path(nodefile).is_file():
            hosts = [line.strip() for line in Path(nodefile).read_text().splitlines() if line.strip()]
        ranks = _int(env.get("PBS_NP")) or (len(hosts) or None)
        return Allocation(kind, ranks, len(set(hosts)) or _int(env.get("PBS_NUM_NODES")))
    return Allocation(kind, None, None)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None

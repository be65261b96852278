"""A one-node Slurm cluster on localhost (munged + slurmctld + slurmd), for end-to-end job tests.

Needs Debian's slurmctld, slurmd, slurm-client and munge (``.ci/run`` installs
them) and root. Everything lives under one temporary directory; ``stop``
kills the daemons by their pid files.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["LocalSlurm", "SlurmUnavailable"]

_CONF = """\
ClusterName=hybridps
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
JobRequeue=1
MpiDefault=pmi2
ReturnToService=2
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName={host} CPUs=8 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


class SlurmUnavailable(RuntimeError):
    """The cluster could not be started (the message says why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """Start and stop a private one-node Slurm cluster under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def start(self, timeout: float = 60) -> "LocalSlurm":
        """Start munged (if needed), slurmctld and slurmd; wait until the node is idle."""
        for tool in ("munged", "slurmctld", "slurmd", "sbatch"):
            if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
                raise SlurmUnavailable(f"{tool} not installed (apt-get install slurmctld slurmd slurm-client munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("a private Slurm cluster needs root")
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        (self.root / "spool").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(_CONF.format(host=self.host, root=self.root, ctld_port=_free_port(), d_port=_free_port()))
        self._start_munge()
        started = time.monotonic()
        subprocess.run(["/usr/sbin/slurmctld", "-f", str(self.conf)], env=self.env, check=True, timeout=30)
        subprocess.run(["/usr/sbin/slurmd", "-f", str(self.conf)], env=self.env, check=True, timeout=30)
        while time.monotonic() - started < timeout:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                self.startup_seconds = time.monotonic() - started
                return self
            time.sleep(0.5)
        logs = "".join(p.read_text()[-1500:] for p in self.root.glob("*.log"))
        self.stop()
        raise SlurmUnavailable(f"node not idle after {timeout:.0f}s (sinfo says {state!r}); logs:\n{logs}")

    def _start_munge(self) -> None:
        if subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
            return
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "--create"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, timeout=30)
        for _ in range(50):
            if subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise SlurmUnavailable("munged started but 'munge -n | unmunge' fails")

    def stop(self) -> None:
        """Kill slurmd and slurmctld (munged stays: other clusters may use it)."""
        for name in ("slurmd", "slurmctld"):
            pid_file = self.root / f"{name}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(0.5)

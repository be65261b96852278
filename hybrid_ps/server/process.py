"""A PS shard as a process of its own, started and supervised by a server rank (or by ``hybrid_ps.serve``).

The supervisor starts ``python -m hybrid_ps.server`` with the shard's spec on
stdin (JSON: the job configuration and the shard's place in the tier), reads
back the endpoint the shard bound, then only waits for it (sleeping, not
spinning) and forwards preemption signals. A shard that dies (SIGKILL, out of
memory) therefore never takes the MPI job down: leaders fail over to its
backups (``hybrid_ps.placement.replicas``). The shard dies with its supervisor
(``PR_SET_PDEATHSIG``), so an aborted job leaves no shard behind, and it never
sees the MPI launcher's environment (a child importing mpi4py would fail or hang).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import checkpoint
from ..config import Config
from ..errors import HybridPSError, ShardUnavailableError
from ..net.curve import JobKeys, check_plaintext_host
from ..net.sockets import resolve_bind_host
from ..placement.replicas import default_replication
from ..placement.ring import HashRing
from ..preemption import StopRequest
from ..tables.optimizers import optimizer_from_config
from .admission import Admission
from .eviction import EvictionPolicy
from .service import ShardService
from .shard import Shard

__all__ = ["ShardSpec", "ShardProcess", "supervise", "build_service", "describe_exit", "FENCED"]

log = logging.getLogger(__name__)

_LAUNCHER_PREFIXES = ("PMI", "PMIX", "OMPI", "PRTE", "HYDRA", "MPIR", "SLURM_STEP", "I_MPI")
_STARTUP_TIMEOUT = 120.0  # seconds for a shard to bind and restore a checkpoint
_POLL_SECONDS = 0.05  # how soon a supervisor sees its shard exit (a sleeping wait: no busy polling)
FENCED = 3
"""Exit code of a shard that stopped because it was declared dead (its supervisor restarts it, as after a crash)."""


@dataclass
class ShardSpec:
    """Everything a shard process needs to know: the job configuration and its place in the tier."""

    config: Config
    shard_id: int
    shard_ids: list[int]
    num_groups: int
    width: int
    coordinator: bool = False  # picks the stop clock on its own preemption signal
    groups_present: bool = True  # False: a tier of its own, group slots absent until they JOIN
    curve_keys: JobKeys | None = None  # the job's CURVE keys (None: plain TCP)
    parent_pid: int = field(default_factory=os.getpid)
    restarted: bool = False  # a restart after a death: empty, filled by the other replicas (REJOIN)

    def to_json(self) -> str:
        """The spec as one JSON document (what the shard reads on stdin)."""
        return json.dumps({
            "config": self.config.to_json_dict(), "shard_id": self.shard_id, "shard_ids": self.shard_ids,
            "num_groups": self.num_groups, "width": self.width, "coordinator": self.coordinator,
            "groups_present": self.groups_present, "parent_pid": self.parent_pid,
            "curve_keys": self.curve_keys.to_dict() if self.curve_keys else None, "restarted": self.restarted,
        })

    @classmethod
    def from_json(cls, text: str) -> ShardSpec:
        """Parse ``to_json``'s output.

        Raises:
            ConfigError: a bad configuration value (named); KeyError/ValueError for a malformed document.
        """
        data = json.loads(text)
        return cls(Config.from_dict(data["config"]), int(data["shard_id"]), [int(s) for s in data["shard_ids"]],
                   int(data["num_groups"]), int(data["width"]), bool(data["coordinator"]),
                   bool(data["groups_present"]), JobKeys.from_dict(data["curve_keys"]) if data["curve_keys"] else None,
                   int(data["parent_pid"]), bool(data["restarted"]))

    @property
    def replication(self) -> int:
        """Replicas per key range in this tier."""
        return default_replication(self.config.cluster.replication, len(self.shard_ids))


def build_service(spec: ShardSpec, stop: StopRequest | None = None) -> ShardService:
    """The shard's service, bound and (with ``train.resume``) restored from a checkpoint."""
    config = spec.config
    optimizer = optimizer_from_config(config.optimizer)
    root = config.checkpoint_root
    ring = HashRing(spec.shard_ids, config.cluster.vnodes)
    cluster = config.cluster
    admission = None if cluster.admit_after == 1 else Admission(
        after=cluster.admit_after, sketch_bytes=int(cluster.admit_sketch_mb * (1 << 20)))

    def write_checkpoint(exported, clock, cut: int, base: int | None) -> None:
        keys, values, state = exported
        checkpoint.write_shard_file(checkpoint.partial_dir(root, cut), checkpoint.ShardState(
            shard_id=spec.shard_id, num_shards=len(spec.shard_ids), clock=cut, keys=keys, values=values,
            state=state, clock_table=clock.clocks.copy(), finished=clock.finished.copy(),
            optimizer=optimizer.name, hyperparameters=optimizer.hyperparameters(), away=clock.dropped.copy(),
            base=base, admission=admission.saved() if admission is not None else None,
        ))

    host = resolve_bind_host(config.cluster.bind_host)
    if spec.curve_keys is None:
        check_plaintext_host(host)
    eviction = EvictionPolicy(after=cluster.evict_after, below=cluster.evict_below)
    shard = Shard(spec.width, optimizer, track_changes=config.train.checkpoint_delta > 0,
                  stamped=eviction.after > 0)
    service = ShardService(
        shard, spec.shard_id, ring,
        spec.num_groups, config.cluster.staleness,
        host, max_keys=config.cluster.max_keys_per_message,
        checkpoint_writer=write_checkpoint if config.train.checkpoint else None,
        stop_request=stop if spec.coordinator else None,
        group_timeout=config.cluster.group_timeout, replication=spec.replication,
        groups_present=spec.groups_present,
        cut_reader=lambda cut, owned: checkpoint.cut_parts(checkpoint.partial_dir(root, cut), owned, optimizer.name),
        curve_keys=spec.curve_keys, restarted=spec.restarted, snapshot_checkpoints=config.train.checkpoint_snapshot,
        checkpoint_deltas=config.train.checkpoint_delta, admission=admission, eviction=eviction,
    )
    if config.train.resume and not spec.restarted:
        _restore(service, spec)
    return service


def _restore(service: ShardService, spec: ShardSpec) -> None:
    """Load every key this shard replicates (re-sharded by the current ring) and the clocks of a checkpoint."""
    path, started = spec.config.resume_path, time.monotonic()
    owned = lambda keys: service.placement.is_replica(keys, spec.shard_id)  # noqa: E731
    clocks = checkpoint.resume_clocks(path, spec.num_groups)
    sketches: dict[int, tuple] = {}
    for part in checkpoint.restore_shard(path, owned, service.shard.optimizer.name):
        service.shard.load(part.keys, part.values, part.state, since=int(clocks.min()) if clocks.size else 0)
        if part.admission is not None:
            sketches[part.shard_id if part.num_shards == len(spec.shard_ids) else -1 - part.shard_id] = part.admission
    if service.admission is not None:
        service.admission.resume(sketches, shard_id=spec.shard_id)
    service.clock.clocks[:] = clocks
    log.info("resumed %d keys at clocks %s in %.2fs from %s", len(service.shard), service.clock.clocks.tolist(),
             time.monotonic() - started, checkpoint.resolve_checkpoint(path))


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == FENCED:
        return f"exit code {FENCED} (fenced: declared dead while it did not answer)"
    return f"exit code {returncode}"


def _child_environment() -> dict[str, str]:
    """This process's environment without the MPI launcher's variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}


class ShardProcess:
    """Start a shard process and wait until it announced its endpoint.

    Args:
        spec: the shard to run.
        debug: log debug messages in the shard.
        label: shown in ``ps`` next to the shard id (e.g. the job's output directory).

    Raises:
        ShardUnavailableError: the shard exited or stayed silent before announcing its endpoint.
    """

    def __init__(self, spec: ShardSpec, debug: bool = False, label: str = "") -> None:
        self.shard_id = spec.shard_id
        command = [sys.executable, "-m", "hybrid_ps.server", "--shard-id", str(spec.shard_id)]
        if label:
            command += ["--label", label]
        if debug:
            command.append("--debug")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_environment(),
            start_new_session=True,  # signals reach it through its supervisor only
        )
        assert self.process.stdin is not None  # stdin=PIPE
        self.process.stdin.write(spec.to_json().encode())
        self.process.stdin.close()
        self.endpoint = self._read_endpoint()
        self._signalled = False
        self._reported = False

    @property
    def pid(self) -> int:
        """The shard's process id."""
        return self.process.pid

    def _read_endpoint(self) -> str:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        stdout = self.process.stdout
        assert stdout is not None  # stdout=PIPE
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([stdout], [], [], max(remaining, 0))
            chunk = os.read(stdout.fileno(), 4096) if ready else b""
            if not chunk:
                self.process.kill()
                code = self.process.wait()
                why = describe_exit(code) if ready else f"no endpoint after {_STARTUP_TIMEOUT:g}s"
                raise ShardUnavailableError(f"shard {self.shard_id} did not start ({why}); its error is above")
            line += chunk
        stdout.close()
        return line.decode().strip()

    def __enter__(self) -> ShardProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def supervise(self, stop: StopRequest | None = None, on_death: Callable[[int], object] | None = None,
                  tick: Callable[[], object] | None = None) -> int:
        """Wait (sleeping) until the shard exits, forwarding a preemption request once; returns its exit code.

        A shard that dies is logged and ``on_death`` called with its id, not raised: its backups serve
        its ranges. ``tick`` is called at every wake-up (every 50 ms).
        """
        return supervise([self], stop, on_death, tick)[0]

    def poll(self, stop: StopRequest | None, on_death: Callable[[int], object] | None = None) -> int | None:
        """The exit code once the shard exited (logged, and ``on_death`` called, if it died), else ``None``;
        forwards ``stop`` once."""
        if stop is not None and stop.requested and not self._signalled and self.process.poll() is None:
            self._signalled = True
            self.process.send_signal(signal.SIGUSR1)
        code = self.process.poll()
        if code not in (None, 0) and not self._reported:
            self._reported = True
            log.error("shard %d (pid %d) died: %s; leaders fail over to its backups", self.shard_id, self.pid,
                      describe_exit(code))
            if on_death is not None:
                on_death(self.shard_id)
        return code


def supervise(shards: list[ShardProcess], stop: StopRequest | None = None,
              on_death: Callable[[int], object] | None = None, tick: Callable[[], object] | None = None) -> list[int]:
    """Wait (sleeping, not spinning) until every shard exited; forwards a preemption request; calls
    ``on_death`` with each shard that died (and ``tick`` at every wake-up); returns exit codes."""
    while True:
        codes = [shard.poll(stop, on_death) for shard in shards]
        exited = [code for code in codes if code is not None]
        if len(exited) == len(codes):
            return exited
        if tick is not None:
            tick()
        time.sleep(_POLL_SECONDS)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux); exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.debug("PR_SET_PDEATHSIG unavailable: relying on the parent-pid check")
    if os.getppid() != parent_pid:
        raise HybridPSError(f"the supervising process {parent_pid} is gone")

"""A supervised shard that is started again when it dies, and filled from the other replicas while training goes on.

The supervisor (a server rank, through ``RestartingShard.run``) sees its shard exit, tells
the other shards at once (``tell_shards_of_death``: the leaders fail over), starts a new,
empty shard process with the same id (never resumed from a checkpoint: the others hold
newer rows), and sends REJOIN: each acting primary fills it with the rows it replicates
and forwards every later push to it, and the leaders connect to it as a backup again. R
replicas are then restored, so a second death later in the job loses nothing either.
Once no restart is left, the supervisor retires the dead shard instead (RETIRE): the next
shards of the ring take its place in each of its ranges and are filled the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from ..errors import ShardUnavailableError
from ..net.curve import JobKeys
from ..preemption import StopRequest
from .death_notice import EndpointWatch, tell_shards_of_death, tell_shards_of_rejoin, tell_shards_of_retirement
from .process import ShardProcess, ShardSpec

__all__ = ["RestartingShard"]

log = logging.getLogger(__name__)


class RestartingShard:
    """One shard process, restarted up to ``restarts`` times after it died.

    Args:
        spec: the shard to run.
        restarts: how many times to start it again (0: never; without replication it never is, since an empty
            shard would silently lose its ranges); once none is left, a death retires the shard (with
            replication): its ranges are re-replicated on the other shards.
        debug, label: as ``ShardProcess``.
        curve_keys: the job's CURVE keys, to reach the other shards (``None``: plain TCP).
    """

    def __init__(self, spec: ShardSpec, *, restarts: int, debug: bool = False, label: str = "",
                 curve_keys: JobKeys | None = None) -> None:
        self.spec = spec
        self.restarts_left = restarts if spec.replication > 1 else 0
        self.debug, self.label, self.curve_keys = debug, label, curve_keys
        self.process = ShardProcess(spec, debug, label=label)
        self.rebuild_seconds: list[float] = []
        self.retire_seconds: float | None = None  # how long re-replicating the ranges took, once retired

    @property
    def endpoint(self) -> str:
        """Where the shard serves now (it changes with each restart)."""
        return self.process.endpoint

    def __enter__(self) -> RestartingShard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.__exit__()

    def run(self, endpoints: dict[int, str], stop: StopRequest | None = None) -> int:
        """Supervise until the shard exits for good (every group left, or no restart left); its exit code.

        Args:
            endpoints: every shard's endpoint by id (this one's is updated on each restart).
            stop: the preemption flag: forwarded to the shard; once set, a death is not restarted.
        """
        shard_id = self.spec.shard_id
        watch = EndpointWatch(endpoints, shard_id, curve_keys=self.curve_keys)
        try:
            return self._run(endpoints, stop, watch)
        finally:
            watch.close()

    def _run(self, endpoints: dict[int, str], stop: StopRequest | None, watch: EndpointWatch) -> int:
        shard_id = self.spec.shard_id
        while True:
            replicated = self.spec.replication > 1
            code = self.process.supervise(stop, on_death=lambda dead: tell_shards_of_death(
                endpoints, dead, curve_keys=self.curve_keys), tick=watch.tick if replicated else None)
            if code == 0 or (stop is not None and stop.requested) or not replicated:
                return code
            started = time.monotonic()
            restarted = self._restart() if self.restarts_left else None
            if restarted is None:
                if tell_shards_of_retirement(endpoints, shard_id, curve_keys=self.curve_keys):
                    self.retire_seconds = time.monotonic() - started
                return code
            self.process = restarted
            endpoints[shard_id] = self.process.endpoint
            watch.moved()
            log.warning("shard %d restarted as pid %d at %s (%d restart(s) left); the other replicas fill it",
                        shard_id, self.process.pid, self.process.endpoint, self.restarts_left)
            filled = tell_shards_of_rejoin(endpoints, shard_id, curve_keys=self.curve_keys)
            if not filled:
                log.error("shard %d: no other shard answered its REJOIN (the job is over, or they died): "
                          "stopping it", shard_id)
                self.process.__exit__()
                return code
            self.rebuild_seconds.append(time.monotonic() - started)

    def _restart(self) -> ShardProcess | None:
        """A new, empty process for the shard (never resumed from a checkpoint: the other replicas hold newer rows);
        ``None`` if it did not start (the shard is then retired)."""
        self.restarts_left -= 1
        try:
            return ShardProcess(dataclasses.replace(self.spec, restarted=True), self.debug, label=self.label)
        except ShardUnavailableError as e:
            log.error("shard %d could not be restarted: %s", self.spec.shard_id, e)
            return None

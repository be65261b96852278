"""Primary-driven replication, as the OSDI 2014 parameter server chains its replicas.

A group pushes each key once, to its acting primary. The primary applies the push,
forwards it (FORWARD) to the key's other live replicas and acknowledges the group
only once every one of them acknowledged: an acknowledged push is on every live
replica. Replicas apply the same float32 gradients in the same order per key range,
so they stay bit-identical.

A primary can die between applying and forwarding, or before its ACK reached the
group; the group then sends the push again, to the new primaries. Every push carries
its ``PushSequence``, and each shard notes which keys of each recent push it applied
(``AppliedPushes``): whatever copies arrive, in whatever order, each key of a push is
applied once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import zmq

from ..errors import WireError
from ..net.curve import JobKeys
from ..net.links import ShardLinks
from ..placement.replicas import Placement
from ..protocol import wire

__all__ = ["AppliedPushes", "Forwards", "WaitingPush"]

log = logging.getLogger(__name__)

_REMEMBERED_PER_GROUP = 4096  # pushes a group may have unacknowledged (its clients wait far earlier: 16)


class AppliedPushes:
    """Which keys of each group's recent pushes this shard applied, so that a push sent again applies once.

    Only pushes the group may still send again are kept: those at or above the ``acked_below``
    its latest push named. A group whose writer changes (its leader restarted) starts afresh.

    Args:
        num_groups: group slots (a sequence naming another group is refused).
    """

    def __init__(self, *, num_groups: int) -> None:
        self.num_groups = num_groups
        self._writers: dict[int, int] = {}  # group -> the writer of its pushes kept below
        self._applied: dict[int, dict[int, np.ndarray]] = {}  # group -> sequence -> keys applied (sorted)

    def not_applied(self, group: int, sequence: wire.PushSequence, keys: np.ndarray) -> np.ndarray | None:
        """Which of sorted ``keys`` this push has not applied here yet (bool mask); ``None``: all of them.

        Raises:
            WireError: ``group`` is not one of the job's groups.
        """
        if not 0 <= group < self.num_groups:
            raise WireError(f"group {group} out of range (job has {self.num_groups})")
        pushes = self._pushes_of(group, sequence)
        applied = pushes.get(sequence.sequence)
        return None if applied is None else ~np.isin(keys, applied, assume_unique=True)

    def note(self, group: int, sequence: wire.PushSequence, keys: np.ndarray) -> None:
        """``keys`` of the push are applied now (after ``not_applied``)."""
        pushes = self._pushes_of(group, sequence)
        applied = pushes.get(sequence.sequence)
        pushes[sequence.sequence] = np.array(keys) if applied is None else np.union1d(applied, keys)
        while len(pushes) > _REMEMBERED_PER_GROUP:
            del pushes[next(iter(pushes))]

    def remembered(self, group: int) -> int:
        """How many of the group's pushes are kept."""
        return len(self._applied.get(group, {}))

    def _pushes_of(self, group: int, sequence: wire.PushSequence) -> dict[int, np.ndarray]:
        if self._writers.get(group) != sequence.writer:
            self._writers[group] = sequence.writer
            self._applied[group] = {}
        pushes = self._applied[group]
        for old in [s for s in pushes if s < sequence.acked_below]:
            del pushes[old]
        return pushes


@dataclass
class WaitingPush:
    """A group's push applied by this primary, waiting for its backups' ACKs."""

    identity: bytes
    header: wire.Header
    backups: set[int] = field(default_factory=set)  # backups that have not acknowledged yet
    error: str | None = None  # a backup refused it: the group gets this error instead of the ACK


class Forwards:
    """A primary's forwards of pushes to its backups, and the pushes waiting for them.

    Args:
        shard_id: this shard (never forwarded to).
        context: ZeroMQ context.
        curve_keys: the job's CURVE keys (``None``: plain TCP).
        poller: the shard loop's poller, woken up by the backups' replies too.
    """

    def __init__(self, *, shard_id: int, context: zmq.Context, curve_keys: JobKeys | None,
                 poller: zmq.Poller) -> None:
        self.shard_id = shard_id
        self.links = ShardLinks(context=context, curve_keys=curve_keys, also_poll=poller)
        self._next_id = 1
        self._waiting: dict[int, tuple[WaitingPush, int]] = {}  # forward's request id -> (push, backup)
        self.forwarded_keys = 0

    def learn(self, endpoints: dict[int, str]) -> None:
        """The tier's shards (from a JOIN or a RESHARD): connect to the ones new or moved."""
        for shard, endpoint in endpoints.items():
            if shard == self.shard_id or self.links.endpoints.get(shard) == endpoint:
                continue
            if self.links.connected(shard):
                self.links.disconnect(shard, linger_ms=0)
            self.links.connect(shard, endpoint)

    def forward(self, push: WaitingPush, keys: np.ndarray, grads: np.ndarray, sequence: wire.PushSequence,
                placement: Placement) -> bool:
        """Send ``keys``' part to each of their other live replicas; ``False`` if there is none (ACK at once).

        Raises:
            WireError: a backup's endpoint is not known (no group sent JOIN with the shards).
        """
        parts = placement.backup_parts(keys, self.shard_id)
        for backup, positions in parts:
            if not self.links.connected(backup):
                raise WireError(f"shard {self.shard_id} does not know backup shard {backup}'s endpoint")
            part_keys = np.take(keys, positions) if positions.size != keys.size else keys
            part_grads = np.take(grads, positions, axis=0) if positions.size != keys.size else grads
            request_id = self._next_id
            self._next_id += 1
            header = wire.Header(wire.Op.FORWARD, push.header.group, request_id, push.header.clock,
                                 part_keys.size, push.header.width)
            self.links.send(backup, [wire.encode_header(header), np.ascontiguousarray(part_keys),
                                     np.ascontiguousarray(part_grads, dtype=np.float32), sequence.to_frame()])
            self._waiting[request_id] = (push, backup)
            push.backups.add(backup)
            self.forwarded_keys += part_keys.size
        return bool(parts)

    def replies(self) -> list[WaitingPush]:
        """Take the backups' replies that arrived; the pushes every backup has answered now."""
        done = []
        for backup, frames in self.links.receive(0):
            try:
                header = wire.decode_header(frames)
            except WireError as e:
                log.warning("shard %d: bad reply from backup shard %d ignored: %s", self.shard_id, backup, e)
                continue
            if header.op is wire.Op.SHARD_DOWN:
                continue  # the backup tells its clients of deaths; this shard hears of them by EVICT
            waiting = self._waiting.pop(header.request_id, None)
            if waiting is None:
                continue
            push, _ = waiting
            if header.op is wire.Op.ERROR:
                push.error = f"backup shard {backup} refused the forwarded push: {wire.error_text(frames[1])}"
            push.backups.discard(backup)
            if not push.backups:
                done.append(push)
        return done

    def without(self, dead: int) -> list[WaitingPush]:
        """``dead`` died: stop waiting for it; the pushes every other backup has answered now."""
        done = []
        for request_id, (push, backup) in list(self._waiting.items()):
            if backup == dead:
                del self._waiting[request_id]
                push.backups.discard(dead)
                if not push.backups:
                    done.append(push)
        if self.links.connected(dead):
            self.links.disconnect(dead, linger_ms=0)
        return done

    @property
    def waiting(self) -> int:
        """Forwards not acknowledged yet."""
        return len(self._waiting)

    def close(self) -> None:
        self.links.close()

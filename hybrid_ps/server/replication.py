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

A dead shard its supervisor restarted is filled the same way (``Forwards.start_fill``): on
REJOIN each acting primary forwards every later push to it and sends it, a chunk per turn of
its loop (so that it keeps serving), the rows it must hold (FILL) as they are at that moment,
then its clocks (FILLED). A chunk overwrites what forwards before it did to its keys and
already holds their effect; forwards after it apply on top: nothing is lost or applied twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from ..errors import WireError
from ..net.curve import JobKeys
from ..net.links import ShardLinks
from ..placement.replicas import Placement
from ..protocol import wire

__all__ = ["AppliedPushes", "Forwards", "WaitingRequest"]

log = logging.getLogger(__name__)

_REMEMBERED_PER_GROUP = 4096  # pushes a group may have unacknowledged (its clients wait far earlier: 16)
_FILL_CHUNK = 1 << 16  # rows per FILL message


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
        pushes = self._pushes_of(group, sequence)
        applied = pushes.get(sequence.sequence)
        return None if applied is None else ~np.isin(keys, applied, assume_unique=True)

    def note(self, group: int, sequence: wire.PushSequence, keys: np.ndarray) -> None:
        """``keys`` of the push are applied now (after ``not_applied``).

        Raises:
            WireError: ``group`` is not one of the job's groups.
        """
        pushes = self._pushes_of(group, sequence)
        applied = pushes.get(sequence.sequence)
        pushes[sequence.sequence] = np.array(keys) if applied is None else np.union1d(applied, keys)
        while len(pushes) > _REMEMBERED_PER_GROUP:
            del pushes[next(iter(pushes))]

    def among(self, keys: np.ndarray) -> np.ndarray:
        """What this shard applied of sorted ``keys`` under each push it remembers, as one uint64 array (the frame
        of a FILL: a restarted shard filled with these rows must not apply those pushes to them again):
        per push ``group, writer, sequence, count`` and its keys."""
        parts: list[np.ndarray] = []
        for group, pushes in self._applied.items():
            for sequence, applied in pushes.items():
                common = np.intersect1d(applied, keys, assume_unique=True)
                if common.size:
                    parts += [np.array([group, self._writers[group], sequence, common.size], np.uint64), common]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def take(self, frame: np.ndarray) -> None:
        """Note as applied what ``among`` of a FILL's sender says.

        Raises:
            WireError: not such a frame.
        """
        at = 0
        while at < frame.size:
            if at + 4 > frame.size or at + 4 + int(frame[at + 3]) > frame.size:
                raise WireError("a FILL's applied-pushes frame is cut short")
            group, writer, sequence, count = (int(v) for v in frame[at : at + 4])
            self.note(group, wire.PushSequence(writer, sequence, 0), frame[at + 4 : at + 4 + count])
            at += 4 + count

    def remembered(self, group: int) -> int:
        """How many of the group's pushes are kept."""
        return len(self._applied.get(group, {}))

    def _pushes_of(self, group: int, sequence: wire.PushSequence) -> dict[int, np.ndarray]:
        """The group's kept pushes (afresh for a new writer, without those below ``acked_below``)."""
        if not 0 <= group < self.num_groups:
            raise WireError(f"group {group} out of range (job has {self.num_groups})")
        if self._writers.get(group) != sequence.writer:
            self._writers[group] = sequence.writer
            self._applied[group] = {}
        pushes = self._applied[group]
        for old in [s for s in pushes if s < sequence.acked_below]:
            del pushes[old]
        return pushes


@dataclass
class _Fill:
    """A shard being filled: the keys to go through, in ``chunks`` strided chunks, and how many were.

    Chunk ``i`` is ``keys[i::chunks]``: keys spread over the whole table. Consecutive keys of the table's (hash)
    order would crowd a few buckets of the new shard's growing table, which uses the same hash, into long probe
    runs (4 us a key instead of 50 ns).
    """

    request: WaitingRequest
    new: int
    keys: np.ndarray
    chunks: int
    select: Callable[[np.ndarray], np.ndarray]  # of a chunk, the keys ``new`` gets (bool mask)
    table: Callable[[], tuple[np.ndarray, dict]]  # what the FILLED after the last chunk carries
    sent: int = 0  # chunks sent
    unanswered: int | None = None  # the FILL sent last, until acknowledged: one at a time, so that forwards to
    # the new shard never queue behind many chunks


@dataclass
class WaitingRequest:
    """A request this primary handled (a group's push, a REJOIN), waiting for other shards' ACKs."""

    identity: bytes
    header: wire.Header
    backups: set[int] = field(default_factory=set)  # shards that have not acknowledged yet
    error: str | None = None  # a backup refused it: the sender gets this error instead of the ACK
    value: int | None = None  # the ACK carries this in its clock field (a REJOIN: the rows filled)


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
        self._sender = wire.encode_shard_id(shard_id)  # the last frame of every message: a zombie's are refused
        self.links = ShardLinks(context=context, curve_keys=curve_keys, also_poll=poller)
        self._next_id = 1
        self._waiting: dict[int, tuple[WaitingRequest, int]] = {}  # forward's request id -> (push, backup)
        self._fills: dict[int, _Fill] = {}  # FILL's request id -> its fill
        self._filling: list[_Fill] = []
        self.forwarded_keys = 0

    def learn(self, endpoints: dict[int, str]) -> None:
        """The tier's shards (from a leader's PEERS, a RESHARD or a REJOIN): connect to the ones new or moved."""
        for shard, endpoint in endpoints.items():
            if shard == self.shard_id or self.links.endpoints.get(shard) == endpoint:
                continue
            if self.links.connected(shard):
                self.links.disconnect(shard, linger_ms=0)
            self.links.connect(shard, endpoint)

    def forward(self, push: WaitingRequest, keys: np.ndarray, grads: np.ndarray, sequence: wire.PushSequence,
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
            request_id = self._new_request_id()
            header = wire.Header(wire.Op.FORWARD, push.header.group, request_id, push.header.clock,
                                 part_keys.size, push.header.width)
            self.links.send(backup, [wire.encode_header(header), np.ascontiguousarray(part_keys),
                                     np.ascontiguousarray(part_grads, dtype=np.float32), sequence.to_frame(),
                                     self._sender])
            self._waiting[request_id] = (push, backup)
            push.backups.add(backup)
            self.forwarded_keys += part_keys.size
        return bool(parts)

    def drop(self, keys: np.ndarray, placement: Placement, width: int) -> None:
        """Send each of ``keys``' other live replicas DROP of its part (evicted here, their acting primary): after
        the forwards before it, before those after it, as this shard removed them."""
        for backup, positions in placement.backup_parts(keys, self.shard_id):
            if self.links.connected(backup):
                header = wire.Header(wire.Op.DROP, 0, self._new_request_id(), 0, positions.size, width)
                self.links.send(backup, [wire.encode_header(header), np.ascontiguousarray(np.take(keys, positions)),
                                         self._sender])

    def start_fill(self, request: WaitingRequest, new: int, keys: np.ndarray, *,
                   select: Callable[[np.ndarray], np.ndarray], table: Callable[[], tuple[np.ndarray, dict]]) -> None:
        """Begin filling shard ``new`` (restarted, or a new backup of a retired shard's ranges) with the rows of
        those of ``keys`` that ``select`` picks (``keys``: every key this shard held as the fill began, in any
        order), a chunk at a time (``fill_next``), then FILLED with ``table()``; ``request`` (the REJOIN or
        RETIRE) is answered once every shard it fills acknowledged its FILLED. Pushes are forwarded to ``new``
        from now on (its placement says it replicates them)."""
        self._filling.append(_Fill(request, new, keys, max(1, -(-keys.size // _FILL_CHUNK)), select, table))
        request.backups.add(new)
        request.value = request.value or 0

    @property
    def filling(self) -> bool:
        """Whether a fill can send its next chunk now (the loop then calls ``fill_next`` without waiting)."""
        return any(fill.unanswered is None for fill in self._filling)

    def fill_next(self, rows_for: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
                  width: int) -> None:
        """Send each fill's next chunk: ``rows_for(keys)`` reads the rows of ``keys`` as they are now (sorted), so
        a push applied (and forwarded) before is in them, and one after is forwarded after them; and which
        pushes they hold (``AppliedPushes.among``), which the new shard must not apply again if one is sent
        again. A fill's last chunk is followed by FILLED with its clocks and JSON table."""
        for fill in [fill for fill in self._filling if fill.unanswered is None]:
            chunk = fill.keys[fill.sent :: fill.chunks]
            fill.sent += 1
            keys, rows, applied = rows_for(chunk[fill.select(chunk)])
            if keys.size:
                request_id = self._new_request_id()
                header = wire.Header(wire.Op.FILL, 0, request_id, 0, keys.size, width)
                self.links.send(fill.new, [wire.encode_header(header), keys, rows, applied, self._sender])
                self._fills[request_id] = fill
                fill.unanswered = request_id
                fill.request.value = (fill.request.value or 0) + keys.size
            if fill.sent == fill.chunks:
                self._filling.remove(fill)
                clocks, info = fill.table()
                request_id = self._new_request_id()
                self.links.send(fill.new, [wire.encode_header(wire.Header(wire.Op.FILLED, 0, request_id, 0)),
                                           np.ascontiguousarray(clocks, dtype="<i8"), json.dumps(info).encode(),
                                           self._sender])
                self._waiting[request_id] = (fill.request, fill.new)

    def tell_peers_retired(self, retired: int, peers: list[int]) -> None:
        """Send RETIRE of ``retired`` to each of ``peers`` this shard has a link to, before any forward or fill
        under the placement without it (a link keeps its messages in order)."""
        for shard in peers:
            if shard not in (retired, self.shard_id) and self.links.connected(shard):
                header = wire.Header(wire.Op.RETIRE, 0, self._new_request_id(), 0)
                self.links.send(shard, [wire.encode_header(header), wire.encode_shard_id(retired), self._sender])

    def _new_request_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def replies(self) -> list[WaitingRequest]:
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
            fill = self._fills.pop(header.request_id, None)
            if fill is not None:
                fill.unanswered = None
                if header.op is wire.Op.ERROR:
                    fill.request.error = f"shard {backup} refused a FILL: {wire.error_text(frames[1])}"
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

    def without(self, dead: int) -> list[WaitingRequest]:
        """``dead`` died: stop waiting for it; the requests every other shard has answered now."""
        done: dict[int, WaitingRequest] = {}
        stopped = [fill for fill in self._filling if fill.new == dead]
        for fill in stopped:
            self._filling.remove(fill)
            fill.request.error = f"shard {dead} died while it was filled"
        waiting = [request for request, backup in self._waiting.values() if backup == dead]
        self._waiting = {rid: (request, backup) for rid, (request, backup) in self._waiting.items() if backup != dead}
        for request in waiting + [fill.request for fill in stopped]:
            request.backups.discard(dead)
            if not request.backups:
                done[id(request)] = request
        self._fills = {rid: fill for rid, fill in self._fills.items() if fill.new != dead}
        if self.links.connected(dead):
            self.links.disconnect(dead, linger_ms=0)
        return list(done.values())

    def abandon(self) -> list[WaitingRequest]:
        """This shard stops: every request still waiting for other shards (pushes, REJOINs), with an error."""
        waiting = [push for push, _ in self._waiting.values()] + [fill.request for fill in self._filling]
        self._waiting, self._filling, self._fills = {}, [], {}
        unique = list({id(request): request for request in waiting}.values())
        for request in unique:
            request.error = f"shard {self.shard_id} stopped before the other shards answered"
        return unique

    @property
    def waiting(self) -> int:
        """Forwards not acknowledged yet."""
        return len(self._waiting)

    def close(self) -> None:
        self.links.close()

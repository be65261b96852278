"""A shard's ZeroMQ loop: validate each request, apply it, reply; defer pulls that SSP holds back.

No mpi4py here: the loop runs in an MPI server rank today and can run in any
plain process (a supervised child, a job of its own) tomorrow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from ..errors import KeyListMissError, NonFiniteError, WireError
from ..net.curve import JobKeys
from ..net.sockets import bind_router, close_router, recv_frames
from ..placement.replicas import REJOINED, Placement
from ..placement.ring import HashRing
from ..preemption import StopRequest
from ..protocol import wire
from .admission import Admission
from .cuts import CheckpointWriter, Cuts
from .eviction import Eviction, EvictionPolicy
from .groups import GroupTable
from .held_pulls import HeldPulls
from .membership import CutReader, TierMembership
from .rebuild import Rebuild
from .replication import AppliedPushes, Forwards, WaitingRequest
from .replies import Announcement, Replies, is_clock
from .request_keys import RequestKeys
from .shard import Shard
from .snapshots import SnapshotWriter

__all__ = ["ShardService", "ServiceStats"]

log = logging.getLogger(__name__)

_POLL_MS = 1000
_MAX_BATCH = 256  # messages handled per wake-up before deferred pulls are re-checked
_MAX_CLOCK = 1 << 62  # the largest clock a CLOCK may carry: the stop and reshard clocks (two past it) stay int64


@dataclass
class ServiceStats:
    """Counters a shard keeps about its traffic."""

    requests: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    deferred_pulls: int = 0
    keys_pushed: int = 0
    keys_pulled: int = 0
    keys_not_admitted: int = 0  # pushed keys dropped because they were not admitted yet

    def count(self, op: wire.Op) -> None:
        self.requests[op.name] = self.requests.get(op.name, 0) + 1


class ShardService:
    """Serve one shard over a ROUTER socket until every group said BYE or SHUTDOWN arrives.

    Args:
        shard: the keys and values this process holds.
        shard_id: this shard's id on the ring.
        ring: the key -> shard ring (requests for keys owned elsewhere are rejected).
        num_groups: worker groups in the job (size of the vector clock).
        staleness: the SSP bound (0 = BSP, ``math.inf`` = ASP).
        host: address to bind; the port is chosen at random.
        max_keys: largest key count accepted in one message.
        context: ZeroMQ context to use (default: the process-wide instance).
        checkpoint_writer: called with ((keys, values, state), clock, cut clock) when
            every group asked for a checkpoint; ``None`` refuses CHECKPOINT requests.
        stop_request: a preemption flag of this process; when set, the shard picks
            the stop clock as if a leader had sent STOP (only the coordinating shard,
            the lowest live one, should get one).
        group_timeout: seconds without any message from a group before the shard
            stops waiting for it in the SSP rule (0 = wait forever); a dropped
            group that speaks again rejoins at the slowest running group's clock.
        replication: replicas per key range: this shard also holds, as a backup, the
            ranges of the shards before it on the ring, and serves them once those are dead;
            as the acting primary it forwards each push to the backups (``replication.py``).
        cut_reader: reads a checkpoint cut's files (with ``checkpoint_writer``, the tier's shards
            can change: each loads the ranges it gains from the cut both sides agreed on).
        groups_present: every group trains from the start (an MPI job's own shards);
            ``False`` (a PS tier of its own): group slots are absent until their group
            sends JOIN, and the shard stops once every group that joined has left.
        curve_keys: serve with CURVE, admitting only these keys' clients (``None``: plain TCP).
        restarted: a dead shard started again, empty: a backup of its ranges once the acting primaries filled it
            (REJOIN), their primary only where no other replica lives.
        snapshot_checkpoints: write each checkpoint from a forked copy of this process while serving on
            (``snapshots.py``; only in a process of its own: a fork copies one thread).
        checkpoint_deltas: between two full checkpoint files, this many write only the rows changed since the
            cut before (``shard`` must track its changes).
        admission: gives a key a row only once it was pushed often enough (``None``: at its first push).
        eviction: evicts rows at the full checkpoint cuts (``shard`` must be ``stamped`` for ``after``).
    """

    def __init__(
        self,
        shard: Shard,
        shard_id: int,
        ring: HashRing,
        num_groups: int,
        staleness: float,
        host: str = "127.0.0.1",
        *,
        max_keys: int = 1 << 24,
        context: zmq.Context | None = None,
        checkpoint_writer: CheckpointWriter | None = None,
        stop_request: StopRequest | None = None,
        group_timeout: float = 0.0,
        replication: int = 1,
        groups_present: bool = True,
        cut_reader: CutReader | None = None,
        curve_keys: JobKeys | None = None,
        restarted: bool = False,
        snapshot_checkpoints: bool = False,
        checkpoint_deltas: int = 0,
        admission: Admission | None = None,
        eviction: EvictionPolicy | None = None,
    ) -> None:
        self.shard = shard
        self.shard_id = shard_id
        self.staleness = staleness
        self.max_keys = max_keys
        self.groups = GroupTable(num_groups=num_groups, present=groups_present, group_timeout=group_timeout)
        self.clock = self.groups.clock  # the SSP vector clock
        self.membership = TierMembership(shard_id=shard_id, shard=shard, groups=self.groups,
                                         placement=Placement(ring, replication,
                                                             history=[(REJOINED, shard_id)] if restarted else []),
                                         cut_reader=cut_reader,
                                         checkpoints=checkpoint_writer is not None,
                                         joins_a_running_tier=not groups_present)
        self.request_keys = RequestKeys(shard_id=shard_id, width=shard.width, max_keys=max_keys,
                                        num_groups=num_groups, placement=lambda: self.membership.placement)
        self.stats = ServiceStats()
        self.held_pulls = HeldPulls(max_keys=max_keys)
        self._clients: dict[bytes, int] = {}  # connection identity -> its group: whom to tell of a dead shard
        self._stop_request = stop_request
        self._running = False
        self.fenced = False  # a client declared this shard dead and it stopped (its process exits non-zero)
        self._context = context or zmq.Context.instance()
        self._curve_keys = curve_keys
        # keys or float32 values (zstd may add a little), or a tier view; a peer sending more is disconnected
        largest_frame = int(1.01 * max_keys * max(8, 4 * shard.width)) + 65536
        self.socket, self.endpoint = bind_router(self._context, host, curve_keys, max_message_bytes=largest_frame)
        self.replies = Replies(socket=self.socket, shard_id=shard_id, clock=self.clock, announcement=self._announced)
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self.forwards = Forwards(shard_id=shard_id, context=self._context, curve_keys=curve_keys, poller=self._poller)
        self.admission = admission
        self.eviction = None if eviction is None or not eviction.enabled else Eviction(
            shard_id=shard_id, shard=shard, policy=eviction, placement=lambda: self.placement,
            drop=lambda keys, placement: self.forwards.drop(keys, placement, shard.width))
        self.cuts = Cuts(shard_id=shard_id, shard=shard, groups=self.groups, placement=lambda: self.placement,
                         writer=checkpoint_writer,
                         snapshots=SnapshotWriter(poller=self._poller) if snapshot_checkpoints else None,
                         deltas=checkpoint_deltas, evict=self.eviction.at_cut if self.eviction else None)
        self.applied = AppliedPushes(num_groups=num_groups)
        self.rebuild = Rebuild(shard_id=shard_id, shard=shard, membership=self.membership, groups=self.groups,
                               forwards=self.forwards, applied=self.applied, replies=self.replies,
                               request_keys=self.request_keys, endpoint=self.endpoint)

    @property
    def placement(self) -> Placement:
        """The ring and replicas this shard serves by now (minus the shards known dead)."""
        return self.membership.placement

    def __enter__(self) -> ShardService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets (pending replies get the socket's linger time)."""
        self.forwards.close()
        close_router(self._context, self.socket, self._curve_keys)

    def serve(self) -> ServiceStats:
        """Handle requests until all groups left or SHUTDOWN; returns the counters."""
        self._running = True
        started = time.monotonic()
        self.groups.start()
        group_timeout = self.groups.group_timeout
        poll_ms = min(_POLL_MS, int(group_timeout * 250) + 1) if group_timeout else _POLL_MS
        log.info("shard %d serving at %s for %d groups", self.shard_id, self.endpoint, self.clock.num_groups)
        while self._running:
            if self._stop_request is not None and self._stop_request.requested:
                self._choose_stop_clock(self._stop_request.signal_name)
            if group_timeout:
                self._drop_silent_groups()
                if not self.groups.joined_any and time.monotonic() - started > group_timeout:
                    log.error("shard %d: no group joined within the group timeout (%gs); stopping",
                              self.shard_id, group_timeout)
                    break
            if self.forwards.filling:
                self.rebuild.fill_next()
            if not self._poller.poll(0 if self.forwards.filling else poll_ms):
                continue
            self._answer_forwarded()
            self._tell_cuts_written()
            for _ in range(_MAX_BATCH):
                try:
                    frames = recv_frames(self.socket, zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.handle(frames)
                if not self._running:
                    break
        for request in self.forwards.abandon():  # answered, so that no supervisor or client waits for ever
            self._answer_push(request)
        self._tell_cuts_written(block=True)  # a file being written is finished before the shard goes
        sketch = f", admission counts {self.admission.sketch.nbytes / 2**20:.1f} MiB" if self.admission else ""
        log.info(
            "shard %d stopped after %.1fs: %d keys (table %.1f MiB%s), requests %s, %d errors",
            self.shard_id, time.monotonic() - started, len(self.shard), self.shard.table.nbytes / 2**20, sketch,
            self.stats.requests, self.stats.errors,
        )
        return self.stats

    def handle(self, frames: list[memoryview]) -> None:
        """Handle one raw message (identity frame first); never raises on bad input."""
        if len(frames) < 2:
            self.stats.errors += 1
            return  # not even an identity and a header: nobody to answer
        identity, body = bytes(frames[0]), frames[1:]
        header = None
        try:
            header = wire.decode_header(body)
            self.stats.count(header.op)
            self._dispatch(identity, header, body)
        except (WireError, NonFiniteError) as e:
            self.stats.errors += 1
            log.warning("shard %d rejected a message: %s", self.shard_id, e)
            missed = wire.FLAG_KEYS_MISSED if isinstance(e, KeyListMissError) else 0
            self.replies.error(identity, header, str(e), missed)
        except Exception as e:  # a bug must not take the shard down with it
            self.stats.errors += 1
            log.exception("shard %d failed on a message", self.shard_id)
            self.replies.error(identity, header, f"internal error: {type(e).__name__}: {e}")

    def _dispatch(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """Route a request to its handler (``_ROUTES``), check and note its group first, ACK it after."""
        route = _ROUTES.get(header.op)
        if route is None:
            raise WireError(f"{header.op.name} is a reply, not a request")
        if route.from_a_group:
            if header.group >= self.clock.num_groups:
                raise WireError(f"group {header.group} out of range (job has {self.clock.num_groups})")
            self._clients[identity] = header.group
            if route.heard_from:
                self._heard_from(header.group, rejoin=header.op is not wire.Op.RESHARD)
        route.handler(self, identity, header, body)
        if route.acked:
            self.replies.ack(identity, header)
        if route.ends_a_step or is_clock(header):
            self._after_a_group_moved()

    def _after_a_group_moved(self) -> None:
        """A group moved on (or is gone): held pulls, a cut and a reshard may be due."""
        self._release_deferred()
        self._maybe_checkpoint()
        self._maybe_reshard()

    # -- one handler per request (see _ROUTES below the class) ---------------------------------------

    def _on_shutdown(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        self._running = False

    def _on_evict(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """A client, or the dead shard's supervisor, says a shard died: serve its ranges where this shard is
        its backup and tell every client at once; if it is this shard itself, stop (fencing)."""
        dead = wire.decode_shard_id(body[1])
        known = dead in self.placement.dead
        if self.membership.evict(dead):
            self._running = False
            self.fenced = True
        elif not known and dead in self.placement.dead:
            for client, group in self._clients.items():
                self.replies.shard_down(client, group, dead)
        for push in self.forwards.without(dead):
            self._answer_push(push)
        self.replies.ack_with(identity, header, 0, self.rebuild.peer_view())

    def _on_join(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """A group starts or restarts: it runs from the clock ``VectorClock.join`` gives (sent back), told of
        the shards that died before it came."""
        clock = self.groups.join(header.group)
        self.membership.joined()
        log.info("shard %d: group %d joined at clock %d", self.shard_id, header.group, clock)
        self.replies.ack_with(identity, header, clock)
        self.rebuild.tell_of_changes(identity, header.group)
        self._release_deferred()  # a restarted group may have finished before: the others wait for it again

    def _on_ping(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        pass  # _dispatch heard from the group and ACKs

    def _on_peers(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """A client's first message: where the other shards are; it is told of deaths and restarts first."""
        self.forwards.learn(self.membership.endpoints_of(body[1]))
        self.rebuild.tell_of_changes(identity, header.group)

    def _on_endpoints(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        self.replies.ack_with(identity, header, 0, self.rebuild.peer_view())

    def _on_rejoin(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        self.rebuild.rejoin(identity, header, body, self._clients)

    def _on_retire(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """A supervisor out of restarts (or a peer that heard of it) retires a dead shard for good."""
        if len(body) == 3:
            self.rebuild.check_sender(body[2])
        retired = wire.decode_shard_id(body[1])
        answer = self.rebuild.retire(identity, header, retired, self._clients, from_a_peer=len(body) == 3)
        for push in self.forwards.without(retired):  # if this shard had not heard of the death
            self._answer_push(push)
        if answer is not None:
            self._answer_push(answer)

    def _on_fill(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        self.rebuild.fill(identity, header, body)

    def _on_filled(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        self.rebuild.filled(body)
        self._stop_when_every_group_is_gone()  # restarted after every group left: nothing to serve

    def _on_pull(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """Answer now, or (the SSP rule) hold the pull back until the slowest group catches up."""
        keys = self.request_keys.checked(identity, body[1], header, primary=True)
        self.stats.keys_pulled += keys.size
        if self.clock.ready(header.clock, self.staleness):
            self._answer_pull(identity, header, keys)
            return
        self.held_pulls.hold(identity, header, keys)
        self.stats.deferred_pulls += 1

    def _on_push(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """Apply the optimizer and forward the push to the backups (ACKed once they have it); with ``FLAG_CLOCK``
        the group also finished its step (``clock + 1``)."""
        keys = self.request_keys.checked(identity, body[1], header, primary=True)
        grads = wire.values_from_frame(body[2], header)
        clock = header.clock + 1 if header.flags & wire.FLAG_CLOCK else None
        if clock is not None:
            _check_clock(clock)  # before the push: a refused message changes nothing
        sequence = wire.PushSequence.from_frame(body[3]) if len(body) == 4 else None
        if sequence is None and self.placement.replication > 1:
            raise WireError("a push to a replicated shard needs its sequence frame")
        if self.admission is not None:
            admitted = self.admission.admit(keys, self.shard.contains(keys))
            if not admitted.all():  # the others only count (and are not forwarded: backups hold what this holds)
                self.stats.keys_not_admitted += int(admitted.size - admitted.sum())
                keys, grads = keys[admitted], grads[admitted]
        self._apply(header.group, sequence, keys, grads, header.clock)
        if clock is not None:
            self.clock.advance(header.group, clock)
        push = WaitingRequest(identity, header)
        if sequence is None or not self.forwards.forward(push, keys, grads, sequence, self.placement):
            self.replies.ack(identity, header)

    def _on_forward(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """A primary's forward of a group's push: apply what of it this replica has not applied yet."""
        self.rebuild.check_sender(body[4])
        keys = self.request_keys.checked(identity, body[1], header, primary=False)
        grads = wire.values_from_frame(body[2], header)
        self._apply(header.group, wire.PushSequence.from_frame(body[3]), keys, grads, header.clock)

    def _on_drop(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """A primary evicted these keys of a range this shard replicates (at a cut): remove them here too."""
        self.rebuild.check_sender(body[2])
        self.shard.remove(self.request_keys.checked(identity, body[1], header, primary=False))

    def _apply(self, group: int, sequence: wire.PushSequence | None, keys: np.ndarray, grads: np.ndarray,
               clock: int) -> None:
        """Apply the keys of a push (of the group's step ``clock``) not applied yet (``sequence``: which push;
        ``None``, unreplicated: all)."""
        fresh = self.applied.not_applied(group, sequence, keys) if sequence is not None else None
        if fresh is None:
            self.shard.push(keys, grads, clock)
        elif fresh.any():
            self.shard.push(keys[fresh], grads[fresh], clock)
        if sequence is not None:
            self.applied.note(group, sequence, keys)
        self.stats.keys_pushed += keys.size if fresh is None else int(fresh.sum())

    def _answer_forwarded(self) -> None:
        """ACK the pushes whose backups all answered (an error if one refused)."""
        for push in self.forwards.replies():
            self._answer_push(push)

    def _answer_push(self, push: WaitingRequest) -> None:
        """Answer a request that waited for other shards (a push, a REJOIN, a RETIRE), unless nobody asked it."""
        if not push.identity:
            return
        if push.error is None and push.value is not None:
            self.replies.ack_with(push.identity, push.header, push.value, self.rebuild.peer_view())
        elif push.error is None:
            self.replies.ack(push.identity, push.header)
        else:
            self.stats.errors += 1
            self.replies.error(push.identity, push.header, push.error)

    def _on_clock(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        _check_clock(header.clock)
        self.clock.advance(header.group, header.clock)

    def _on_finish(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        self.clock.finish(header.group)

    def _on_bye(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        self.groups.leave(header.group)
        self.request_keys.forget(identity)
        self._clients.pop(identity, None)
        self._stop_when_every_group_is_gone()

    def _on_stop(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        self._choose_stop_clock(f"group {header.group}")

    def _on_view(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        self.replies.ack_with(identity, header, self.membership.view(body[1]))

    def _on_reshard(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        self.forwards.learn(self.membership.endpoints_of(body[1]))
        self.membership.ask_reshard(identity, header, body[1])
        self._maybe_reshard()

    def _on_checkpoint(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """Note the group's request; the shard writes the cut once every group asked (then replies)."""
        self.cuts.ask(identity, header)
        self._maybe_checkpoint()

    def _choose_stop_clock(self, why: str) -> None:
        if self.groups.choose_stop_clock():
            log.warning("shard %d: stop requested (%s): every group stops at clock %d", self.shard_id, why,
                        self.groups.stop_at)

    def _maybe_checkpoint(self) -> None:
        """Take this shard's part of a cut once every group asked for it, and answer them (and, once its file is
        written, tell them)."""
        taken = self.cuts.maybe_write()
        if taken is not None:
            self.replies.answer(taken)
            if taken.written and taken.error is None:
                self.replies.cut_written(taken)
        self._tell_cuts_written()

    def _tell_cuts_written(self, block: bool = False) -> None:
        for written in self.cuts.written(block):
            self.replies.cut_written(written)

    def _heard_from(self, group: int, rejoin: bool = True) -> None:
        clock = self.groups.heard_from(group, rejoin)
        if clock is not None:
            log.warning("shard %d: group %d is back: it rejoins at clock %d", self.shard_id, group, clock)

    def _drop_silent_groups(self) -> None:
        """Stop waiting for groups silent longer than ``group_timeout`` (crashed, or cut off).

        A leader that waits (on a pull this shard holds back, a checkpoint, another shard)
        sends heartbeats at least every second, so silence means the group is gone, even
        when its last pull is still held back here.
        """
        dropped = self.groups.drop_silent()
        if not dropped:
            return
        for group in dropped:
            log.warning("shard %d: no message from group %d for %gs: it no longer holds the others back "
                        "(clock %d); it rejoins if it speaks again", self.shard_id, group, self.groups.group_timeout,
                        int(self.clock.clocks[group]))
        self._after_a_group_moved()
        self._stop_when_every_group_is_gone()

    def _stop_when_every_group_is_gone(self) -> None:
        """Stop serving once every group that joined has left (BYE) or was dropped."""
        if self.groups.all_gone():
            self._running = False

    def _maybe_reshard(self) -> None:
        """Switch to the tier's new shards once every running group asked, and answer them."""
        done = self.membership.maybe_reshard()
        if done is None:
            return
        self.replies.answer(done)
        if done.leaving:
            self._running = False

    def _announced(self) -> Announcement:
        """What the ACK of a group's clock announces: the stop clock, else a reshard clock."""
        if self.groups.stop_at is not None:
            return wire.FLAG_STOP, self.groups.stop_at
        if self.membership.reshard_at is not None:
            return wire.FLAG_RESHARD, self.membership.reshard_at
        return None

    def _release_deferred(self) -> None:
        for pull in self.held_pulls.release(lambda clock: self.clock.ready(clock, self.staleness)):
            self._answer_pull(pull.identity, pull.header, pull.keys)

    def _answer_pull(self, identity: bytes, request: wire.Header, keys: np.ndarray) -> None:
        self.replies.values(identity, request, self.shard.pull(keys))


def _check_clock(clock: int) -> None:
    if not 0 <= clock <= _MAX_CLOCK:
        raise WireError(f"clock {clock} out of range (0 .. {_MAX_CLOCK})")


@dataclass(frozen=True)
class _Route:
    """How the service takes one request op."""

    handler: Callable[[ShardService, bytes, wire.Header, list[memoryview]], None]
    from_a_group: bool = True  # the header names one of the job's groups (checked), heard from unless JOIN
    heard_from: bool = True
    acked: bool = True  # the service ACKs after the handler (else the handler replies, now or later)
    ends_a_step: bool = False  # the group moved on (as a clock does): re-check held pulls, cuts, reshards


_ROUTES: dict[wire.Op, _Route] = {
    wire.Op.SHUTDOWN: _Route(ShardService._on_shutdown, from_a_group=False),
    wire.Op.EVICT: _Route(ShardService._on_evict, from_a_group=False, acked=False),
    wire.Op.JOIN: _Route(ShardService._on_join, heard_from=False, acked=False),
    wire.Op.PING: _Route(ShardService._on_ping),
    wire.Op.PEERS: _Route(ShardService._on_peers),
    wire.Op.REJOIN: _Route(ShardService._on_rejoin, from_a_group=False, acked=False),
    wire.Op.RETIRE: _Route(ShardService._on_retire, from_a_group=False, acked=False),
    wire.Op.FILL: _Route(ShardService._on_fill, from_a_group=False),
    wire.Op.ENDPOINTS: _Route(ShardService._on_endpoints, from_a_group=False, acked=False),
    wire.Op.FILLED: _Route(ShardService._on_filled, from_a_group=False, ends_a_step=True),
    wire.Op.PULL: _Route(ShardService._on_pull, acked=False),
    wire.Op.PUSH: _Route(ShardService._on_push, acked=False),
    wire.Op.FORWARD: _Route(ShardService._on_forward, from_a_group=False),
    wire.Op.DROP: _Route(ShardService._on_drop, from_a_group=False),
    wire.Op.CLOCK: _Route(ShardService._on_clock),
    wire.Op.FINISH: _Route(ShardService._on_finish, ends_a_step=True),
    wire.Op.BYE: _Route(ShardService._on_bye, ends_a_step=True),
    wire.Op.STOP: _Route(ShardService._on_stop),
    wire.Op.VIEW: _Route(ShardService._on_view, acked=False),
    wire.Op.RESHARD: _Route(ShardService._on_reshard, acked=False),
    wire.Op.CHECKPOINT: _Route(ShardService._on_checkpoint, acked=False),
}
"""Every request op and its handler (an op missing here is a reply, and refused)."""

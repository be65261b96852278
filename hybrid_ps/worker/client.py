"""The group leader's asynchronous PS client: ``pull``/``push`` return a ticket, ``wait(ticket)`` completes it.

One DEALER socket per shard. A request is split by the hash ring and sent to
all the shards it touches at once; replies are matched by request id whenever
the client waits, so push acknowledgements never sit on the critical path.

With replication (``hybrid_ps.placement.replicas``) a push goes to every live replica
of its keys and completes once all of them acknowledged it; a pull goes to the
acting primary. While it waits, the client pings every shard that has been
quiet for ``heartbeat_interval`` (shards take a silent group for gone); a shard
silent for ``failover_timeout`` while a reply is awaited is declared dead: the other shards (and the suspect, which
then stops) are told, the dead shard's pending pulls are sent again to the
promoted backups, and later requests avoid it. No mpi4py here.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import zmq

from ..errors import ShardUnavailableError
from ..net.curve import JobKeys
from ..net.sockets import connect_dealer, recv_frames, send_frames
from ..placement.replicas import Placement
from ..placement.ring import HashRing
from ..protocol import wire
from ..tier import TierView
from .framing import RequestFraming, Traffic
from .liveness import Liveness
from .requests import RequestBook, Ticket, place_pull_reply
from .routing import Routing

__all__ = ["PSClient", "Ticket", "Announcement"]

log = logging.getLogger(__name__)


class Announcement(enum.Enum):
    """What the coordinating shard announced, as it concerns this group now (``PSClient.announced``)."""

    NONE = "none"
    STOP = "stop"  # the stop clock is reached: checkpoint and stop (preemption)
    RESHARD = "reshard"  # the tier's shards change at this clock: write the cut, then ``reshard``


class PSClient:
    """Talk to every PS shard on behalf of one worker group.

    The parts: ``routing`` (where keys go), ``liveness`` (heartbeats, who is dead) and ``requests``
    (tickets and the replies still owed); this class holds the sockets and the operations.

    Args:
        endpoints: ``tcp://`` endpoint of each shard: a list indexed by shard id, or a dict by shard id.
        group: this worker group's id.
        num_groups: groups in the job (size of the vector clock in pull replies).
        ring: the key -> shard ring shared with the shards.
        width: values per key.
        timeout: seconds to wait for any reply before giving up.
        max_pushes_in_flight: unacknowledged pushes allowed before ``push`` waits.
        context: ZeroMQ context (default: the process-wide instance).
        replication: replicas per key range (as the shards were started with).
        heartbeat_interval: while waiting, a shard quiet this long is pinged (shards count a group
            silent for ``cluster.group_timeout`` as gone; keep this well below it).
        failover_timeout: seconds of silence (pings unanswered) before a shard is declared dead.
        key_cache: send a key list the shard keeps as a 16-byte reference (see hybrid_ps.protocol.keycache).
        compression: ``zstd`` compresses key frames (and, with ``compress_values``, pushed values) of
            4 KiB and more (see hybrid_ps.protocol.codec); ``none`` sends them as they are.
        keys: the job's CURVE keys (``None``: plain TCP, for shards serving without them).
    """

    def __init__(
        self,
        endpoints: Sequence[str] | Mapping[int, str],
        group: int,
        num_groups: int,
        ring: HashRing,
        width: int = 1,
        timeout: float = 600.0,
        max_pushes_in_flight: int = 16,
        context: zmq.Context | None = None,
        replication: int = 1,
        heartbeat_interval: float = 1.0,
        failover_timeout: float = 10.0,
        key_cache: bool = False,
        compression: str = "none",
        compress_values: bool = False,
        keys: JobKeys | None = None,
    ) -> None:
        self.endpoints = dict(endpoints) if isinstance(endpoints, Mapping) else dict(enumerate(endpoints))
        self.group = group
        self.routing = Routing(ring=ring, replication=replication)
        self.liveness = Liveness(heartbeat_interval=heartbeat_interval, failover_timeout=failover_timeout)
        self.requests = RequestBook()
        self.width = width
        self.timeout = timeout
        self.max_pushes_in_flight = max_pushes_in_flight
        self.shard_clocks = np.zeros(num_groups, dtype=np.int64)
        self._context = context or zmq.Context.instance()
        self._keys = keys
        self._poller = zmq.Poller()
        self._sockets: dict[int, zmq.Socket] = {}
        self._shard_of_socket: dict[zmq.Socket, int] = {}
        self.framing = RequestFraming(key_cache, compression, compress_values)
        for shard, endpoint in self.endpoints.items():
            self._connect(shard, endpoint)
        self._pushes_in_flight: list[Ticket] = []
        self.failovers: list[tuple[int, float]] = []  # (dead shard, seconds it was silent)
        self.stop_at: int | None = None  # set when the coordinating shard announces a stop clock (preemption)
        self.reshard_at: int | None = None  # set when it announces a change of the tier's shards

    def __enter__(self) -> PSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket."""
        for sock in self._sockets.values():
            if not sock.closed:
                sock.close()

    @property
    def placement(self) -> Placement:
        """The ring, its replicas and the shards known dead, as this client routes by now."""
        return self.routing.placement

    def _connect(self, shard: int, endpoint: str) -> None:
        sock = connect_dealer(self._context, endpoint, self._keys)
        self._poller.register(sock, zmq.POLLIN)
        self._sockets[shard], self._shard_of_socket[sock] = sock, shard
        self.endpoints[shard] = endpoint
        self.requests.outstanding[shard] = 0
        self.liveness.track(shard)
        self.framing.connected(shard)

    def _disconnect(self, shard: int, linger_ms: int = 1000) -> None:
        sock = self._sockets[shard]
        self._poller.unregister(sock)
        sock.close(linger=linger_ms)
        self.requests.outstanding[shard] = 0

    # -- operations ---------------------------------------------------------

    def pull(self, keys: np.ndarray, clock: int) -> Ticket:
        """Ask for the values of sorted unique ``keys`` for step ``clock``.

        Every shard owning some of the keys is asked at once; ``wait`` returns
        a ``[len(keys), width]`` float32 array.
        """
        ticket = Ticket(wire.Op.PULL, f"pull of {keys.size} keys at clock {clock}", keys=keys, clock=clock)
        self._send_pull(ticket, keys, None)
        return ticket

    def _send_pull(self, ticket: Ticket, keys: np.ndarray, among: np.ndarray | None) -> None:
        """Ask the acting primaries for ``keys`` (``among``: their positions in the ticket's keys; None = all)."""
        assert ticket.keys is not None, "a pull's ticket carries its keys"
        parts = self.routing.pull_parts(keys)
        if ticket.values is None and (among is not None or len(parts) != 1 or parts[0][1] is not None):
            ticket.values = np.empty((ticket.keys.size, self.width), dtype=np.float32)  # else: the reply is used
        for shard, positions in parts:
            part = np.ascontiguousarray(keys) if positions is None else np.take(keys, positions)
            request_id = self._send(shard, ticket, wire.Op.PULL, ticket.clock, [part], part.size)
            if among is not None:
                positions = among if positions is None else among[positions]
            ticket.placement[request_id] = part.size if positions is None else positions

    def push(self, keys: np.ndarray, grads: np.ndarray, clock: int, tell_clock: bool = False) -> Ticket:
        """Send ``grads`` (``[len(keys), width]``; float32, or an encoding from ``wire.encode_values``)
        for sorted unique ``keys``.

        With ``tell_clock`` it is also ``clock(clock + 1)``: the last message to each shard that gets a
        part carries ``FLAG_CLOCK``, the other shards get a CLOCK, all on the returned ticket.
        Returns at once; the acknowledgements are collected by later waits.
        Blocks only if ``max_pushes_in_flight`` pushes are still unacknowledged.
        The arrays may be sent zero-copy: do not modify them after the call.
        """
        if np.asarray(grads).dtype not in wire.DTYPE_CODES:
            grads = np.asarray(grads, dtype=np.float32)
        grads = np.ascontiguousarray(grads).reshape(keys.size, self.width)
        ticket = Ticket(wire.Op.PUSH, f"push of {keys.size} keys at clock {clock}")
        messages = []
        for shard, shard_positions in self.routing.push_parts(keys):
            for positions in self.framing.split_push(shard, clock, keys, shard_positions):
                if positions is None:
                    messages.append((shard, [np.ascontiguousarray(keys), grads], keys.size))
                else:
                    messages.append((shard, [np.take(keys, positions), np.take(grads, positions, axis=0)],
                                     positions.size))
        last_to = {shard: i for i, (shard, _, _) in enumerate(messages)} if tell_clock else {}
        for i, (shard, arrays, count) in enumerate(messages):
            flags = wire.FLAG_CLOCK if last_to.get(shard) == i else 0
            self._send(shard, ticket, wire.Op.PUSH, clock, arrays, count, extra_flags=flags)
        if tell_clock:
            for shard in self.routing.live_shards:
                if shard not in last_to:
                    self._send(shard, ticket, wire.Op.CLOCK, clock + 1, [], 0)
        self._pushes_in_flight.append(ticket)
        self._limit_pushes_in_flight()
        return ticket

    def clock(self, clock: int) -> Ticket:
        """Tell every shard that this group finished ``clock`` steps."""
        return self._broadcast(wire.Op.CLOCK, clock, f"clock {clock}")

    def join(self) -> int:
        """Tell every shard that this group starts; returns the clock it continues at (the latest any shard gave)."""
        ticket = self._broadcast(wire.Op.JOIN, 0, "join")
        self.wait(ticket)
        return ticket.reply_clock

    def finish(self) -> Ticket:
        """Tell every shard that this group finished training."""
        return self._broadcast(wire.Op.FINISH, 0, "finish")

    def checkpoint(self, clock: int) -> int | None:
        """Ask every live shard to checkpoint the cut at ``clock`` (``FINAL_CLOCK``: after training).

        Blocks until every shard wrote its file; returns the cut's clock, or ``None``
        if a shard died meanwhile (its part of the cut may be missing: not to be published).
        """
        ticket = self._broadcast(wire.Op.CHECKPOINT, clock, f"checkpoint at clock {clock}")
        self.wait(ticket)
        return None if ticket.lost_shard else ticket.reply_clock

    def reshard(self, cut: int, view: TierView) -> None:
        """Switch to the tier's new shards at the cut ``cut`` (every shard wrote it; see ``checkpoint``).

        Waits for every reply still due from the old shards, asks old and new shards to
        move the ranges (each answers once every group asked), then routes by the new ring.
        """
        self.drain()
        for shard, endpoint in view.endpoints.items():
            if shard not in self._sockets or self._sockets[shard].closed:
                self._connect(shard, endpoint)
        ticket = Ticket(wire.Op.RESHARD, f"reshard at clock {cut}")
        for shard in sorted(set(self.routing.live_shards) | set(view.endpoints)):
            self._send(shard, ticket, wire.Op.RESHARD, cut, [view.to_bytes()], 0)
        self.wait(ticket)
        for shard in set(self.routing.live_shards) - set(view.endpoints):
            self._disconnect(shard)
        self.routing.switch_to(view)
        self.reshard_at = None
        log.info("group %d: now on shards %s", self.group, view.shard_ids)

    def request_stop(self) -> Ticket:
        """Tell the coordinating shard (the lowest live one) that this group got a preemption signal.

        That shard picks the stop clock and announces it in its CLOCK acknowledgements.
        """
        ticket = Ticket(wire.Op.STOP, "stop request")
        self._send(self.routing.coordinator, ticket, wire.Op.STOP, 0, [], 0)
        return ticket

    def bye(self) -> None:
        """Wait for every outstanding reply, then tell every shard this group leaves."""
        self.drain()
        self.wait(self._broadcast(wire.Op.BYE, 0, "bye"))

    def shutdown(self) -> None:
        """Stop every shard now (administrative; training normally ends with ``bye``)."""
        self.wait(self._broadcast(wire.Op.SHUTDOWN, 0, "shutdown"))

    def drain(self) -> None:
        """Wait until every request sent so far has been answered."""
        for ticket in self.requests.open_tickets():
            self.wait(ticket)

    def wait(self, ticket: Ticket) -> np.ndarray | None:
        """Block (without spinning) until ``ticket`` completes; returns pulled values.

        Raises:
            ShardUnavailableError: a shard replied with an error, or no reply
                arrived for ``timeout`` seconds.
        """
        deadline = time.monotonic() + self.timeout
        if ticket.error:
            raise ShardUnavailableError(ticket.error)
        while not ticket.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                shards = self.requests.shards_awaited(ticket)
                raise ShardUnavailableError(
                    f"group {self.group}: no reply in {self.timeout:g}s to the {ticket.what} "
                    f"from shard(s) {', '.join(f'{s} ({self.endpoints[s]})' for s in shards)}"
                )
            for sock, _ in self._poller.poll(int(min(remaining, self.liveness.heartbeat_interval) * 1000) + 1):
                self._receive_all(sock)
            self._check_heartbeats()
        return ticket.values

    @property
    def traffic(self) -> Traffic:
        """Bytes sent and received, by stage (``framing.Traffic``)."""
        return self.framing.traffic

    @property
    def dead_shards(self) -> list[int]:
        """Shards this client declared (or was told are) dead."""
        return sorted(self.placement.dead)

    def announced(self, clock: int) -> Announcement:
        """Before step ``clock``: whether the coordinating shard announced a stop this group reached, or a
        reshard at this clock (from the replies received so far)."""
        if self.stop_at is not None and clock >= self.stop_at:
            return Announcement.STOP
        if self.reshard_at == clock:
            return Announcement.RESHARD
        return Announcement.NONE

    # -- internals ----------------------------------------------------------

    def _broadcast(self, op: wire.Op, clock: int, what: str) -> Ticket:
        ticket = Ticket(op, what)
        for shard in self.routing.live_shards:
            self._send(shard, ticket, op, clock, [], 0)
        return ticket

    def _check_heartbeats(self) -> None:
        """While waiting: ping every shard quiet for ``heartbeat_interval`` (so shards know this group is alive);
        declare dead a shard silent past ``failover_timeout`` while a reply is awaited."""
        ping, dead = self.liveness.check(self.requests.outstanding, self.routing.live_shards)
        for shard, silent in dead:
            self._declare_dead(shard, silent)
        for shard in ping:
            if shard in self.routing.live_shards:
                self._send(shard, Ticket(wire.Op.PING, "heartbeat"), wire.Op.PING, 0, [], 0)

    def _declare_dead(self, shard: int, silent: float) -> None:
        """Stop using ``shard``: tell every shard, then send its pending pulls (and a stop request) elsewhere.

        Raises:
            RangeLostError: some key range has no live replica left.
        """
        log.warning("group %d: shard %d (%s) did not answer for %.1fs: it is dead to this job; its backups "
                    "take over its key ranges", self.group, shard, self.endpoints[shard], silent)
        self.failovers.append((shard, silent))
        self.routing.without(shard)
        evict = wire.encode_header(wire.Header(wire.Op.EVICT, self.group, 0, shard))
        with contextlib.suppress(zmq.Again):  # zmq.Again: its queue is full, it has not read anything for a long time
            self._sockets[shard].send(evict, zmq.NOBLOCK)  # fencing: if it is alive after all, it stops
        self._disconnect(shard, linger_ms=100)
        for other in self.routing.live_shards:
            self._send(other, Ticket(wire.Op.EVICT, f"eviction of shard {shard}"), wire.Op.EVICT, shard, [], 0)
        for request_id, ticket in self.requests.orphans_of(shard):
            ticket.lost_shard = True
            if ticket.op is wire.Op.PULL:
                assert ticket.keys is not None, "a pull's ticket carries its keys"
                among = ticket.placement.pop(request_id)
                among = np.arange(among) if isinstance(among, int) else among
                self._send_pull(ticket, np.take(ticket.keys, among), among)
            elif ticket.op is wire.Op.STOP:
                self._send(self.routing.coordinator, ticket, wire.Op.STOP, 0, [], 0)
            # pushes: the other replicas have them; clocks, finish, bye, pings: nothing to do

    def _send(self, shard: int, ticket: Ticket, op: wire.Op, clock: int, arrays: list, num_keys: int,
              by_reference: bool = True, extra_flags: int = 0) -> int:
        owed_before = self.requests.outstanding[shard]
        request_id = self.requests.open(shard, ticket)
        dtype = arrays[1].dtype if op is wire.Op.PUSH else wire.DTYPES[0]
        flags, frames = 0, arrays
        if op in (wire.Op.PULL, wire.Op.PUSH):
            flags, frames = self.framing.frames(shard, op, clock, arrays, by_reference)
            if flags & wire.FLAG_KEYS_BY_REF:  # what to send if the shard has forgotten the list
                self.requests.keep_for_resend(request_id, op, clock, arrays, num_keys, extra_flags)
        header = wire.Header(op, self.group, request_id, clock, num_keys, self.width, dtype, flags | extra_flags)
        send_frames(self._sockets[shard], [wire.encode_header(header), *frames])
        self.traffic.count_request(frames)
        self.liveness.awaiting(shard, owed_before)  # silence counts only while a reply is awaited
        return request_id

    def _send_again_with_keys(self, shard: int, ticket: Ticket | None, request_id: int) -> bool:
        """After a key-list miss: send the request again with its keys; ``False`` if it was not sent by reference."""
        request = self.requests.take_resend(request_id)
        if request is None or ticket is None:
            return False
        ticket.pending.discard(request_id)
        again = self._send(shard, ticket, request.op, request.clock, request.arrays, request.num_keys,
                           by_reference=False, extra_flags=request.extra_flags)
        if request.op is wire.Op.PULL:
            ticket.placement[again] = ticket.placement.pop(request_id)
        log.debug("group %d: shard %d had forgotten a key list; sent the keys again", self.group, shard)
        return True

    def _limit_pushes_in_flight(self) -> None:
        self._pushes_in_flight = [t for t in self._pushes_in_flight if not t.done]
        while len(self._pushes_in_flight) > self.max_pushes_in_flight:
            self.wait(self._pushes_in_flight.pop(0))

    def _receive_all(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = recv_frames(sock, zmq.NOBLOCK)
            except zmq.Again:
                return
            shard = self._shard_of_socket[sock]
            self.liveness.heard(shard)
            self.traffic.received += sum(len(frame) for frame in frames)
            self._on_reply(shard, frames)

    def _on_reply(self, shard: int, frames: list[memoryview]) -> None:
        where = f"shard {shard} ({self.endpoints[shard]})"
        try:
            header = wire.decode_header(frames)
        except Exception as e:
            raise ShardUnavailableError(f"{where} sent a bad reply: {e}") from e
        ticket = self.requests.answered(header.request_id, shard)
        if header.op is wire.Op.ERROR:
            if header.flags & wire.FLAG_KEYS_MISSED and self._send_again_with_keys(shard, ticket, header.request_id):
                return
            what = ticket.what if ticket else f"request {header.request_id}"
            message = f"{where} rejected the {what}: {wire.error_text(frames[1])}"
            if ticket is not None:
                ticket.pending.discard(header.request_id)
                ticket.error = message
            raise ShardUnavailableError(message)
        if ticket is None:
            log.warning("reply from shard %d to unknown request %d ignored", shard, header.request_id)
            return
        self.requests.close(header.request_id, ticket)
        ticket.reply_clock = max(ticket.reply_clock, header.clock)
        if header.flags & wire.FLAG_STOP:
            self.stop_at = header.clock
        elif header.flags & wire.FLAG_RESHARD:
            self.reshard_at = header.clock
        if header.op is wire.Op.PULL_REPLY:
            clocks = place_pull_reply(ticket, header.request_id, header, frames, self.width, where)
            if clocks.size != self.shard_clocks.size:
                raise ShardUnavailableError(f"{where} tracks {clocks.size} groups, this job has "
                                            f"{self.shard_clocks.size}")
            np.maximum(self.shard_clocks, clocks, out=self.shard_clocks)

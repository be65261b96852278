"""The requests between one worker group and the shards: sending, waiting for replies, heartbeats and failover.

``PSClient`` (client.py) is the operations on top; this is the machinery under them,
as ps-lite's ``Customer`` and ``Van`` are under its ``KVWorker``. Replies are matched
by request id whenever the client waits, so push acknowledgements never sit on the
critical path. While it waits, the channel pings every shard quiet for
``heartbeat_interval``; a shard silent for ``failover_timeout`` while a reply is
awaited, or one another shard says died, is declared dead: the other shards (and the
suspect, which then stops) are told, its pending pulls and unacknowledged pushes go
again to the promoted backups, later requests avoid it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import numpy as np
import zmq

from ..errors import ShardUnavailableError, WireError
from ..net.curve import JobKeys
from ..net.links import ShardLinks
from ..placement.ring import HashRing
from ..protocol import wire
from ..tier import TierView
from .framing import RequestFraming
from .liveness import Liveness
from .requests import RequestBook, Resend, Ticket, place_pull_reply
from .routing import Routing
from .written_cuts import WrittenCuts

__all__ = ["ShardChannel"]

log = logging.getLogger(__name__)


class ShardChannel:
    """Requests to the shards on behalf of one group, and their replies.

    Args:
        endpoints: ``tcp://`` endpoint by shard id.
        group: this worker group's id.
        num_groups: groups in the job (size of the vector clock in pull replies).
        ring: the key -> shard ring shared with the shards.
        width: values per key.
        timeout: seconds to wait for any reply before giving up.
        replication: replicas per key range (as the shards were started with).
        heartbeat_interval, failover_timeout: see ``Liveness``.
        framing: the key-cache and compression stages (``RequestFraming``).
        context: ZeroMQ context.
        curve_keys: the job's CURVE keys (``None``: plain TCP).
        route: the address to dial for a shard's endpoint (``ShardLinks``; a simulated network).
    """

    def __init__(self, endpoints: dict[int, str], *, group: int, num_groups: int, ring: HashRing, width: int,
                 timeout: float, replication: int, heartbeat_interval: float, failover_timeout: float,
                 framing: RequestFraming, context: zmq.Context, curve_keys: JobKeys | None,
                 route: Callable[[str], str] | None = None) -> None:
        self.group = group
        self.width = width
        self.timeout = timeout
        self.routing = Routing(ring=ring, replication=replication)
        self.liveness = Liveness(heartbeat_interval=heartbeat_interval, failover_timeout=failover_timeout)
        self.requests = RequestBook()
        self.written_cuts = WrittenCuts()
        self.framing = framing
        self.links = ShardLinks(context=context, curve_keys=curve_keys, route=route)
        self.shard_clocks = np.zeros(num_groups, dtype=np.int64)  # every group's clock, as the shards last said
        self.failovers: list[tuple[int, float]] = []  # (dead shard, seconds it was silent)
        self.stop_at: int | None = None  # the stop clock the coordinating shard announced (preemption)
        self.reshard_at: int | None = None  # the clock at which it announced the tier's shards change
        self._writer = secrets.randbits(64)  # names this client's push sequences (a restarted leader is another)
        self._next_sequence = 1
        for shard, endpoint in endpoints.items():
            self.connect(shard, endpoint)
        if self.replicated:  # and learn of deaths and restarts before the first request is routed
            self.wait(self.tell_peers())

    def tell_peers(self, only: int | None = None) -> Ticket:
        """Tell every shard (or ``only`` that one) where the others are (a primary forwards pushes to its backups);
        each answers with the deaths, restarts and retirements it knows of (``SHARD_DOWN``, ``SHARD_UP``,
        ``SHARD_RETIRED``), then its ACK."""
        view = TierView(dict(self.links.endpoints), self.routing.placement.replication)
        ticket = Ticket(wire.Op.PEERS, "shard endpoints")
        for shard in self.links.endpoints if only is None else [only]:
            self.send(shard, ticket, wire.Op.PEERS, 0, [view.to_bytes()], 0)
        return ticket

    def connect(self, shard: int, endpoint: str) -> None:
        self.links.connect(shard, endpoint)
        self.requests.outstanding[shard] = 0
        self.liveness.track(shard)
        self.framing.connected(shard)

    def disconnect(self, shard: int, linger_ms: int = 1000) -> None:
        self.links.disconnect(shard, linger_ms)
        self.requests.outstanding[shard] = 0

    @property
    def replicated(self) -> bool:
        """Whether key ranges have backups (pushes then carry a sequence and are sent again on failover)."""
        return self.routing.placement.replication > 1

    def new_sequence(self) -> int:
        """A sequence number for one replicated push message (kept by every copy sent of it)."""
        self._next_sequence += 1
        return self._next_sequence - 1

    def send(self, shard: int, ticket: Ticket, op: wire.Op, clock: int, arrays: list, num_keys: int,
             *, by_reference: bool = True, extra_flags: int = 0, sequence: int | None = None) -> int:
        """Send one request on ``ticket`` (keys and values through the framing stages); its request id.

        Args:
            sequence: a replicated push's sequence number (``new_sequence``; the same when sent again).
        """
        owed_before = self.requests.outstanding[shard]
        request_id = self.requests.open(shard, ticket)
        dtype = arrays[1].dtype if op is wire.Op.PUSH else wire.DTYPES[0]
        flags, frames = 0, arrays
        if op in (wire.Op.PULL, wire.Op.PUSH):
            flags, frames = self.framing.frames(shard, op, clock, arrays, by_reference)
            if flags & wire.FLAG_KEYS_BY_REF or sequence is not None:  # what to send again, keys and all
                self.requests.keep_for_resend(request_id, Resend(op, clock, arrays, num_keys, extra_flags, sequence))
        if sequence is not None:
            acked_below = self.requests.lowest_unacknowledged(default=self._next_sequence)
            frames = [*frames, wire.PushSequence(self._writer, sequence, acked_below).to_frame()]
        header = wire.Header(op, self.group, request_id, clock, num_keys, self.width, dtype, flags | extra_flags)
        self.links.send(shard, [wire.encode_header(header), *frames])
        self.framing.traffic.count_request(frames)
        self.liveness.awaiting(shard, owed_before)  # silence counts only while a reply is awaited
        return request_id

    def send_pull(self, ticket: Ticket, keys: np.ndarray, among: np.ndarray | None = None) -> None:
        """Ask the acting primaries for ``keys`` (``among``: their positions in the ticket's keys; None = all)."""
        assert ticket.keys is not None, "a pull's ticket carries its keys"
        parts = self.routing.pull_parts(keys)
        if ticket.values is None and (among is not None or len(parts) != 1 or parts[0][1] is not None):
            ticket.values = np.empty((ticket.keys.size, self.width), dtype=np.float32)  # else: the reply is used
        for shard, positions in parts:
            part = np.ascontiguousarray(keys) if positions is None else np.take(keys, positions)
            request_id = self.send(shard, ticket, wire.Op.PULL, ticket.clock, [part], part.size)
            if among is not None:
                positions = among if positions is None else among[positions]
            ticket.placement[request_id] = part.size if positions is None else positions

    def broadcast(self, op: wire.Op, clock: int, what: str, frames: list | None = None) -> Ticket:
        """Send ``op`` without keys (with ``frames`` after its header) to every live shard, on one ticket."""
        ticket = Ticket(op, what)
        for shard in self.routing.live_shards:
            self.send(shard, ticket, op, clock, frames or [], 0)
        return ticket

    def wait(self, ticket: Ticket) -> np.ndarray | None:
        """Block (without spinning) until ``ticket`` completes; returns pulled values.

        Raises:
            ShardUnavailableError: a shard replied with an error, or no reply
                arrived for ``timeout`` seconds.
        """
        if ticket.error:
            raise ShardUnavailableError(ticket.error)

        def silent() -> str:
            named = ", ".join(f"{s} ({self.links.endpoints[s]})" for s in self.requests.shards_awaited(ticket))
            return f"the {ticket.what} from shard(s) {named}"

        self.wait_for(lambda: ticket.done, silent)
        return ticket.values

    def wait_for(self, done: Callable[[], bool], what: Callable[[], str]) -> None:
        """Take replies (without spinning) until ``done()``; ``what()`` names what was awaited if it times out.

        Raises:
            ShardUnavailableError: a shard replied with an error, or ``done()`` stayed false for ``timeout``
                seconds.
        """
        deadline = time.monotonic() + self.timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ShardUnavailableError(f"group {self.group}: no reply in {self.timeout:g}s to {what()}")
            for shard, frames in self.links.receive(int(min(remaining, self.liveness.heartbeat_interval) * 1000) + 1):
                self.liveness.heard(shard)
                self.framing.traffic.received += sum(len(frame) for frame in frames)
                self._on_reply(shard, frames)
            self._check_heartbeats()

    def drain(self) -> None:
        """Wait until every request sent so far has been answered."""
        for ticket in self.requests.open_tickets():
            self.wait(ticket)

    def _check_heartbeats(self) -> None:
        """Ping every shard quiet for ``heartbeat_interval`` (so shards know this group is alive);
        declare dead a shard silent past ``failover_timeout`` while a reply is awaited."""
        ping, dead = self.liveness.check(self.requests.outstanding, self.routing.live_shards)
        for shard, silent in dead:
            self._declare_dead(shard, silent)
        for shard in ping:
            if shard in self.routing.live_shards:
                self.send(shard, Ticket(wire.Op.PING, "heartbeat"), wire.Op.PING, 0, [], 0)

    def _declare_dead(self, shard: int, silent: float | None) -> None:
        """Stop using ``shard``: tell every shard, then send its pending pulls (and a stop request) elsewhere.

        Args:
            silent: seconds it did not answer, or ``None`` when another shard said it died.

        Raises:
            RangeLostError: some key range has no live replica left.
        """
        why = f"did not answer for {silent:.1f}s" if silent is not None else "died"
        log.warning("group %d: %s %s: it is dead to this job; its backups take over its key ranges", self.group,
                    self.links.where(shard), why)
        self.failovers.append((shard, silent if silent is not None else 0.0))
        self.written_cuts.shard_died(shard)
        self.routing.without(shard)
        evicted = wire.encode_shard_id(shard)
        fence = wire.encode_header(wire.Header(wire.Op.EVICT, self.group, 0, 0))
        self.links.send_if_room(shard, [fence, evicted])  # fencing: if it is alive after all, it stops
        self.disconnect(shard, linger_ms=100)
        for other in self.routing.live_shards:
            self.send(other, Ticket(wire.Op.EVICT, f"eviction of shard {shard}"), wire.Op.EVICT, 0, [evicted], 0)
        self._send_again_elsewhere(shard)

    def _send_again_elsewhere(self, shard: int) -> None:
        """``shard``'s process is gone: send what it owes elsewhere (pulls, a stop request, unacknowledged pushes)."""
        orphans = self.requests.orphans_of(shard)
        self.requests.sending_again = [resend for _, _, resend in orphans if resend is not None]
        try:
            self._send_orphans_again(orphans)
        finally:
            self.requests.sending_again = []

    def _send_orphans_again(self, orphans: list[tuple[int, Ticket, Resend | None]]) -> None:
        for request_id, ticket, resend in orphans:
            ticket.lost_shard = True
            if ticket.op is wire.Op.PULL:
                assert ticket.keys is not None, "a pull's ticket carries its keys"
                among = ticket.placement.pop(request_id)
                among = np.arange(among) if isinstance(among, int) else among
                self.send_pull(ticket, np.take(ticket.keys, among), among)
            elif ticket.op is wire.Op.STOP:
                self.send(self.routing.coordinator, ticket, wire.Op.STOP, 0, [], 0)
            elif resend is not None and resend.op is wire.Op.PUSH and resend.sequence is not None:
                self._push_again(ticket, resend)
            # clocks, finish, bye, pings: nothing to do

    def _push_again(self, ticket: Ticket, push: Resend) -> None:
        """Send a push the dead shard did not acknowledge to its keys' new primaries (which apply it once: the
        backups may have it already). Without ``FLAG_CLOCK``: each live shard has this step's clock already."""
        keys, grads = push.arrays
        for shard, positions in self.routing.pull_parts(keys):
            arrays = [keys, grads] if positions is None else [np.take(keys, positions),
                                                              np.take(grads, positions, axis=0)]
            self.send(shard, ticket, wire.Op.PUSH, push.clock, arrays, arrays[0].size,
                      extra_flags=push.extra_flags & ~wire.FLAG_CLOCK, sequence=push.sequence)

    def _told_shard_down(self, teller: int, frames: list[memoryview]) -> None:
        """A shard says another died (its supervisor saw it exit): fail over now, not after the timeout."""
        try:
            dead = wire.decode_shard_id(frames[1])
        except WireError as e:
            raise ShardUnavailableError(f"{self.links.where(teller)} sent a bad SHARD_DOWN: {e}") from e
        if dead not in self.links.endpoints:  # a shard this client never used
            self.routing.placement = self.routing.placement.without(dead)
        elif dead in self.routing.live_shards and dead != teller:
            log.warning("group %d: shard %d says %s died", self.group, teller, self.links.where(dead))
            self._declare_dead(dead, silent=None)

    def _told_shard_up(self, teller: int, frames: list[memoryview]) -> None:
        """A shard says a dead shard runs again and is being filled: connect to it, a live backup from now on."""
        try:
            rejoined = wire.decode_shard_id(frames[1])
            endpoint = bytes(frames[2]).decode()
        except (WireError, UnicodeDecodeError) as e:
            raise ShardUnavailableError(f"{self.links.where(teller)} sent a bad SHARD_UP: {e}") from e
        placement = self.routing.placement
        if not endpoint or (rejoined in placement.rejoined and self.links.endpoints.get(rejoined) == endpoint):
            return  # told already by another shard
        if rejoined in placement.retired:  # the shards refuse its REJOIN: it stops again
            return
        log.warning("group %d: shard %d says shard %d runs again at %s", self.group, teller, rejoined, endpoint)
        self.routing.rejoined(rejoined)
        if self.links.endpoints.get(rejoined) != endpoint or not self.links.connected(rejoined):
            if self.links.connected(rejoined):  # a process this client never knew dead: gone, its replies too
                self.disconnect(rejoined, linger_ms=0)
                self._send_again_elsewhere(rejoined)
            self.connect(rejoined, endpoint)
            self.tell_peers(only=rejoined)

    def _told_shard_retired(self, teller: int, frames: list[memoryview]) -> None:
        """A shard says a dead shard never comes back: route by the placement without it (the acting primaries do
        not change; after a later death, a range's next primary may be one of the shards that took its place)."""
        try:
            retired = wire.decode_shard_id(frames[1])
        except WireError as e:
            raise ShardUnavailableError(f"{self.links.where(teller)} sent a bad SHARD_RETIRED: {e}") from e
        placement = self.routing.placement
        if retired in placement.retired or retired == teller or len(placement.live_shards) <= 1:
            return
        if retired in placement.live_shards and retired in self.links.endpoints:
            self._declare_dead(retired, silent=None)
        log.warning("group %d: shard %d says shard %d is retired: the next shards of the ring hold its ranges",
                    self.group, teller, retired)
        self.routing.retired(retired)

    def _send_again_with_keys(self, shard: int, ticket: Ticket | None, request_id: int) -> bool:
        """After a key-list miss: send the request again with its keys; ``False`` if it was not sent by reference."""
        request = self.requests.take_resend(request_id)
        if request is None or ticket is None:
            return False
        ticket.pending.discard(request_id)
        again = self.send(shard, ticket, request.op, request.clock, request.arrays, request.num_keys,
                          by_reference=False, extra_flags=request.extra_flags, sequence=request.sequence)
        if request.op is wire.Op.PULL:
            ticket.placement[again] = ticket.placement.pop(request_id)
        log.debug("group %d: shard %d had forgotten a key list; sent the keys again", self.group, shard)
        return True

    def _on_reply(self, shard: int, frames: list[memoryview]) -> None:
        where = self.links.where(shard)
        try:
            header = wire.decode_header(frames)
        except Exception as e:
            raise ShardUnavailableError(f"{where} sent a bad reply: {e}") from e
        if header.op is wire.Op.SHARD_DOWN:
            self._told_shard_down(shard, frames)
            return
        if header.op is wire.Op.SHARD_UP:
            self._told_shard_up(shard, frames)
            return
        if header.op is wire.Op.SHARD_RETIRED:
            self._told_shard_retired(shard, frames)
            return
        if header.op is wire.Op.CUT_WRITTEN:
            self.written_cuts.told(shard, header.clock, wire.error_text(frames[1]) if len(frames) > 1 else None)
            return
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
            log.warning("reply from %s to unknown request %d ignored", where, header.request_id)
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

"""The group leader's asynchronous PS client: ``pull``/``push`` return a ticket, ``wait(ticket)`` completes it.

A request is split by the hash ring and sent to all the shards it touches at once.
With replication (``hybrid_ps.placement.replicas``) pulls and pushes go to the acting
primary of their keys; it forwards a push to the backups and acknowledges it once they
have it (``hybrid_ps.server.replication``). The machinery (sockets, request ids, replies, heartbeats, failover)
is ``channel.ShardChannel``; this class is the operations. No mpi4py here.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import zmq

from ..errors import ShardUnavailableError
from ..net.curve import JobKeys
from ..net.links import endpoints_by_shard
from ..placement.replicas import Placement
from ..placement.ring import HashRing
from ..protocol import wire
from ..tier import TierView
from .channel import ShardChannel
from .framing import RequestFraming, Traffic
from .requests import Ticket

__all__ = ["PSClient", "Ticket", "Announcement"]

log = logging.getLogger(__name__)


class Announcement(enum.Enum):
    """What the coordinating shard announced, as it concerns this group now (``PSClient.announced``)."""

    NONE = "none"
    STOP = "stop"  # the stop clock is reached: checkpoint and stop (preemption)
    RESHARD = "reshard"  # the tier's shards change at this clock: write the cut, then ``reshard``


class PSClient:
    """Talk to every PS shard on behalf of one worker group.

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
        curve_keys: the job's CURVE keys (``None``: plain TCP, for shards serving without them).
        route: the address to dial instead of a shard's endpoint (``SimulatedNetwork.route``: a relay that
            delays the traffic; ``None``: the endpoint itself).
    """

    def __init__(
        self,
        endpoints: Sequence[str] | Mapping[int, str],
        group: int,
        num_groups: int,
        ring: HashRing,
        width: int = 1,
        timeout: float = 600.0,
        *,
        max_pushes_in_flight: int = 16,
        context: zmq.Context | None = None,
        replication: int = 1,
        heartbeat_interval: float = 1.0,
        failover_timeout: float = 10.0,
        key_cache: bool = False,
        compression: str = "none",
        compress_values: bool = False,
        curve_keys: JobKeys | None = None,
        route: Callable[[str], str] | None = None,
    ) -> None:
        self.channel = ShardChannel(
            endpoints_by_shard(endpoints), group=group, num_groups=num_groups, ring=ring, width=width,
            timeout=timeout, replication=replication, heartbeat_interval=heartbeat_interval,
            failover_timeout=failover_timeout, framing=RequestFraming(key_cache, compression, compress_values),
            context=context or zmq.Context.instance(), curve_keys=curve_keys, route=route)
        self.max_pushes_in_flight = max_pushes_in_flight
        self._pushes_in_flight: list[Ticket] = []

    def __enter__(self) -> PSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket."""
        self.channel.links.close()

    @property
    def placement(self) -> Placement:
        """The ring, its replicas and the shards known dead, as this client routes by now."""
        return self.channel.routing.placement

    @property
    def traffic(self) -> Traffic:
        """Bytes sent and received, by stage (``framing.Traffic``)."""
        return self.channel.framing.traffic

    @property
    def shard_clocks(self) -> np.ndarray:
        """Every group's clock, as the shards' latest pull replies gave it."""
        return self.channel.shard_clocks

    # -- operations ---------------------------------------------------------

    def pull(self, keys: np.ndarray, clock: int) -> Ticket:
        """Ask for the values of sorted unique ``keys`` for step ``clock``.

        Every shard owning some of the keys is asked at once; ``wait`` returns
        a ``[len(keys), width]`` float32 array.
        """
        ticket = Ticket(wire.Op.PULL, f"pull of {keys.size} keys at clock {clock}", keys=keys, clock=clock)
        self.channel.send_pull(ticket, keys)
        return ticket

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
        channel = self.channel
        grads = np.ascontiguousarray(grads).reshape(keys.size, channel.width)
        ticket = Ticket(wire.Op.PUSH, f"push of {keys.size} keys at clock {clock}")
        messages = []
        for shard, shard_positions in channel.routing.pull_parts(keys):
            for positions in channel.framing.split_push(shard, clock, keys, shard_positions):
                if positions is None:
                    messages.append((shard, [np.ascontiguousarray(keys), grads], keys.size))
                else:
                    messages.append((shard, [np.take(keys, positions), np.take(grads, positions, axis=0)],
                                     positions.size))
        last_to = {shard: i for i, (shard, _, _) in enumerate(messages)} if tell_clock else {}
        for i, (shard, arrays, count) in enumerate(messages):
            flags = wire.FLAG_CLOCK if last_to.get(shard) == i else 0
            sequence = channel.new_sequence() if channel.replicated else None
            channel.send(shard, ticket, wire.Op.PUSH, clock, arrays, count, extra_flags=flags, sequence=sequence)
        if tell_clock:
            for shard in channel.routing.live_shards:
                if shard not in last_to:
                    channel.send(shard, ticket, wire.Op.CLOCK, clock + 1, [], 0)
        self._pushes_in_flight = [t for t in self._pushes_in_flight if not t.done] + [ticket]
        while len(self._pushes_in_flight) > self.max_pushes_in_flight:
            self.wait(self._pushes_in_flight.pop(0))
        return ticket

    def clock(self, clock: int) -> Ticket:
        """Tell every shard that this group finished ``clock`` steps."""
        return self.channel.broadcast(wire.Op.CLOCK, clock, f"clock {clock}")

    def join(self) -> int:
        """Tell every shard that this group starts; returns the clock it continues at (the latest any shard gave)."""
        ticket = self.channel.broadcast(wire.Op.JOIN, 0, "join")
        self.wait(ticket)
        return ticket.reply_clock

    def finish(self) -> Ticket:
        """Tell every shard that this group finished training."""
        return self.channel.broadcast(wire.Op.FINISH, 0, "finish")

    def checkpoint(self, clock: int) -> int | None:
        """Ask every live shard to checkpoint the cut at ``clock`` (``FINAL_CLOCK``: after training).

        Blocks until every shard took its snapshot of the cut (its file may still be being written:
        ``cut_written``); returns the cut's clock, or ``None`` if a shard died meanwhile (its part of the
        cut may be missing: not to be published).
        """
        shards = self.channel.routing.live_shards
        ticket = self.channel.broadcast(wire.Op.CHECKPOINT, clock, f"checkpoint at clock {clock}")
        self.wait(ticket)
        if ticket.lost_shard:
            return None
        self.channel.written_cuts.expect(ticket.reply_clock, shards)
        return ticket.reply_clock

    def cut_written(self, cut: int, wait: bool = False) -> str | bool | None:
        """Whether every shard wrote its file of ``cut`` (``True``), why one could not (text), or ``None`` while
        some write (``wait``: block until they are done).

        Raises:
            ShardUnavailableError: ``wait`` and a shard neither wrote nor died within the timeout.
        """
        cuts = self.channel.written_cuts
        if wait:
            self.channel.wait_for(lambda: cuts.state(cut) is not None, lambda: f"the file of checkpoint {cut}")
        return cuts.state(cut)

    def reshard(self, cut: int, view: TierView) -> None:
        """Switch to the tier's new shards at the cut ``cut`` (taken by ``checkpoint``).

        Waits until every shard wrote its file of the cut (the ranges move through them) and for every
        reply still due from the old shards, asks old and new shards to move the ranges (each answers
        once every group asked), then routes by the new ring.

        Raises:
            ShardUnavailableError: a shard could not write its file of the cut.
        """
        channel, routing = self.channel, self.channel.routing
        written = self.cut_written(cut, wait=True)
        if written is not True:
            raise ShardUnavailableError(f"the tier cannot reshard at clock {cut}: {written}")
        self.drain()
        for shard, endpoint in view.endpoints.items():
            if not channel.links.connected(shard):
                channel.connect(shard, endpoint)
        ticket = Ticket(wire.Op.RESHARD, f"reshard at clock {cut}")
        for shard in sorted(set(routing.live_shards) | set(view.endpoints)):
            channel.send(shard, ticket, wire.Op.RESHARD, cut, [view.to_bytes()], 0)
        self.wait(ticket)
        for shard in set(routing.live_shards) - set(view.endpoints):
            channel.disconnect(shard)
        routing.switch_to(view)
        channel.reshard_at = None
        log.info("group %d: now on shards %s", channel.group, view.shard_ids)

    def request_stop(self) -> Ticket:
        """Tell the coordinating shard (the lowest live one) that this group got a preemption signal.

        That shard picks the stop clock and announces it in its CLOCK acknowledgements.
        """
        ticket = Ticket(wire.Op.STOP, "stop request")
        self.channel.send(self.channel.routing.coordinator, ticket, wire.Op.STOP, 0, [], 0)
        return ticket

    def bye(self) -> None:
        """Wait for every outstanding reply, then tell every shard this group leaves."""
        self.drain()
        self.wait(self.channel.broadcast(wire.Op.BYE, 0, "bye"))

    def shutdown(self) -> None:
        """Stop every shard now (administrative; training normally ends with ``bye``)."""
        self.wait(self.channel.broadcast(wire.Op.SHUTDOWN, 0, "shutdown"))

    def drain(self) -> None:
        """Wait until every request sent so far has been answered."""
        self.channel.drain()

    def wait(self, ticket: Ticket) -> np.ndarray | None:
        """Block (without spinning) until ``ticket`` completes; returns pulled values.

        Raises:
            ShardUnavailableError: a shard replied with an error, or no reply
                arrived for the client's ``timeout`` seconds.
        """
        return self.channel.wait(ticket)

    def announced(self, clock: int) -> Announcement:
        """Before step ``clock``: whether the coordinating shard announced a stop this group reached, or a
        reshard at this clock (from the replies received so far)."""
        stop_at, reshard_at = self.channel.stop_at, self.channel.reshard_at
        if stop_at is not None and clock >= stop_at:
            return Announcement.STOP
        if reshard_at == clock:
            return Announcement.RESHARD
        return Announcement.NONE

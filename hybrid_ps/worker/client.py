"""The group leader's asynchronous PS client: ``pull``/``push`` return a ticket, ``wait(ticket)`` completes it.

One DEALER socket per shard. A request is split by the hash ring and sent to
all the shards it touches at once; replies are matched by request id whenever
the client waits, so push acknowledgements never sit on the critical path.
No mpi4py here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import zmq

from .. import wire
from ..errors import ShardUnavailableError
from ..partition import HashRing
from ..transport import connect_dealer, recv_frames, send_frames

__all__ = ["PSClient", "Ticket"]

log = logging.getLogger(__name__)


@dataclass
class Ticket:
    """An operation in flight: which requests it still waits for and where replies go."""

    op: wire.Op
    what: str
    pending: set[int] = field(default_factory=set)
    values: np.ndarray | None = None
    placement: dict[int, np.ndarray | int] = field(default_factory=dict)  # request -> positions (int: all, in order)
    error: str | None = None  # a shard's rejection: waiting on the ticket again raises it again
    reply_clock: int = 0  # the clock field of the last reply (a checkpoint's cut)
    shard_clocks: np.ndarray | None = None  # pulls: each group's clock when the shards answered (min over shards)

    @property
    def done(self) -> bool:
        """Whether every shard answered."""
        return not self.pending


class PSClient:
    """Talk to every PS shard on behalf of one worker group.

    Args:
        endpoints: ``tcp://`` endpoint of each shard, indexed by shard id.
        group: this worker group's id.
        num_groups: groups in the job (size of the vector clock in pull replies).
        ring: the key -> shard ring shared with the shards.
        width: values per key.
        timeout: seconds to wait for any reply before giving up.
        max_pushes_in_flight: unacknowledged pushes allowed before ``push`` waits.
        context: ZeroMQ context (default: the process-wide instance).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        group: int,
        num_groups: int,
        ring: HashRing,
        width: int = 1,
        timeout: float = 600.0,
        max_pushes_in_flight: int = 16,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.group = group
        self.ring = ring
        self.width = width
        self.timeout = timeout
        self.max_pushes_in_flight = max_pushes_in_flight
        self.shard_clocks = np.zeros(num_groups, dtype=np.int64)
        context = context or zmq.Context.instance()
        self._sockets = [connect_dealer(context, endpoint) for endpoint in self.endpoints]
        self._poller = zmq.Poller()
        for sock in self._sockets:
            self._poller.register(sock, zmq.POLLIN)
        self._shard_of_socket = {sock: shard for shard, sock in enumerate(self._sockets)}
        self._next_id = 1
        self._tickets: dict[int, Ticket] = {}
        self._shard_of_request: dict[int, int] = {}
        self._pushes_in_flight: list[Ticket] = []
        self.stop_at: int | None = None  # set when shard 0 announces a stop clock (preemption)

    def __enter__(self) -> "PSClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket."""
        for sock in self._sockets:
            if not sock.closed:
                sock.close()

    # -- operations ---------------------------------------------------------

    def pull(self, keys: np.ndarray, clock: int) -> Ticket:
        """Ask for the values of sorted unique ``keys`` for step ``clock``.

        Every shard owning some of the keys is asked at once; ``wait`` returns
        a ``[len(keys), width]`` float32 array.
        """
        ticket = Ticket(wire.Op.PULL, f"pull of {keys.size} keys at clock {clock}")
        parts = self._split(keys)
        if len(parts) != 1 or parts[0][1] is not None:  # a single shard's reply becomes the values as it is
            ticket.values = np.empty((keys.size, self.width), dtype=np.float32)
        for shard, positions in parts:
            part = np.ascontiguousarray(keys) if positions is None else np.take(keys, positions)
            request_id = self._send(shard, ticket, wire.Op.PULL, clock, [part], part.size)
            ticket.placement[request_id] = part.size if positions is None else positions
        return ticket

    def push(self, keys: np.ndarray, grads: np.ndarray, clock: int) -> Ticket:
        """Send ``grads`` (``[len(keys), width]`` float32) for sorted unique ``keys``.

        Returns at once; the acknowledgements are collected by later waits.
        Blocks only if ``max_pushes_in_flight`` pushes are still unacknowledged.
        The arrays may be sent zero-copy: do not modify them after the call.
        """
        grads = np.ascontiguousarray(grads, dtype=np.float32).reshape(keys.size, self.width)
        ticket = Ticket(wire.Op.PUSH, f"push of {keys.size} keys at clock {clock}")
        for shard, positions in self._split(keys):
            if positions is None:
                self._send(shard, ticket, wire.Op.PUSH, clock, [np.ascontiguousarray(keys), grads], keys.size)
            else:
                part = [np.take(keys, positions), np.take(grads, positions, axis=0)]
                self._send(shard, ticket, wire.Op.PUSH, clock, part, positions.size)
        self._pushes_in_flight.append(ticket)
        self._limit_pushes_in_flight()
        return ticket

    def clock(self, clock: int) -> Ticket:
        """Tell every shard that this group finished ``clock`` steps."""
        return self._broadcast(wire.Op.CLOCK, clock, f"clock {clock}")

    def finish(self) -> Ticket:
        """Tell every shard that this group finished training."""
        return self._broadcast(wire.Op.FINISH, 0, "finish")

    def checkpoint(self, clock: int) -> int:
        """Ask every shard to checkpoint the cut at ``clock`` (``FINAL_CLOCK``: after training).

        Blocks until every shard wrote its file; returns the cut's clock.
        """
        ticket = self._broadcast(wire.Op.CHECKPOINT, clock, f"checkpoint at clock {clock}")
        self.wait(ticket)
        return ticket.reply_clock

    def request_stop(self) -> Ticket:
        """Tell shard 0 that this group got a preemption signal (it picks the stop clock)."""
        ticket = Ticket(wire.Op.STOP, "stop request")
        self._send(0, ticket, wire.Op.STOP, 0, [], 0)
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
        for ticket in list(self._tickets.values()):
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
                shards = sorted({self._shard_of_request.get(r, -1) for r in ticket.pending} - {-1})
                raise ShardUnavailableError(
                    f"group {self.group}: no reply in {self.timeout:g}s to the {ticket.what} "
                    f"from shard(s) {', '.join(f'{s} ({self.endpoints[s]})' for s in shards)}"
                )
            for sock, _ in self._poller.poll(int(min(remaining, 1.0) * 1000) + 1):
                self._receive_all(sock)
        return ticket.values

    # -- internals ----------------------------------------------------------

    def _split(self, keys: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
        """``(shard, positions of its keys)`` for every shard owning some; ``None``: all the keys, in order."""
        if not keys.size:
            return []
        if self.ring.num_shards == 1:
            return [(int(self.ring.shard_ids[0]), None)]
        parts = []
        for shard, positions in zip(self.ring.shard_ids.tolist(), self.ring.positions_by_shard(keys)):
            if positions.size == keys.size:
                return [(shard, None)]  # every key on one shard: no gather, no scatter
            if positions.size:
                parts.append((shard, positions))
        return parts

    def _broadcast(self, op: wire.Op, clock: int, what: str) -> Ticket:
        ticket = Ticket(op, what)
        for shard in range(len(self._sockets)):
            self._send(shard, ticket, op, clock, [], 0)
        return ticket

    def _send(self, shard: int, ticket: Ticket, op: wire.Op, clock: int, arrays: list, num_keys: int) -> int:
        request_id = self._next_id
        self._next_id += 1
        header = wire.Header(op, self.group, request_id, clock, num_keys, self.width)
        send_frames(self._sockets[shard], [wire.encode_header(header), *arrays])
        ticket.pending.add(request_id)
        self._tickets[request_id] = ticket
        self._shard_of_request[request_id] = shard
        return request_id

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
            self._on_reply(self._shard_of_socket[sock], frames)

    def _on_reply(self, shard: int, frames: list[memoryview]) -> None:
        try:
            header = wire.decode_header(frames)
        except Exception as e:
            raise ShardUnavailableError(f"shard {shard} ({self.endpoints[shard]}) sent a bad reply: {e}") from e
        ticket = self._tickets.pop(header.request_id, None)
        self._shard_of_request.pop(header.request_id, None)
        if header.op is wire.Op.ERROR:
            what = ticket.what if ticket else f"request {header.request_id}"
            message = f"shard {shard} ({self.endpoints[shard]}) rejected the {what}: {wire.error_text(frames[1])}"
            if ticket is not None:
                ticket.pending.discard(header.request_id)
                ticket.error = message
            raise ShardUnavailableError(message)
        if ticket is None:
            log.warning("reply from shard %d to unknown request %d ignored", shard, header.request_id)
            return
        ticket.pending.discard(header.request_id)
        ticket.reply_clock = header.clock
        if header.flags & wire.FLAG_STOP:
            self.stop_at = header.clock
        if header.op is wire.Op.PULL_REPLY:
            positions = ticket.placement.pop(header.request_id)
            asked = positions if isinstance(positions, int) else positions.size
            if header.num_keys != asked:
                raise ShardUnavailableError(
                    f"shard {shard} ({self.endpoints[shard]}) answered {header.num_keys} keys of the {ticket.what}, "
                    f"asked {asked}"
                )
            values = wire.values_from_frame(frames[1], header)
            if ticket.values is None:  # the only reply: keep the received buffer (writable, zero-copy) ...
                # ... unless ZeroMQ stored it unaligned (small messages live inside the message struct):
                # MPI and fast numpy paths need aligned float32
                ticket.values = values if values.flags.aligned else values.copy()
            elif isinstance(positions, int):
                ticket.values[...] = values
            elif self.width == 1:  # a 1-D scatter is ~2x faster than scattering rows of one value
                ticket.values.reshape(-1)[positions] = values.reshape(-1)
            else:
                ticket.values[positions] = values
            clocks = np.frombuffer(frames[2], dtype=np.int64)
            if clocks.size != self.shard_clocks.size:
                raise ShardUnavailableError(
                    f"shard {shard} ({self.endpoints[shard]}) tracks {clocks.size} groups, this job has "
                    f"{self.shard_clocks.size}"
                )
            np.maximum(self.shard_clocks, clocks, out=self.shard_clocks)
            ticket.shard_clocks = clocks.copy() if ticket.shard_clocks is None else np.minimum(ticket.shard_clocks, clocks)

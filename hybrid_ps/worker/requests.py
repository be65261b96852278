"""A client's requests in flight: tickets, request ids, the shard each one awaits, and pull replies put together."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ShardUnavailableError
from ..protocol import wire

__all__ = ["Ticket", "RequestBook", "Resend", "place_pull_reply"]


@dataclass
class Ticket:
    """An operation in flight: which requests it still waits for and where replies go."""

    op: wire.Op
    what: str
    pending: set[int] = field(default_factory=set)
    values: np.ndarray | None = None
    placement: dict[int, np.ndarray | int] = field(default_factory=dict)  # request -> positions (int: all, in order)
    error: str | None = None  # a shard's rejection: waiting on the ticket again raises it again
    reply_clock: int = 0  # the largest clock field of its replies (a checkpoint's cut, a join's clock)
    shard_clocks: np.ndarray | None = None  # pulls: each group's clock when the shards answered (min over shards)
    keys: np.ndarray | None = None  # pulls: the keys asked, to ask again elsewhere if a shard dies
    clock: int = 0  # pulls: the clock asked for
    lost_shard: bool = False  # a shard it waited on died: broadcasts (a checkpoint) may miss that shard

    @property
    def done(self) -> bool:
        """Whether every shard answered."""
        return not self.pending


@dataclass
class Resend:
    """What to send again if a shard has forgotten the key list a request referenced, or (a push with
    replication) died before it acknowledged."""

    op: wire.Op
    clock: int
    arrays: list
    num_keys: int
    extra_flags: int
    sequence: int | None = None  # a replicated push's sequence number (the same in every copy)


class RequestBook:
    """Request ids, the ticket and shard of each request not answered yet, and what each shard still owes."""

    def __init__(self) -> None:
        self._next_id = 1
        self.tickets: dict[int, Ticket] = {}
        self.shard_of: dict[int, int] = {}
        self.outstanding: dict[int, int] = {}  # per shard: requests not answered yet
        self._resends: dict[int, Resend] = {}
        self.sending_again: list[Resend] = []  # orphans of a dead shard not sent again yet: still unacknowledged

    def open(self, shard: int, ticket: Ticket) -> int:
        """A new request to ``shard`` on ``ticket``: its id."""
        request_id = self._next_id
        self._next_id += 1
        ticket.pending.add(request_id)
        self.tickets[request_id] = ticket
        self.shard_of[request_id] = shard
        self.outstanding[shard] = self.outstanding.get(shard, 0) + 1
        return request_id

    def keep_for_resend(self, request_id: int, resend: Resend) -> None:
        """Keep what the request would send again (with its keys themselves) until it is answered."""
        self._resends[request_id] = resend

    def take_resend(self, request_id: int) -> Resend | None:
        return self._resends.pop(request_id, None)

    def lowest_unacknowledged(self, default: int) -> int:
        """The lowest sequence number of the replicated pushes not answered yet, those being sent again after a
        failover included (``default`` if none)."""
        kept = (r.sequence for r in [*self._resends.values(), *self.sending_again] if r.sequence is not None)
        return min(kept, default=default)

    def answered(self, request_id: int, shard: int) -> Ticket | None:
        """A reply arrived: the request's ticket (``None``: unknown request), no longer owed by ``shard``."""
        if self.shard_of.pop(request_id, None) is not None:
            self.outstanding[shard] -= 1
        return self.tickets.pop(request_id, None)

    def close(self, request_id: int, ticket: Ticket) -> None:
        """The request is done with (answered, or superseded by another request on the same ticket)."""
        ticket.pending.discard(request_id)
        self._resends.pop(request_id, None)

    def orphans_of(self, shard: int) -> list[tuple[int, Ticket, Resend | None]]:
        """Forget every request ``shard`` still owes (it died): ``(request id, ticket, what to send again)``."""
        orphans = [(r, self.tickets.pop(r), self._resends.get(r)) for r, s in list(self.shard_of.items())
                   if s == shard]
        for request_id, ticket, _ in orphans:
            del self.shard_of[request_id]
            self.close(request_id, ticket)
        self.outstanding[shard] = 0
        return orphans

    def shards_awaited(self, ticket: Ticket) -> list[int]:
        return sorted({self.shard_of[r] for r in ticket.pending if r in self.shard_of})

    def open_tickets(self) -> list[Ticket]:
        return list(self.tickets.values())


def place_pull_reply(ticket: Ticket, request_id: int, header: wire.Header, frames: list[memoryview], width: int,
                     where: str) -> np.ndarray:
    """Put a PULL_REPLY's values where its keys sit in the ticket's keys; the groups' clocks it carries.

    Raises:
        ShardUnavailableError: the reply does not answer what was asked (``where`` names the shard).
    """
    positions = ticket.placement.pop(request_id)
    asked = positions if isinstance(positions, int) else positions.size
    if header.num_keys != asked:
        raise ShardUnavailableError(f"{where} answered {header.num_keys} keys of the {ticket.what}, asked {asked}")
    values = wire.values_from_frame(frames[1], header)
    if ticket.values is None:  # the only reply: keep the received buffer (writable, zero-copy) ...
        # ... unless ZeroMQ stored it unaligned (small messages live inside the message struct):
        # MPI and fast numpy paths need aligned float32
        ticket.values = values if values.flags.aligned else values.copy()
    elif isinstance(positions, int):
        ticket.values[...] = values
    elif width == 1:  # a 1-D scatter is ~2x faster than scattering rows of one value
        ticket.values.reshape(-1)[positions] = values.reshape(-1)
    else:
        ticket.values[positions] = values
    clocks = np.frombuffer(frames[2], dtype=np.int64)
    ticket.shard_clocks = clocks.copy() if ticket.shard_clocks is None else np.minimum(ticket.shard_clocks, clocks)
    return clocks

"""Every reply a shard sends, on its ROUTER socket: ACKs, pulled values and errors."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import zmq

from ..net.sockets import send_frames
from ..protocol import wire
from ..protocol.staleness import VectorClock
from .cuts import CutReplies

__all__ = ["Replies"]

log = logging.getLogger(__name__)

Announcement = tuple[int, int] | None
"""``(flag, clock)`` the ACK of a group's clock carries (``FLAG_STOP`` or ``FLAG_RESHARD``), or nothing."""


class Replies:
    """Replies to requests: each carries the request's group and id.

    Args:
        socket: the shard's ROUTER socket.
        shard_id: for the log.
        clock: the SSP vector clock (an ACK carries its slowest clock, a pull reply every group's).
        announcement: what the ACK of a group's clock announces now.
    """

    def __init__(self, *, socket: zmq.Socket, shard_id: int, clock: VectorClock,
                 announcement: Callable[[], Announcement]) -> None:
        self.socket = socket
        self.shard_id = shard_id
        self.clock = clock
        self._announcement = announcement

    def ack(self, identity: bytes, request: wire.Header) -> None:
        """The ACK of ``request``: with a stop or reshard clock if it told the group's clock and one is due."""
        announced = self._announcement() if is_clock(request) else None
        if announced is not None:
            flag, clock = announced
            header = wire.Header(wire.Op.ACK, request.group, request.request_id, clock, flags=flag)
        else:
            header = wire.Header(wire.Op.ACK, request.group, request.request_id, self.clock.min_clock())
        self._send(identity, [wire.encode_header(header)])

    def ack_with(self, identity: bytes, request: wire.Header, clock: int, frame: bytes | None = None) -> None:
        """An ACK of ``request`` carrying ``clock`` (a cut, a join or reshard clock; the rows a REJOIN filled),
        and ``frame`` (the shards as this one knows them, to a supervisor)."""
        header = wire.encode_header(wire.Header(wire.Op.ACK, request.group, request.request_id, clock))
        self._send(identity, [header] if frame is None else [header, frame])

    def values(self, identity: bytes, request: wire.Header, values: np.ndarray) -> None:
        """The PULL_REPLY of ``request``: ``values`` (``[keys, width]``) and every group's clock."""
        num_keys, width = values.shape
        header = wire.Header(wire.Op.PULL_REPLY, request.group, request.request_id, self.clock.min_clock(),
                             num_keys, width)
        self._send(identity, [wire.encode_header(header), values, self.clock.effective()])

    def error(self, identity: bytes, request: wire.Header | None, text: str, flags: int = 0) -> None:
        header = wire.Header(wire.Op.ERROR, request.group if request else 0, request.request_id if request else 0,
                             flags=flags)
        self._send(identity, [wire.encode_header(header), text.encode("utf-8")[:4096]])

    def shard_down(self, identity: bytes, group: int, shard: int) -> None:
        """Tell a client, unasked, that ``shard`` died (``SHARD_DOWN``: it fails over at once)."""
        header = wire.encode_header(wire.Header(wire.Op.SHARD_DOWN, group, 0, 0))
        self._send(identity, [header, wire.encode_shard_id(shard)])

    def shard_up(self, identity: bytes, group: int, shard: int, endpoint: str) -> None:
        """Tell a client, unasked, that dead ``shard`` runs again at ``endpoint`` (``SHARD_UP``), filled."""
        header = wire.encode_header(wire.Header(wire.Op.SHARD_UP, group, 0, 0))
        self._send(identity, [header, wire.encode_shard_id(shard), endpoint.encode()])

    def shard_retired(self, identity: bytes, group: int, shard: int) -> None:
        """Tell a client, unasked, that dead ``shard`` never comes back (``SHARD_RETIRED``): its ranges moved on."""
        header = wire.encode_header(wire.Header(wire.Op.SHARD_RETIRED, group, 0, 0))
        self._send(identity, [header, wire.encode_shard_id(shard)])

    def cut_written(self, replies: CutReplies) -> None:
        """Tell the groups that asked for a cut that this shard's file of it is written (``CUT_WRITTEN``; with the
        error if it could not be)."""
        for identity, request in replies.requests:
            header = wire.encode_header(wire.Header(wire.Op.CUT_WRITTEN, request.group, request.request_id,
                                                    replies.cut))
            error = [] if replies.error is None else [replies.error.encode("utf-8")[:4096]]
            self._send(identity, [header, *error])

    def answer(self, replies: CutReplies) -> None:
        """Answer the requests that waited on a cut: an ACK of the cut, or its error."""
        for identity, header in replies.requests:
            if replies.error is None:
                self.ack_with(identity, header, replies.cut)
            else:
                self.error(identity, header, replies.error)

    def _send(self, identity: bytes, frames: list[bytes | memoryview | np.ndarray]) -> None:
        try:
            send_frames(self.socket, [identity, *frames])
        except zmq.ZMQError as e:  # peer gone (ROUTER_MANDATORY): nobody to answer
            log.warning("shard %d could not reply to a departed client: %s", self.shard_id, e)


def is_clock(request: wire.Header) -> bool:
    """Whether ``request`` tells this group's clock: a CLOCK, or a PUSH with ``FLAG_CLOCK``."""
    return request.op is wire.Op.CLOCK or (request.op is wire.Op.PUSH and bool(request.flags & wire.FLAG_CLOCK))

"""One DEALER socket per shard, and the poller that waits on all of them: transport only, no requests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import zmq

from .curve import JobKeys
from .sockets import connect_dealer, recv_frames, send_frames

__all__ = ["ShardLinks", "endpoints_by_shard"]


class ShardLinks:
    """The sockets of one client of the shards (a group leader, or a primary forwarding to its backups), by shard id.

    Args:
        context: ZeroMQ context.
        curve_keys: the job's CURVE keys (``None``: plain TCP).
        also_poll: another poller to register every socket in (a shard's loop, which wakes up for replies too).
        route: the address to dial for a shard's endpoint (a simulated network's relay, ``simulated.py``);
            ``endpoints`` keeps the shards' own, which is what the shards are told.
    """

    def __init__(self, *, context: zmq.Context, curve_keys: JobKeys | None = None,
                 also_poll: zmq.Poller | None = None, route: Callable[[str], str] | None = None) -> None:
        self.endpoints: dict[int, str] = {}
        self._route = route
        self._context = context
        self._curve_keys = curve_keys
        self._pollers = [zmq.Poller()] + ([also_poll] if also_poll is not None else [])
        self._poller = self._pollers[0]
        self._sockets: dict[int, zmq.Socket] = {}
        self._shard_of_socket: dict[zmq.Socket, int] = {}

    def connect(self, shard: int, endpoint: str) -> None:
        sock = connect_dealer(self._context, self._route(endpoint) if self._route else endpoint, self._curve_keys)
        for poller in self._pollers:
            poller.register(sock, zmq.POLLIN)
        self._sockets[shard], self._shard_of_socket[sock] = sock, shard
        self.endpoints[shard] = endpoint

    def connected(self, shard: int) -> bool:
        return shard in self._sockets and not self._sockets[shard].closed

    def disconnect(self, shard: int, linger_ms: int = 1000) -> None:
        sock = self._sockets[shard]
        for poller in self._pollers:
            poller.unregister(sock)
        sock.close(linger=linger_ms)

    def close(self) -> None:
        """Close every socket."""
        for sock in self._sockets.values():
            if not sock.closed:
                sock.close()

    def send(self, shard: int, frames: Sequence[bytes | memoryview | np.ndarray]) -> None:
        send_frames(self._sockets[shard], frames)

    def send_if_room(self, shard: int, frames: Sequence[bytes]) -> None:
        """Send without blocking; dropped if the shard's queue is full (it has read nothing for a long time)."""
        with contextlib.suppress(zmq.Again):
            self._sockets[shard].send_multipart(frames, zmq.NOBLOCK)

    def receive(self, timeout_ms: int) -> Iterator[tuple[int, list[memoryview]]]:
        """Wait up to ``timeout_ms`` for replies; yield every ``(shard, frames)`` that arrived."""
        for sock, _ in self._poller.poll(timeout_ms):
            while not sock.closed:  # a shard declared dead while the replies before were handled is closed
                try:
                    frames = recv_frames(sock, zmq.NOBLOCK)
                except zmq.Again:
                    break
                yield self._shard_of_socket[sock], frames

    def where(self, shard: int) -> str:
        """``shard N (endpoint)``, for messages."""
        return f"shard {shard} ({self.endpoints[shard]})"


def endpoints_by_shard(endpoints: Sequence[str] | Mapping[int, str]) -> dict[int, str]:
    """A list indexed by shard id, or a dict by shard id, as a dict."""
    return dict(endpoints) if isinstance(endpoints, Mapping) else dict(enumerate(endpoints))

"""ZeroMQ plumbing for the PS tier: bind/connect with addresses in errors, zero-copy multipart I/O."""

from __future__ import annotations

import logging
import socket as _socket
from collections.abc import Sequence

import numpy as np
import zmq

from ..errors import ConfigError
from .curve import AUTHENTICATORS, JobKeys

__all__ = ["resolve_bind_host", "bind_router", "close_router", "connect_dealer", "send_frames", "recv_frames"]

log = logging.getLogger(__name__)

HIGH_WATER_MARK = 10_000
"""Messages queued per peer before ZeroMQ applies backpressure."""


def resolve_bind_host(host: str) -> str:
    """Turn the ``cluster.bind_host`` setting into an address to bind and advertise.

    ``"auto"`` is this node's address as the resolver gives it for its hostname
    (reachable by the other nodes of the job), falling back to 127.0.0.1.
    """
    if host != "auto":
        return host
    try:
        return _socket.gethostbyname(_socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _configure(sock: zmq.Socket, linger_ms: int) -> None:
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)


def bind_router(context: zmq.Context, host: str, curve_keys: JobKeys | None = None, linger_ms: int = 1000,
                max_message_bytes: int = -1, kind: int = zmq.ROUTER) -> tuple[zmq.Socket, str]:
    """Bind a ROUTER (or ``kind``) socket to a random port on ``host``.

    Args:
        curve_keys: serve with CURVE and admit only the job's clients (``None``: plain TCP).
        max_message_bytes: peers sending a larger frame are disconnected (-1: no limit).

    Returns:
        ``(socket, endpoint)`` with the ``tcp://host:port`` endpoint to advertise;
        close it with ``close_router``.

    Raises:
        ConfigError: the address cannot be bound (the message names it).
    """
    sock = context.socket(kind)
    _configure(sock, linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if curve_keys is not None:
        AUTHENTICATORS.acquire(context, curve_keys)
        curve_keys.serve(sock)
    try:
        port = sock.bind_to_random_port(f"tcp://{host}")
    except zmq.ZMQError as e:
        close_router(context, sock, curve_keys, 0)
        raise ConfigError(f"cluster.bind_host: cannot bind tcp://{host}: {e}") from e
    return sock, f"tcp://{host}:{port}"


def close_router(context: zmq.Context, sock: zmq.Socket, curve_keys: JobKeys | None,
                 linger_ms: int | None = None) -> None:
    """Close a socket from ``bind_router`` (and release its ZAP handler)."""
    if sock.closed:
        return
    sock.close(linger_ms)
    if curve_keys is not None:
        AUTHENTICATORS.release(context)


def connect_dealer(context: zmq.Context, endpoint: str, curve_keys: JobKeys | None = None, linger_ms: int = 1000,
                   kind: int = zmq.DEALER) -> zmq.Socket:
    """Connect a DEALER (or ``kind``) socket to ``endpoint``, as a CURVE client with ``curve_keys``.

    Raises:
        ConfigError: a bad address (the message names it).
    """
    sock = context.socket(kind)
    _configure(sock, linger_ms)
    if curve_keys is not None:
        curve_keys.connect_as_client(sock)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        raise ConfigError(f"cannot connect to PS endpoint {endpoint!r}: {e}") from e
    return sock


COPY_BELOW = 1 << 20
"""Frames smaller than this are copied into the message (~0.1 ms a MiB): cheaper than zero-copy's
bookkeeping, a free callback through pyzmq's garbage-collector thread, which takes the GIL from the
training loop (~15% of a worker's time with 10^4-key frames)."""


def send_frames(sock: zmq.Socket, frames: Sequence[bytes | memoryview | np.ndarray]) -> None:
    """Send a multipart message: small frames copied, large ones (numpy arrays, buffers) without a copy."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        size = frame.nbytes if isinstance(frame, (np.ndarray, memoryview)) else len(frame)
        # an ndarray is a Buffer, but numpy's stubs declare its __buffer__ only for Python >= 3.12
        sock.send(frame, zmq.SNDMORE if i < last else 0, copy=size < COPY_BELOW)  # type: ignore[arg-type]


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[memoryview]:
    """Receive a multipart message as zero-copy memoryviews."""
    return [frame.buffer for frame in sock.recv_multipart(flags=flags, copy=False)]

"""A TCP relay that delays and rate-limits what it forwards, as a link of a given latency and bandwidth would.

Run: ``python -m hybrid_ps.net.proxy --latency-ms 0.25 --bandwidth-gbit 10 --to tcp://HOST:PORT [--to ...]``
prints one JSON line per route (``{"route": upstream, "endpoint": where to connect instead}``), relays
until SIGINT/SIGTERM and prints what it relayed. Jobs start it through ``simulated.SimulatedNetwork``
(``--control``: commands as JSON lines on stdin, answers on stdout; it exits when stdin closes).

The relay works on bytes, not messages, so it is transparent to ZeroMQ's ZMTP and to CURVE. Every
chunk it reads gets its departure time from ``link_model.Link``: one ``Link`` per direction, shared by
every connection through this relay (one relay per client: the client's network link). It reads at
most ``CHUNK_BYTES`` at a time (a chunk is stored, then forwarded whole) and stops reading a connection
whose queue holds ``QUEUE_LIMIT_BYTES``, which pushes back on the sender as TCP flow control would.
A chunk's arrival is the kernel's receive time (``SO_TIMESTAMPING``), so a relay that wakes up late does
not add its lateness to the model's delay, only to the ``late_seconds`` it counts. It waits in ``select``
with microsecond timeouts (epoll's are milliseconds), never spins, and runs at real-time priority where
allowed (``--no-realtime``: not).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import errno
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from ..errors import ConfigError
from .link_model import Link, LinkStats

__all__ = ["DelayRelay", "parse_tcp_endpoint", "CHUNK_BYTES", "QUEUE_LIMIT_BYTES", "main"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
"""Largest read: a chunk is forwarded whole, so it adds its own serialization once (0.5 ms at 1 Gbit/s)."""

QUEUE_LIMIT_BYTES = 4 << 20
"""Bytes a direction of a connection may hold before the relay stops reading its sender."""

_DRAIN_SECONDS = 2.0
"""On stop, how long queued chunks still get to leave."""

_SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
_RX_SOFTWARE_TIMESTAMPS = (1 << 3) | (1 << 4)  # SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
_ANCILLARY_BYTES = 256

_Handler = Callable[[int], None]


def parse_tcp_endpoint(endpoint: str) -> tuple[str, int]:
    """``tcp://host:port`` (or ``[v6]:port``) as ``(host, port)``.

    Raises:
        ConfigError: not a tcp:// endpoint with a port.
    """
    scheme, sep, rest = endpoint.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or not colon or not host or not port.isdigit():
        raise ConfigError(f"simulated network: cannot relay {endpoint!r} (expected tcp://host:port)")
    return host.strip("[]"), int(port)


class _Direction:
    """One way of a relayed connection: chunks read from ``source`` wait until due, then go to ``sink``."""

    def __init__(self, source: socket.socket, sink: socket.socket, link: Link) -> None:
        self.source = source
        self.sink = sink
        self.link = link
        self.queue: collections.deque[list[Any]] = collections.deque()  # [due, memoryview | None (EOF)]
        self.queued_bytes = 0
        self.eof = False  # the source closed its side: an EOF marker is queued
        self.halted = False  # the relay stops: read no more
        self.shut = False  # the EOF reached the sink (its sending side is shut down)
        self.blocked = False  # the sink's buffer is full: wait until it is writable

    @property
    def reading(self) -> bool:
        return not (self.eof or self.halted) and self.queued_bytes < QUEUE_LIMIT_BYTES

    def due(self) -> float | None:
        """When the next chunk may leave (``None``: nothing to send now)."""
        return self.queue[0][0] if self.queue and not self.blocked else None


class _Connection:
    """One client connection and its upstream connection, relayed both ways."""

    def __init__(self, client: socket.socket, server: socket.socket, up: Link, down: Link) -> None:
        self.client = client
        self.server = server
        self.connecting = True  # the upstream connect is in progress
        self.up = _Direction(client, server, up)
        self.down = _Direction(server, client, down)
        self.closed = False

    def directions(self) -> tuple[_Direction, _Direction]:
        return self.up, self.down

    def events(self, sock: socket.socket) -> int:
        """The selector events ``sock`` waits for now."""
        outgoing, incoming = (self.up, self.down) if sock is self.client else (self.down, self.up)
        mask = selectors.EVENT_READ if outgoing.reading and not (sock is self.server and self.connecting) else 0
        if incoming.blocked or (sock is self.server and self.connecting):
            mask |= selectors.EVENT_WRITE
        return mask


class DelayRelay:
    """Relays TCP connections to upstream endpoints through a simulated link (see the module docstring).

    Args:
        latency: one-way latency in seconds.
        bandwidth: bytes per second of each direction (0 = unlimited).
        listen_host: the address the relay listens on.
    """

    def __init__(self, *, latency: float, bandwidth: float, listen_host: str = "127.0.0.1") -> None:
        self.up = Link(latency=latency, bandwidth=bandwidth)
        self.down = Link(latency=latency, bandwidth=bandwidth)
        self.listen_host = listen_host
        self.connections = 0
        self._selector = selectors.SelectSelector()  # microsecond timeouts (epoll rounds up to milliseconds)
        self._routes: dict[str, str] = {}
        self._listeners: list[socket.socket] = []
        self._active: set[_Connection] = set()
        self._registered: dict[socket.socket, int] = {}
        self._stopping: float | None = None  # the drain deadline once asked to stop
        self._stop_requested = False  # by a signal handler: ``run`` stops at its next round

    # -- routes -------------------------------------------------------------------------------------

    def route(self, endpoint: str) -> str:
        """The endpoint to connect to instead of ``endpoint`` (``tcp://host:port``): a port of this relay.

        Raises:
            ConfigError: ``endpoint`` is not a tcp:// endpoint, its host does not resolve, or the relay cannot
                listen on ``listen_host``.
        """
        if endpoint in self._routes:
            return self._routes[endpoint]
        host, port = parse_tcp_endpoint(endpoint)
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except OSError as e:
            raise ConfigError(f"simulated network: cannot resolve {endpoint!r}: {e}") from e
        listener = socket.socket(socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((self.listen_host, 0))
            listener.listen(64)
        except OSError as e:
            listener.close()
            raise ConfigError(f"simulated network: cannot listen on {self.listen_host!r}: {e}") from e
        listener.setblocking(False)
        upstream = (family, kind, proto, address)
        self._selector.register(listener, selectors.EVENT_READ, lambda _: self._accept(listener, upstream))
        self._listeners.append(listener)
        bound_host, bound_port = listener.getsockname()[:2]
        self._routes[endpoint] = f"tcp://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
        log.debug("relaying %s to %s", self._routes[endpoint], endpoint)
        return self._routes[endpoint]

    def stats(self) -> LinkStats:
        """What the relay forwarded so far."""
        return LinkStats(self.up.stats, self.down.stats, self.connections)

    # -- the loop -----------------------------------------------------------------------------------

    def watch(self, fd: int, handler: _Handler) -> None:
        """Also call ``handler(events)`` whenever ``fd`` is readable (a control pipe)."""
        self._selector.register(fd, selectors.EVENT_READ, handler)

    def unwatch(self, fd: int) -> None:
        self._selector.unregister(fd)

    def stop(self) -> None:
        """Stop accepting and reading; ``run`` returns once queued chunks left (or after ``_DRAIN_SECONDS``)."""
        if self._stopping is None:
            self._stopping = time.monotonic() + _DRAIN_SECONDS
            for listener in self._listeners:
                self._selector.unregister(listener)
                listener.close()
            self._listeners.clear()
            for connection in list(self._active):
                connection.up.halted = connection.down.halted = True
                self._update(connection)

    def request_stop(self) -> None:
        """``stop`` at the loop's next round (safe in a signal handler, which may run in the middle of one)."""
        self._stop_requested = True

    def run(self) -> None:
        """Relay until ``stop`` (then drain); blocks in ``select`` between events and due chunks."""
        while True:
            if self._stop_requested:
                self.stop()
            now = time.monotonic()
            if self._stopping is not None and (not self._pending() or now >= self._stopping):
                break
            next_due = self._next_due()
            timeout = None if next_due is None else max(next_due - now, 0.0)
            if self._stopping is not None:
                timeout = min(timeout if timeout is not None else 0.05, max(self._stopping - now, 0.0))
            for key, mask in self._selector.select(timeout):
                key.data(mask)
            self._flush()
        self.close()

    def close(self) -> None:
        """Close every socket (queued chunks are dropped)."""
        for connection in list(self._active):
            self._close(connection)
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        self._selector.close()

    # -- events -------------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket, upstream: tuple[Any, ...]) -> None:
        if self._stopping is not None:  # closed by ``stop`` during this round of events
            return
        try:
            client, _ = listener.accept()
        except OSError:  # nobody there after all (or an aborted connection)
            return
        family, kind, proto, address = upstream
        server = socket.socket(family, kind, proto)
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # our chunks go out when due, not later
            with contextlib.suppress(OSError):  # the kernel's receive times (else: when the relay read them)
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPING, _RX_SOFTWARE_TIMESTAMPS)
        connection = _Connection(client, server, self.up, self.down)
        self.connections += 1
        self._active.add(connection)
        code = server.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            log.debug("relay: cannot connect to %s: %s", address, os.strerror(code))
            self._close(connection)
            return
        for sock in (client, server):
            self._register(connection, sock)

    def _register(self, connection: _Connection, sock: socket.socket) -> None:
        mask = connection.events(sock)
        current = self._registered.get(sock, 0)
        if mask == current:
            return
        if not current:
            self._selector.register(sock, mask, lambda events: self._on_event(connection, sock, events))
        elif not mask:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, mask, lambda events: self._on_event(connection, sock, events))
        if mask:
            self._registered[sock] = mask
        else:
            self._registered.pop(sock, None)

    def _update(self, connection: _Connection) -> None:
        if not connection.closed:
            self._register(connection, connection.client)
            self._register(connection, connection.server)

    def _on_event(self, connection: _Connection, sock: socket.socket, events: int) -> None:
        if connection.closed:
            return
        try:
            if sock is connection.server and connection.connecting:
                if not events & selectors.EVENT_WRITE:
                    return
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
                connection.connecting = False
            elif events & selectors.EVENT_READ:
                self._read(connection.up if sock is connection.client else connection.down)
            if events & selectors.EVENT_WRITE:
                (connection.down if sock is connection.client else connection.up).blocked = False
        except OSError as e:  # a reset or refused connection: the peer sees the relay's side go away too
            log.debug("relay: connection closed: %s", e)
            self._close(connection)
            return
        self._update(connection)

    def _read(self, direction: _Direction) -> None:
        """Read what ``direction``'s source has (up to the queue limit) and schedule it on the link."""
        while direction.reading:
            try:
                data, ancillary, _, _ = direction.source.recvmsg(CHUNK_BYTES, _ANCILLARY_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            arrived = _arrival(ancillary)
            if not data:
                direction.eof = True
                direction.queue.append([arrived + direction.link.latency, None])
                return
            direction.queue.append([direction.link.departure(arrived, len(data)), memoryview(data)])
            direction.queued_bytes += len(data)

    # -- sending ------------------------------------------------------------------------------------

    def _next_due(self) -> float | None:
        times = [due for connection in self._active if not connection.connecting
                 for direction in connection.directions() if (due := direction.due()) is not None]
        return min(times) if times else None

    def _pending(self) -> bool:
        return any(direction.queue for connection in self._active for direction in connection.directions())

    def _flush(self) -> None:
        """Send every chunk that is due."""
        now = time.monotonic()
        for connection in list(self._active):
            if connection.connecting:
                continue
            try:
                for direction in connection.directions():
                    self._send_due(direction, now)
            except OSError as e:
                log.debug("relay: connection closed: %s", e)
                self._close(connection)
                continue
            if connection.up.shut and connection.down.shut:
                self._close(connection)
            else:
                self._update(connection)

    def _send_due(self, direction: _Direction, now: float) -> None:
        queue = direction.queue
        while queue and not direction.blocked and queue[0][0] <= now:
            due, view = queue[0]
            if view is None:  # the source's EOF, delayed like the data before it
                queue.popleft()
                direction.sink.shutdown(socket.SHUT_WR)
                direction.shut = True
                return
            try:
                sent = direction.sink.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            direction.queued_bytes -= sent
            if sent < len(view):
                queue[0][1] = view[sent:]
                direction.blocked = True  # the sink's buffer is full: continue once it is writable
                return
            queue.popleft()
            direction.link.stats.add_late(time.monotonic() - due)

    def _close(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        for sock in (connection.client, connection.server):
            if self._registered.pop(sock, 0):
                self._selector.unregister(sock)
            sock.close()
        self._active.discard(connection)


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """When the kernel received the data just read, on the monotonic clock: its software receive timestamp
    (``SO_TIMESTAMPING``; a wall-clock time) as an age, or now if there is none. So a relay that woke up late
    to read does not add its lateness to the modeled delay."""
    now = time.monotonic()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPING and len(data) >= 16:
            seconds, nanoseconds = struct.unpack_from("qq", data)
            received = seconds + nanoseconds * 1e-9
            return now - max(time.time() - received, 0.0) if received else now
    return now


# -- the process ------------------------------------------------------------------------------------


def _tight_timers() -> None:
    """Ask Linux for 1 us timer slack (50 us by default), so a 50 us latency is not rounded up much."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK


def _realtime() -> bool:
    """Run the relay at the lowest real-time priority (``SCHED_FIFO`` 1), if allowed: it stands in for network
    hardware, which does not wait behind the host's compute for a core. It sleeps between chunks, and Linux
    keeps 5% of every second for other tasks anyway."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (AttributeError, OSError) as e:
        log.debug("relay: no real-time priority (%s): chunks may leave later when the cores are busy", e)
        return False
    return True


def _stop_on_signals(relay: DelayRelay) -> None:
    """SIGTERM and SIGINT stop the relay: the handler sets the flag, a byte on a pipe wakes ``select`` up."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)

    def drain_wakeups(_events: int) -> None:
        os.read(wake_read, 512)

    relay.watch(wake_read, drain_wakeups)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: relay.request_stop())


class _Control:
    """Commands from the parent, one JSON object a line on stdin; answers as JSON lines on stdout."""

    def __init__(self, relay: DelayRelay, out: BinaryIO) -> None:
        self.relay = relay
        self.out = out
        self._pending = b""

    def on_input(self, _events: int) -> None:
        data = os.read(0, 65536)
        if not data:  # the parent is gone
            self.relay.unwatch(0)
            self.relay.stop()
            return
        self._pending += data
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            if line.strip():
                self._answer(line)

    def _answer(self, line: bytes) -> None:
        try:
            command = json.loads(line)
            op = command["op"]
            if op == "route":
                self.say({"endpoint": self.relay.route(str(command["endpoint"]))})
            elif op == "stats":
                self.say({"stats": self.relay.stats().to_dict()})
            elif op == "stop":
                self.relay.unwatch(0)
                self.relay.stop()
            else:
                self.say({"error": f"unknown op {op!r}"})
        except (ValueError, KeyError, TypeError, ConfigError) as e:
            self.say({"error": str(e)})

    def say(self, answer: dict) -> None:
        self.out.write(json.dumps(answer).encode() + b"\n")
        self.out.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the relay; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m hybrid_ps.net.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=0.0, help="one-way latency, ms")
    parser.add_argument("--bandwidth-gbit", type=float, default=0.0, help="Gbit/s each way (0 = unlimited)")
    parser.add_argument("--listen-host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--to", action="append", default=[], metavar="ENDPOINT", help="tcp://host:port to relay to")
    parser.add_argument("--control", action="store_true", help="take commands on stdin (used by SimulatedNetwork)")
    parser.add_argument("--no-realtime", dest="realtime", action="store_false",
                        help="stay at normal priority (default: SCHED_FIFO 1 where allowed)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s [net proxy] %(message)s", datefmt="%H:%M:%S")
    out = sys.stdout.buffer
    try:
        relay = DelayRelay(latency=args.latency_ms / 1e3, bandwidth=args.bandwidth_gbit * 1e9 / 8,
                           listen_host=args.listen_host)
        for endpoint in args.to:
            out.write(json.dumps({"route": endpoint, "endpoint": relay.route(endpoint)}).encode() + b"\n")
    except (ConfigError, OSError) as e:
        print(f"hybrid_ps.net.proxy: error: {e}", file=sys.stderr)
        return 2
    _tight_timers()
    control = _Control(relay, out)
    if args.control:
        relay.watch(0, control.on_input)
    control.say({"ready": True, "pid": os.getpid(), "realtime": args.realtime and _realtime()})

    _stop_on_signals(relay)
    relay.run()
    control.say({"stats": relay.stats().to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())

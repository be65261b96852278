"""The simulated network through its relay process, with real sockets: plain TCP and ZeroMQ with CURVE.

Timing checks are lower bounds (the model's delay is a floor; a loaded machine only adds to it) with
generous upper bounds, so they hold on a busy 2-core machine.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from hybrid_ps.errors import SimulatedNetworkError
from hybrid_ps.net.curve import JobKeys
from hybrid_ps.net.proxy import parse_tcp_endpoint
from hybrid_ps.net.simulated import SimulatedNetwork
from hybrid_ps.net.sockets import bind_router, close_router, connect_dealer


class EchoServer:
    """A TCP server that sends back whatever each connection sends, until that connection closes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed_by_peer = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 20):
                conn.sendall(data)
            self.closed_by_peer.set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def _connect(endpoint: str) -> socket.socket:
    sock = socket.create_connection(parse_tcp_endpoint(endpoint), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _receive(sock: socket.socket, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        part = sock.recv(min(size - got, 1 << 20))
        assert part, f"connection closed after {got} of {size} bytes"
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def test_a_round_trip_takes_at_least_twice_the_one_way_latency(echo):
    with SimulatedNetwork(latency_ms=5, bandwidth_gbit=0) as network, _connect(network.route(echo.endpoint)) as sock:
        trips = []
        for i in range(5):
            started = time.perf_counter()
            sock.sendall(b"ping %d" % i)
            assert _receive(sock, 6) == b"ping %d" % i
            trips.append(time.perf_counter() - started)
        stats = network.stats()
    assert min(trips) >= 0.010 and max(trips) < 1.0
    assert stats.up.bytes == stats.down.bytes == 30 and stats.connections == 1
    assert stats.up.chunks == stats.down.chunks == 5  # one write each, waited for: one chunk each
    for way in (stats.up, stats.down):
        assert way.delay_seconds == pytest.approx(5 * 0.005)  # no bandwidth limit, nothing queued
        assert way.queue_seconds == way.serialization_seconds == 0


def test_moving_n_bytes_takes_at_least_n_over_the_bandwidth_and_the_counters_are_exact(echo):
    size, gbit = 1_000_000, 0.05  # 6.25 MB/s: 0.16 s each way; the two ways overlap
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with SimulatedNetwork(latency_ms=1, bandwidth_gbit=gbit) as network, \
            _connect(network.route(echo.endpoint)) as sock:
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(_receive(sock, size)))
        started = time.perf_counter()
        reader.start()
        sock.sendall(payload)
        reader.join(timeout=30)
        elapsed = time.perf_counter() - started
        final = network.close()
    assert received == [payload]
    serialization = size * 8 / (gbit * 1e9)
    assert serialization + 0.002 <= elapsed < 10
    for way in (final.up, final.down):
        assert way.bytes == size
        assert way.serialization_seconds == pytest.approx(serialization, rel=1e-9)
        assert way.delay_seconds == pytest.approx(way.chunks * 0.001 + way.queue_seconds + way.serialization_seconds,
                                                  rel=1e-9)
        assert way.chunks >= size // (64 * 1024)  # read 64 KiB at a time at most
    assert final.up.queue_seconds > 0  # the sender's chunks came faster than the link sends them


def test_connections_of_one_network_share_its_bandwidth(echo):
    size, gbit = 400_000, 0.05  # two connections of 400 kB each way on one 6.25 MB/s link: >= 0.128 s
    with SimulatedNetwork(latency_ms=0, bandwidth_gbit=gbit) as network:
        route = network.route(echo.endpoint)
        socks = [_connect(route), _connect(route)]
        threads = [threading.Thread(target=lambda s=s: _receive(s, size)) for s in socks]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for sock in socks:
            sock.sendall(b"z" * size)
        for thread in threads:
            thread.join(timeout=30)
        elapsed = time.perf_counter() - started
        stats = network.stats()
        for sock in socks:
            sock.close()
    assert 2 * size * 8 / (gbit * 1e9) <= elapsed < 10
    assert stats.up.bytes == stats.down.bytes == 2 * size and stats.connections == 2


def test_zeromq_dealer_router_with_curve_goes_through_the_relay():
    context = zmq.Context()
    keys = JobKeys.generate()
    router, endpoint = bind_router(context, "127.0.0.1", keys)
    try:
        with SimulatedNetwork(latency_ms=3, bandwidth_gbit=1) as network:
            dealer = connect_dealer(context, network.route(endpoint), keys, linger_ms=0)
            trips = []
            for i in range(4):
                started = time.perf_counter()
                dealer.send_multipart([b"request", b"%d" % i, b"\0" * 10_000])
                assert router.poll(10_000), "no request came through the relay"
                identity, *frames = router.recv_multipart()
                assert frames == [b"request", b"%d" % i, b"\0" * 10_000]
                router.send_multipart([identity, b"reply", b"%d" % i])
                assert dealer.poll(10_000) and dealer.recv_multipart() == [b"reply", b"%d" % i]
                trips.append(time.perf_counter() - started)
            dealer.close()
            stats = network.close()
    finally:
        close_router(context, router, keys, 0)
        context.term()
    assert min(trips) >= 0.006 and max(trips) < 2.0  # the CURVE handshake came before the first trip
    assert stats.up.bytes > 4 * 10_000 and stats.down.bytes > 4 * 10  # framing, handshake, encryption on top
    assert stats.up.delay_seconds >= stats.up.chunks * 0.003


def test_an_end_of_stream_goes_through_both_ways(echo):
    with SimulatedNetwork(latency_ms=1, bandwidth_gbit=0) as network, _connect(network.route(echo.endpoint)) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert _receive(sock, 10) == b"last words"
        assert sock.recv(10) == b""  # the server closed after our EOF reached it: its EOF reached us
        assert echo.closed_by_peer.wait(5)


def test_a_refused_upstream_closes_the_client_and_the_relay_keeps_relaying(echo):
    dead = socket.create_server(("127.0.0.1", 0))
    dead_endpoint = f"tcp://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nobody listens there now
    with SimulatedNetwork(latency_ms=0.5, bandwidth_gbit=0) as network:
        with _connect(network.route(dead_endpoint)) as refused:
            assert refused.recv(10) == b""
        with _connect(network.route(echo.endpoint)) as sock:
            sock.sendall(b"still here")
            assert _receive(sock, 10) == b"still here"


def test_routes_are_kept_and_bad_endpoints_are_refused(echo):
    with SimulatedNetwork(latency_ms=0.1, bandwidth_gbit=10) as network:
        assert network.route(echo.endpoint) == network.route(echo.endpoint) != echo.endpoint
        with pytest.raises(SimulatedNetworkError, match="expected tcp://host:port"):
            network.route("ipc:///tmp/shard")
        assert network.describe() == "0.1 ms one way, 10 Gbit/s"
    assert network.close() is network.final_stats  # closing again returns the same counters


def test_the_relay_exits_when_its_client_goes_away():
    network = SimulatedNetwork(latency_ms=1, bandwidth_gbit=0)
    process = network._process
    assert process.stdin is not None
    process.stdin.close()  # as when the client process dies
    assert process.wait(timeout=10) == 0
    with pytest.raises(SimulatedNetworkError, match="gone"):
        network.stats()
    assert network.close().up.bytes == 0  # its counters are lost with it, without an error

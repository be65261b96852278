"""The relay's command line (``python -m hybrid_ps.net.proxy``) and its endpoint parsing."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from hybrid_ps.errors import ConfigError
from hybrid_ps.net.proxy import CHUNK_BYTES, QUEUE_LIMIT_BYTES, parse_tcp_endpoint


@pytest.mark.parametrize("endpoint, expected", [("tcp://127.0.0.1:5555", ("127.0.0.1", 5555)),
                                                ("tcp://node-3.cluster:80", ("node-3.cluster", 80)),
                                                ("tcp://[::1]:6000", ("::1", 6000))])
def test_tcp_endpoints_are_parsed(endpoint, expected):
    assert parse_tcp_endpoint(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["ipc:///tmp/x", "tcp://host", "tcp://:80", "127.0.0.1:80", "tcp://h:port"])
def test_other_endpoints_are_refused(endpoint):
    with pytest.raises(ConfigError, match="expected tcp://host:port"):
        parse_tcp_endpoint(endpoint)


def test_chunks_are_small_next_to_the_queue_limit():
    assert QUEUE_LIMIT_BYTES >= 16 * CHUNK_BYTES  # a full queue still holds many chunks in flight


def test_the_command_line_relays_until_sigterm_then_prints_what_it_relayed():
    server = socket.create_server(("127.0.0.1", 0))
    upstream = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    relay = subprocess.Popen([sys.executable, "-m", "hybrid_ps.net.proxy", "--latency-ms", "2", "--to", upstream],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout is not None
        route = json.loads(relay.stdout.readline())
        assert route["route"] == upstream and route["endpoint"] != upstream
        assert json.loads(relay.stdout.readline())["ready"] is True
        with socket.create_connection(parse_tcp_endpoint(route["endpoint"]), timeout=10) as client:
            conn, _ = server.accept()
            started = time.perf_counter()
            client.sendall(b"hello")
            conn.settimeout(10)
            assert conn.recv(5) == b"hello"
            assert time.perf_counter() - started >= 0.002
            conn.close()
        relay.send_signal(signal.SIGTERM)
        final = json.loads(relay.stdout.readline())["stats"]
        assert relay.wait(timeout=10) == 0
    finally:
        relay.kill()
        server.close()
    assert final["up"]["bytes"] == 5 and final["up"]["chunks"] == 1 and final["connections"] == 1
    assert final["up"]["delay_seconds"] == pytest.approx(0.002)


def test_the_command_line_names_a_bad_endpoint():
    done = subprocess.run([sys.executable, "-m", "hybrid_ps.net.proxy", "--to", "udp://x:1"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "hybrid_ps.net.proxy: error: simulated network: cannot relay 'udp://x:1'" in done.stderr

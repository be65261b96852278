"""A live shard over real ZeroMQ sockets (shard loops in threads): push/pull, SSP deferral, bad messages."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from hybrid_ps import wire
from hybrid_ps.errors import ShardUnavailableError
from hybrid_ps.partition import HashRing
from hybrid_ps.server.optimizers import make_optimizer
from hybrid_ps.server.service import ShardService
from hybrid_ps.server.shard import Shard
from hybrid_ps.worker.client import PSClient


class Cluster:
    """``shards`` shard services in threads, SGD with learning rate 1 (so a push of g sets w = -g)."""

    def __init__(self, shards: int, groups: int, staleness: float) -> None:
        self.ring = HashRing(range(shards))
        self.groups = groups
        self.services = [
            ShardService(Shard(1, make_optimizer("sgd", 1.0)), i, self.ring, groups, staleness)
            for i in range(shards)
        ]
        self.threads = [threading.Thread(target=s.serve, daemon=True) for s in self.services]
        for thread in self.threads:
            thread.start()
        self.clients: list[PSClient] = []

    def client(self, group: int, timeout: float = 10.0) -> PSClient:
        client = PSClient([s.endpoint for s in self.services], group, self.groups, self.ring, timeout=timeout)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        with PSClient([s.endpoint for s in self.services], 0, self.groups, self.ring, timeout=10) as admin:
            if any(t.is_alive() for t in self.threads):
                admin.shutdown()
        for thread, service in zip(self.threads, self.services):
            thread.join(timeout=10)
            service.close()


@pytest.fixture
def cluster(request):
    shards, groups, staleness = getattr(request, "param", (2, 1, 0))
    running = Cluster(shards, groups, staleness)
    yield running
    running.stop()


def _keys(n: int, seed: int = 0) -> np.ndarray:
    return np.unique(np.random.default_rng(seed).integers(0, 2**62, n, dtype=np.uint64))


def test_push_pull_round_trip_over_two_shards(cluster):
    client = cluster.client(0)
    keys = _keys(5000)
    np.testing.assert_array_equal(client.wait(client.pull(keys, 0)), np.zeros((keys.size, 1)))
    grads = np.random.default_rng(1).normal(size=(keys.size, 1)).astype(np.float32)
    client.push(keys, grads, 0)
    client.clock(1)
    np.testing.assert_allclose(client.wait(client.pull(keys, 1)), -grads, rtol=1e-6)
    assert sum(len(s.shard) for s in cluster.services) == keys.size
    assert all(len(s.shard) > 0 for s in cluster.services)


def _answered_within(client: PSClient, ticket, seconds: float) -> bool:
    client.timeout = seconds
    try:
        client.wait(ticket)
        return True
    except ShardUnavailableError:
        return False
    finally:
        client.timeout = 10.0


@pytest.mark.parametrize("cluster", [(1, 2, 1)], indirect=True)
def test_ssp_defers_a_pull_until_the_slow_group_catches_up(cluster):
    fast, slow = cluster.client(0), cluster.client(1)
    keys = _keys(10)
    for clock in range(3):
        fast.clock(clock + 1)
    ticket = fast.pull(keys, 3)  # needs the slowest group at >= 3 - 1 = 2
    assert not _answered_within(fast, ticket, 0.3)
    slow.wait(slow.clock(1))
    assert not _answered_within(fast, ticket, 0.3)
    slow.wait(slow.clock(2))
    fast.wait(ticket)
    assert ticket.shard_clocks.tolist() == [3, 2]
    assert cluster.services[0].stats.deferred_pulls == 1


@pytest.mark.parametrize("cluster", [(1, 2, 0)], indirect=True)
def test_final_clock_pull_waits_for_every_group_to_finish(cluster):
    first, second = cluster.client(0), cluster.client(1)
    ticket = first.pull(_keys(5), wire.FINAL_CLOCK)
    first.finish()
    assert not _answered_within(first, ticket, 0.3)
    second.wait(second.finish())
    first.wait(ticket)


def test_bye_from_every_group_stops_the_shards(cluster):
    cluster.client(0).bye()
    for thread in cluster.threads:
        thread.join(timeout=5)
        assert not thread.is_alive()


def _raw_request(endpoint: str, frames: list) -> list[bytes]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(5000), "the shard did not answer"
        return sock.recv_multipart()
    finally:
        sock.close()


def _header(op: wire.Op, **fields) -> bytes:
    return wire.encode_header(wire.Header(op, request_id=77, **fields))


@pytest.mark.parametrize("cluster", [(1, 1, 0)], indirect=True)
def test_malformed_messages_get_an_error_and_change_nothing(cluster):
    service = cluster.services[0]
    good = cluster.client(0)
    keys = _keys(100)
    good.push(keys, np.ones((keys.size, 1), np.float32), 0)
    before = good.wait(good.pull(keys, 0)).copy()
    k2 = np.array([1, 2], "<u8").tobytes()
    nan = np.array([np.nan, 1], np.float32).tobytes()
    bad_messages = {
        "garbage": [b"\x00garbage"],
        "truncated header": [_header(wire.Op.PULL)[:-3], k2],
        "wrong frame count": [_header(wire.Op.PUSH, num_keys=2), k2],
        "wrong key length": [_header(wire.Op.PULL, num_keys=3), k2],
        "unsorted keys": [_header(wire.Op.PULL, num_keys=2), np.array([2, 1], "<u8").tobytes()],
        "NaN values": [_header(wire.Op.PUSH, num_keys=2), k2, nan],
        "wrong width": [_header(wire.Op.PUSH, num_keys=2, width=2), k2, np.ones(4, np.float32).tobytes()],
        "unknown group": [_header(wire.Op.CLOCK, group=5, clock=3)],
        "a reply as request": [_header(wire.Op.ACK)],
    }
    for name, frames in bad_messages.items():
        reply = _raw_request(service.endpoint, frames)
        header = wire.decode_header(reply)
        assert header.op is wire.Op.ERROR, name
        assert wire.error_text(reply[1]), name
    assert service.stats.errors == len(bad_messages)
    np.testing.assert_array_equal(good.wait(good.pull(keys, 0)), before)
    assert service.clock.clocks.tolist() == [0]


def test_keys_owned_by_another_shard_are_refused(cluster):
    service = cluster.services[0]
    keys = _keys(200)
    foreign = np.sort(keys[cluster.ring.shard_of(keys) == 1])[:3]
    reply = _raw_request(service.endpoint, [_header(wire.Op.PULL, num_keys=3), foreign.astype("<u8").tobytes()])
    assert wire.decode_header(reply).op is wire.Op.ERROR
    assert "belongs to shard 1" in wire.error_text(reply[1])


@pytest.mark.parametrize("cluster", [(1, 1, 0)], indirect=True)
def test_error_replies_surface_in_the_client(cluster):
    client = cluster.client(0)
    with pytest.raises(ShardUnavailableError, match="rejected the push of 1 keys.*NaN or Inf"):
        client.wait(client.push(np.array([3], np.uint64), np.array([[np.nan]], np.float32), 0))


def test_timeout_names_the_shard():
    silent = zmq.Context.instance().socket(zmq.ROUTER)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with PSClient([f"tcp://127.0.0.1:{port}"], 0, 1, HashRing([0]), timeout=0.3) as client:
            with pytest.raises(ShardUnavailableError, match=f"no reply in 0.3s to the pull of 2 keys.*127.0.0.1:{port}"):
                client.wait(client.pull(np.array([1, 2], np.uint64), 0))
    finally:
        silent.close(0)

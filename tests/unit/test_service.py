"""hybrid_ps.server.service + hybrid_ps.worker.client over real ZeroMQ sockets on 127.0.0.1.

Every shard runs ``ShardService.serve()`` in a background thread; ``PSClient`` (and, for malformed
messages, a raw DEALER socket) runs in the test thread. Each test gets its own ZeroMQ context.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from hybrid_ps.errors import HybridPSError, ShardUnavailableError
from hybrid_ps.net.curve import JobKeys
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.protocol import wire
from hybrid_ps.server.service import ShardService
from hybrid_ps.server.shard import Shard
from hybrid_ps.tables.optimizers import make_optimizer
from hybrid_ps.worker.client import PSClient

REPO = Path(__file__).resolve().parents[2]
NOT_ANSWERED = 0.3  # seconds a held-back pull is watched to stay unanswered


class Cluster:
    """``shards`` ShardServices serving in threads, plus the clients and raw sockets of one test."""

    def __init__(self, shards: int = 2, groups: int = 1, staleness: float = 0, width: int = 1,
                 optimizer: str = "sgd", learning_rate: float = 1.0, max_keys: int = 1 << 24,
                 group_timeout: float = 0.0, checkpoint_writer=None, replication: int = 1,
                 groups_present: bool = True, curve_keys: JobKeys | None = None, peers_known: bool = True,
                 stamped: bool = False, **service_options) -> None:
        self.context = zmq.Context()
        self.curve_keys = curve_keys
        self.ring = HashRing(range(shards), vnodes=64)
        self.groups = groups
        self.width = width
        self.replication = replication
        self.optimizer = (optimizer, learning_rate)
        self.services = [
            ShardService(Shard(width, make_optimizer(optimizer, learning_rate), capacity=16, stamped=stamped), shard,
                         self.ring, groups, staleness, max_keys=max_keys, context=self.context,
                         group_timeout=group_timeout, checkpoint_writer=checkpoint_writer, replication=replication,
                         groups_present=groups_present, curve_keys=curve_keys, **service_options)
            for shard in range(shards)
        ]
        for service in self.services if peers_known else []:  # as a client's PEERS tells a primary its backups'
            service.forwards.learn(dict(enumerate(self.endpoints)))
        self.results: dict[int, object] = {}
        self.threads = [threading.Thread(target=self._serve, args=(i,), daemon=True) for i in range(shards)]
        for thread in self.threads:
            thread.start()
        self._sockets: list[zmq.Socket] = []
        self._clients: list[PSClient] = []

    def _serve(self, index: int) -> None:
        try:
            self.results[index] = self.services[index].serve()
        except BaseException as e:  # surfaced by the tests that check the result
            self.results[index] = e

    @property
    def endpoints(self) -> list[str]:
        return [s.endpoint for s in self.services]

    def client(self, group: int = 0, timeout: float = 10.0, **kwargs) -> PSClient:
        kwargs.setdefault("width", self.width)
        kwargs.setdefault("heartbeat_interval", 0.1)
        kwargs.setdefault("replication", self.replication)  # well below the group timeouts used here
        kwargs.setdefault("curve_keys", self.curve_keys)
        client = PSClient(self.endpoints, group, self.groups, self.ring, timeout=timeout, context=self.context,
                          **kwargs)
        self._clients.append(client)
        return client

    def dealer(self, shard: int, curve_keys: JobKeys | None = None) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if curve_keys := curve_keys or self.curve_keys:
            curve_keys.connect_as_client(sock)
        sock.connect(self.endpoints[shard])
        self._sockets.append(sock)
        return sock

    def keys_of(self, shard: int, count: int, seed: int = 0) -> np.ndarray:
        """``count`` sorted unique keys owned by ``shard``."""
        rng = np.random.default_rng(seed)
        candidates = np.unique(rng.integers(0, 2**63, count * self.ring.num_shards * 4, dtype=np.uint64))
        owned = candidates[self.ring.shard_of(candidates) == shard][:count]
        assert owned.size == count
        return owned

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        for sock in self._sockets:
            sock.close(0)
        for index, thread in enumerate(self.threads):
            if thread.is_alive():
                admin = self.dealer(index)
                admin.send(wire.encode_header(wire.Header(wire.Op.SHUTDOWN, request_id=1)))
                admin.poll(5000)
                admin.close(0)
            thread.join(timeout=5)
        for service in self.services:
            service.close()
        alive = [t for t in self.threads if t.is_alive()]
        self.context.destroy(linger=0)
        assert not alive, "a shard thread did not stop"


@pytest.fixture
def make_cluster():
    clusters: list[Cluster] = []

    def make(**kwargs) -> Cluster:
        cluster = Cluster(**kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


def _random_keys(count: int, seed: int) -> np.ndarray:
    return np.unique(np.random.default_rng(seed).integers(0, 2**64 - 2, count, dtype=np.uint64))


def _answered_within(client: PSClient, ticket, seconds: float) -> bool:
    """Wait for ``ticket`` at most ``seconds``; the ticket stays usable when it times out."""
    saved, client.channel.timeout = client.channel.timeout, seconds
    try:
        client.wait(ticket)
        return True
    except ShardUnavailableError as e:
        assert "no reply in" in str(e), e
        return False
    finally:
        client.channel.timeout = saved


def _request(sock: zmq.Socket, frames: list) -> list[bytes]:
    sock.send_multipart(frames)
    assert sock.poll(5000), "the shard did not answer"
    return sock.recv_multipart()


def _header(op: wire.Op, **fields) -> bytes:
    fields.setdefault("request_id", 77)
    return wire.encode_header(wire.Header(op, **fields))


def _u64(keys) -> bytes:
    return np.asarray(keys, dtype="<u8").tobytes()


# -- push and pull ---------------------------------------------------------------------------------


def test_push_pull_round_trip_across_two_shards_equals_a_numpy_reference(make_cluster):
    lr, eps = 0.5, 1e-6
    cluster = make_cluster(shards=2, optimizer="adagrad", learning_rate=lr, width=2)
    client = cluster.client()
    universe = _random_keys(3000, seed=1)
    weights = np.zeros((universe.size, 2))
    accumulator = np.zeros((universe.size, 2))
    rng = np.random.default_rng(2)
    for step in range(4):
        keys = np.sort(rng.choice(universe, 1500, replace=False))
        grads = rng.normal(size=(keys.size, 2)).astype(np.float32)
        client.push(keys, grads, step)  # asynchronous; acknowledgements are collected later
        rows = np.searchsorted(universe, keys)
        accumulator[rows] += grads.astype(np.float64) ** 2
        weights[rows] -= lr * grads / np.sqrt(accumulator[rows] + eps)
        client.wait(client.clock(step + 1))
        pulled = client.wait(client.pull(universe, step + 1))
        assert pulled.shape == (universe.size, 2) and pulled.dtype == np.float32
        np.testing.assert_allclose(pulled, weights, rtol=1e-5, atol=1e-6)
    client.drain()
    touched = universe[np.any(weights != 0, axis=1)]
    assert sum(len(s.shard) for s in cluster.services) == touched.size
    for shard_id, service in enumerate(cluster.services):
        held = service.shard.export()[0]
        assert held.size > 0.3 * touched.size  # both shards carry a fair part
        assert np.all(cluster.ring.shard_of(held) == shard_id)  # and only keys they own
        assert service.stats.requests["PUSH"] == 4 and service.stats.requests["PULL"] == 4
    assert sum(s.stats.keys_pulled for s in cluster.services) == 4 * universe.size


def test_pull_of_unseen_keys_is_zeros_and_inserts_nothing(make_cluster):
    cluster = make_cluster(shards=2, width=3)
    client = cluster.client()
    keys = _random_keys(500, seed=3)
    np.testing.assert_array_equal(client.wait(client.pull(keys, 0)), np.zeros((keys.size, 3)))
    assert all(len(s.shard) == 0 for s in cluster.services)


def test_pull_of_no_keys_completes_at_once(make_cluster):
    client = make_cluster(shards=2).client()
    ticket = client.pull(np.zeros(0, np.uint64), 0)
    assert ticket.done and client.wait(ticket).shape == (0, 1)


def test_pull_only_asks_the_shards_owning_the_keys(make_cluster):
    cluster = make_cluster(shards=2)
    client = cluster.client()
    keys = cluster.keys_of(1, 20)
    client.push(keys, np.ones((20, 1), np.float32), 0)
    np.testing.assert_array_equal(client.wait(client.pull(keys, 0)), -np.ones((20, 1)))
    client.drain()
    assert "PULL" not in cluster.services[0].stats.requests and "PUSH" not in cluster.services[0].stats.requests
    assert cluster.services[1].stats.requests["PULL"] == 1


def test_pushes_in_flight_are_bounded(make_cluster):
    cluster = make_cluster(shards=1)
    client = cluster.client(max_pushes_in_flight=2)
    keys = _random_keys(10, seed=4)
    tickets = [client.push(keys, np.ones((10, 1), np.float32), step) for step in range(6)]
    assert len(client._pushes_in_flight) <= 2
    assert all(t.done for t in tickets[:3])  # the oldest ones had to be acknowledged before more were sent
    client.drain()
    assert all(t.done for t in tickets)
    np.testing.assert_array_equal(client.wait(client.pull(keys, 0)), -6 * np.ones((10, 1)))


def test_clock_ack_carries_the_request_id_and_the_slowest_clock(make_cluster):
    cluster = make_cluster(shards=1, groups=2, staleness=math.inf)
    sock = cluster.dealer(0)
    reply = _request(sock, [_header(wire.Op.CLOCK, group=1, clock=4, request_id=123)])
    header = wire.decode_header(reply)
    assert (header.op, header.request_id, header.group, header.clock) == (wire.Op.ACK, 123, 1, 0)
    assert cluster.services[0].clock.clocks.tolist() == [0, 4]


def test_a_push_with_the_clock_flag_advances_the_clock_after_applying_it(make_cluster):
    cluster = make_cluster(shards=1, groups=2, staleness=math.inf)
    sock = cluster.dealer(0)
    keys = _random_keys(10, seed=21)
    header = wire.Header(wire.Op.PUSH, 1, 77, 4, keys.size, 1, flags=wire.FLAG_CLOCK)
    reply = wire.decode_header(_request(sock, [wire.encode_header(header), keys, np.ones((10, 1), np.float32)]))
    assert (reply.op, reply.request_id) == (wire.Op.ACK, 77)
    assert cluster.services[0].clock.clocks.tolist() == [0, 5]  # the push's clock + 1
    np.testing.assert_allclose(cluster.services[0].shard.pull(keys), -np.ones((10, 1)))


def test_a_refused_push_with_the_clock_flag_leaves_the_clock_as_it_was(make_cluster):
    cluster = make_cluster(shards=1, groups=1, staleness=math.inf)
    sock = cluster.dealer(0)
    keys = _random_keys(3, seed=22)
    header = wire.Header(wire.Op.PUSH, 0, 78, 2, keys.size, 1, flags=wire.FLAG_CLOCK)
    bad = np.array([[1.0], [np.nan], [1.0]], np.float32)
    reply = wire.decode_header(_request(sock, [wire.encode_header(header), keys, bad]))
    assert reply.op is wire.Op.ERROR
    assert cluster.services[0].clock.clocks.tolist() == [0]


@pytest.mark.parametrize("shards", [1, 2])
def test_push_telling_the_clock_reaches_every_shard_and_releases_held_pulls(make_cluster, shards):
    cluster = make_cluster(shards=shards, groups=2, staleness=0)
    fast, slow = cluster.client(0), cluster.client(1)
    keys = _random_keys(40, seed=23)
    fast.wait(fast.clock(1))
    ticket = fast.pull(keys, 1)  # needs the slow group at clock 1
    assert not _answered_within(fast, ticket, NOT_ANSWERED)
    few = keys[:1]  # a push touching one shard: the other learns the clock from a CLOCK on the same ticket
    grads = np.full((1, 1), 0.5, np.float32)
    slow.wait(slow.push(few, grads, 0, tell_clock=True))
    values = fast.wait(ticket)
    assert [s.clock.clocks.tolist() for s in cluster.services] == [[1, 1]] * shards
    np.testing.assert_allclose(values[0], -0.5, rtol=1e-6)  # applied before the clock released the pull


# -- bounded staleness -----------------------------------------------------------------------------


def test_ssp_pull_waits_for_the_slow_group(make_cluster):
    cluster = make_cluster(shards=1, groups=2, staleness=1)
    service = cluster.services[0]
    fast, slow = cluster.client(0), cluster.client(1)
    keys = _random_keys(50, seed=5)
    for clock in range(1, 4):
        fast.wait(fast.clock(clock))
    assert fast.wait(fast.pull(keys, 1)) is not None  # 0 >= 1 - 1: answered at once
    ticket = fast.pull(keys, 3)  # needs the slowest group at >= 3 - 1 = 2
    assert not _answered_within(fast, ticket, NOT_ANSWERED) and not ticket.done
    slow.wait(slow.clock(1))
    assert not _answered_within(fast, ticket, NOT_ANSWERED) and not ticket.done
    grads = np.random.default_rng(6).normal(size=(keys.size, 1)).astype(np.float32)
    slow.push(keys, grads, 1)  # sent before clock 2 on the same socket: applied before the pull is released
    slow.wait(slow.clock(2))
    values = fast.wait(ticket)
    assert ticket.done
    np.testing.assert_allclose(values, -grads, rtol=1e-6)
    assert ticket.shard_clocks.tolist() == [3, 2]
    assert fast.shard_clocks.tolist() == [3, 2]
    assert service.stats.deferred_pulls == 1


def test_staleness_zero_is_lock_step(make_cluster):
    cluster = make_cluster(shards=2, groups=2, staleness=0)
    first, second = cluster.client(0), cluster.client(1)
    keys = _random_keys(100, seed=7)
    for clock in range(1, 3):
        first.wait(first.clock(clock))
        ticket = first.pull(keys, clock)  # needs every group at >= clock
        assert not _answered_within(first, ticket, NOT_ANSWERED)
        second.wait(second.clock(clock))
        first.wait(ticket)
        assert ticket.shard_clocks.tolist() == [clock, clock]
        assert second.wait(second.pull(keys, clock)) is not None  # the other group is not held back either
    assert [s.stats.deferred_pulls for s in cluster.services] == [2, 2]


def test_asp_never_holds_a_pull_back(make_cluster):
    cluster = make_cluster(shards=2, groups=3, staleness=math.inf)
    client = cluster.client(0)
    ticket = client.pull(_random_keys(30, seed=8), 10**6)
    assert _answered_within(client, ticket, 5.0)
    assert all(s.stats.deferred_pulls == 0 for s in cluster.services)


@pytest.mark.parametrize("staleness", [0, math.inf])
def test_final_clock_pull_waits_for_every_group_to_finish(make_cluster, staleness):
    cluster = make_cluster(shards=2, groups=2, staleness=staleness)
    first, second = cluster.client(0), cluster.client(1)
    keys = _random_keys(40, seed=9)
    for clock in range(1, 4):
        first.wait(first.clock(clock))
        second.wait(second.clock(clock))
    ticket = first.pull(keys, wire.FINAL_CLOCK)
    assert not _answered_within(first, ticket, NOT_ANSWERED)
    first.wait(first.finish())
    assert not _answered_within(first, ticket, NOT_ANSWERED)
    second.wait(second.finish())
    first.wait(ticket)
    assert ticket.shard_clocks.tolist() == [wire.FINAL_CLOCK, wire.FINAL_CLOCK]


def test_a_finished_group_does_not_hold_back_the_others(make_cluster):
    cluster = make_cluster(shards=1, groups=2, staleness=0)
    running, done = cluster.client(0), cluster.client(1)
    running.wait(running.clock(5))
    ticket = running.pull(_random_keys(5, seed=10), 5)
    assert not _answered_within(running, ticket, NOT_ANSWERED)
    done.wait(done.finish())
    running.wait(ticket)
    assert ticket.shard_clocks.tolist() == [5, wire.FINAL_CLOCK]


# -- malformed messages ----------------------------------------------------------------------------


def test_malformed_messages_get_an_error_and_change_nothing(make_cluster):
    cluster = make_cluster(shards=2, groups=1, max_keys=1000)
    service = cluster.services[0]
    good = cluster.client(0)
    universe = _random_keys(400, seed=11)
    good.push(universe, np.ones((universe.size, 1), np.float32), 0)
    good.wait(good.clock(1))
    before = good.wait(good.pull(universe, 1)).copy()
    held_before = len(service.shard)
    errors_before = service.stats.errors

    own = cluster.keys_of(0, 3, seed=12)  # fresh keys owned by shard 0 (never pushed)
    foreign = cluster.keys_of(1, 3, seed=12)
    pushed = universe[cluster.ring.shard_of(universe) == 0][:3]
    nan = np.array([[np.nan], [1.0], [2.0]], np.float32).tobytes()
    inf = np.array([[1.0], [np.inf], [2.0]], np.float32).tobytes()
    ones = np.ones((3, 1), np.float32).tobytes()
    bad_messages = {
        "garbage bytes": ([b"\x00garbage\xff"], None),
        "empty frame": ([b""], None),
        "truncated header": ([_header(wire.Op.PULL, num_keys=3)[:-3], _u64(own)], None),
        "bad magic": ([b"XX" + _header(wire.Op.CLOCK)[2:]], None),
        "bad version": ([_header(wire.Op.CLOCK)[:2] + b"\x09" + _header(wire.Op.CLOCK)[3:]], None),
        "PUSH without values": ([_header(wire.Op.PUSH, num_keys=3), _u64(own)], None),
        "PULL with an extra frame": ([_header(wire.Op.PULL, num_keys=3), _u64(own), ones], None),
        "CLOCK with a frame": ([_header(wire.Op.CLOCK, clock=9), b"x"], None),
        "wrong key length": ([_header(wire.Op.PULL, num_keys=3), _u64(own[:2])], 77),
        "wrong key length in a push": ([_header(wire.Op.PUSH, num_keys=2), _u64(own), ones], 77),
        "unsorted keys": ([_header(wire.Op.PUSH, num_keys=3), _u64(own[::-1]), ones], 77),
        "too many keys": ([_header(wire.Op.PULL, num_keys=1001), _u64(np.arange(1001))], 77),
        "keys of another shard (pull)": ([_header(wire.Op.PULL, num_keys=3), _u64(foreign)], 77),
        "keys of another shard (push)": ([_header(wire.Op.PUSH, num_keys=3), _u64(foreign), ones], 77),
        "NaN values (new keys)": ([_header(wire.Op.PUSH, num_keys=3), _u64(own), nan], 77),
        "Inf values (known keys)": ([_header(wire.Op.PUSH, num_keys=3), _u64(pushed), inf], 77),
        "short values frame": ([_header(wire.Op.PUSH, num_keys=3), _u64(pushed), ones[:-4]], 77),
        "wrong width (new keys)": ([_header(wire.Op.PUSH, num_keys=3, width=2), _u64(own), ones * 2], 77),
        "pull of another width": ([_header(wire.Op.PULL, num_keys=3, width=2), _u64(own)], 77),
        "unknown group (clock)": ([_header(wire.Op.CLOCK, group=5, clock=3)], 77),
        "unknown group (push)": ([_header(wire.Op.PUSH, group=1, num_keys=3), _u64(pushed), ones], 77),
        "unknown group (finish)": ([_header(wire.Op.FINISH, group=2**32 - 1)], 77),
        "a reply as a request": ([_header(wire.Op.ACK)], 77),
        "checkpoint without a checkpoint directory": ([_header(wire.Op.CHECKPOINT, clock=1)], 77),
    }
    sock = cluster.dealer(0)
    for name, (frames, request_id) in bad_messages.items():
        reply = _request(sock, frames)
        header = wire.decode_header(reply)
        assert header.op is wire.Op.ERROR, name
        assert header.request_id == (request_id or 0), name
        assert wire.error_text(reply[1]).strip(), name
    assert service.stats.errors - errors_before == len(bad_messages)

    # nothing the rejected messages carried reached the parameters, the keys or the clock
    assert len(service.shard) == held_before
    np.testing.assert_array_equal(good.wait(good.pull(universe, 1)), before)
    np.testing.assert_array_equal(good.wait(good.pull(own, 1)), np.zeros((3, 1)))
    assert service.clock.clocks.tolist() == [1] and not service.clock.finished.any()
    assert cluster.threads[0].is_alive()
    # and the shard keeps serving a correct client
    good.push(universe, np.ones((universe.size, 1), np.float32), 1)
    good.wait(good.clock(2))
    np.testing.assert_array_equal(good.wait(good.pull(universe, 2)), before - 1)


@pytest.mark.parametrize(
    "frames, text",
    [
        ([b"short"], "header is 5 bytes"),
        ([b"XX" + _header(wire.Op.CLOCK)[2:]], "bad magic"),
        ([_header(wire.Op.PUSH, num_keys=2), _u64([1, 2])], "PUSH needs 3 or 4 frames, got 2"),
        ([_header(wire.Op.PULL, num_keys=3), _u64([1, 2])], "keys frame is 16 bytes"),
        ([_header(wire.Op.PULL, num_keys=2), _u64([2, 1])], "strictly increasing"),
        ([_header(wire.Op.CLOCK, group=5)], "group 5 out of range (job has 1)"),
        ([_header(wire.Op.PUSH, num_keys=1, width=2), _u64([1]), np.ones(2, np.float32).tobytes()],
         "width 2, this shard holds width 1"),
        ([_header(wire.Op.PULL, num_keys=1, width=3), _u64([1])], "width 3, this shard holds width 1"),
        ([_header(wire.Op.PUSH, num_keys=1), _u64([1]), np.array([np.inf], np.float32).tobytes()], "NaN or Inf"),
        ([_header(wire.Op.PULL, num_keys=2000), _u64(np.arange(2000))], "2000 keys exceed the limit of 1000"),
        ([_header(wire.Op.ACK)], "ACK is a reply, not a request"),
        ([_header(wire.Op.CHECKPOINT)], "without a checkpoint directory"),
        ([_header(wire.Op.FILLED), b"\x01\x02\x03", b"{}", wire.encode_shard_id(1)], "is not int64 clocks"),
        ([_header(wire.Op.DROP, num_keys=1), _u64([1]), b"\x07"], "shard frame is 4 bytes, got 1"),
    ],
)
def test_error_replies_explain_the_problem(make_cluster, frames, text):
    cluster = make_cluster(shards=1, max_keys=1000)
    reply = _request(cluster.dealer(0), frames)
    assert wire.decode_header(reply).op is wire.Op.ERROR
    assert text in wire.error_text(reply[1])


def test_error_for_keys_of_another_shard_names_the_owner(make_cluster):
    cluster = make_cluster(shards=2)
    foreign = cluster.keys_of(1, 2)
    reply = _request(cluster.dealer(0), [_header(wire.Op.PULL, num_keys=2), _u64(foreign)])
    assert f"key {foreign[0]} belongs to shard(s) [1]" in wire.error_text(reply[1])


def test_nan_push_error_names_nan(make_cluster):
    cluster = make_cluster(shards=1)
    reply = _request(cluster.dealer(0), [_header(wire.Op.PUSH, num_keys=1), _u64([5]),
                                         np.array([np.nan], np.float32).tobytes()])
    assert "NaN or Inf" in wire.error_text(reply[1])
    assert len(cluster.services[0].shard) == 0


def test_handle_ignores_messages_with_nobody_to_answer():
    ring = HashRing([0])
    context = zmq.Context()
    try:
        with ShardService(Shard(1, make_optimizer("sgd", 1.0)), 0, ring, 1, 0, context=context) as service:
            service.handle([b"identity-only"])
            assert service.stats.errors == 1
    finally:
        context.destroy(linger=0)


# -- errors in the client --------------------------------------------------------------------------


def test_an_error_reply_surfaces_as_shard_unavailable_with_the_shards_text(make_cluster):
    cluster = make_cluster(shards=2)
    client = cluster.client(0)
    keys = cluster.keys_of(1, 3)
    grads = np.array([[1.0], [np.nan], [2.0]], np.float32)
    with pytest.raises(ShardUnavailableError) as error:
        client.wait(client.push(keys, grads, 0))
    text = str(error.value)
    assert "shard 1" in text and cluster.endpoints[1] in text
    assert "rejected the push of 3 keys at clock 0" in text
    assert "values contain NaN or Inf" in text
    assert isinstance(error.value, HybridPSError)


def test_a_client_of_an_unknown_group_is_refused(make_cluster):
    cluster = make_cluster(shards=1, groups=2)
    client = cluster.client(0)
    client.channel.group = 7  # a misconfigured leader
    with pytest.raises(ShardUnavailableError, match=r"rejected the clock 1: group 7 out of range \(job has 2\)"):
        client.wait(client.clock(1))
    assert cluster.services[0].clock.clocks.tolist() == [0, 0]


def test_waiting_again_on_a_rejected_ticket_raises_shard_unavailable(make_cluster):
    """Regression (found by this test): PSClient._on_reply dropped a rejected request from
    ``_shard_of_request`` but kept it in ``ticket.pending``, so waiting on that ticket again polled until
    the timeout and then failed with ``KeyError`` while building its message. A second wait must raise
    ShardUnavailableError again, at once, and the client must stay usable.
    """
    cluster = make_cluster(shards=1)
    client = cluster.client(0, timeout=5.0, max_pushes_in_flight=1)
    ticket = client.push(np.array([3], np.uint64), np.array([[np.nan]], np.float32), 0)
    with pytest.raises(ShardUnavailableError, match="NaN or Inf"):
        client.wait(ticket)
    started = time.monotonic()
    try:
        client.wait(ticket)
        raised: BaseException | None = None
    except Exception as e:  # noqa: BLE001 - the type is what this test checks
        raised = e
    elapsed = time.monotonic() - started
    assert isinstance(raised, ShardUnavailableError), (
        f"BUG in PSClient: waiting again on a ticket a shard rejected raised {raised!r} instead of "
        "ShardUnavailableError (PSClient._on_reply drops the request from _shard_of_request but keeps it in "
        "ticket.pending, so PSClient.wait's timeout message raises KeyError)"
    )
    assert "NaN or Inf" in str(raised) and elapsed < 1.0, (raised, elapsed)
    # the rejected push neither blocks later pushes (max_pushes_in_flight = 1) nor the rest of the client
    keys = np.array([3, 4], np.uint64)
    for step in range(3):
        client.push(keys, np.ones((2, 1), np.float32), step)
    client.drain()
    np.testing.assert_array_equal(client.wait(client.pull(keys, 0)), -3 * np.ones((2, 1)))


def test_a_client_of_another_width_is_not_silently_broadcast(make_cluster):
    """Regression (found by this test): ShardService checked ``header.width`` on PUSH but not on PULL;
    the PULL_REPLY then carried the shard's width 1 and ``PSClient._on_reply`` assigned the ``[n, 1]``
    values into its ``[n, 2]`` buffer, so numpy broadcast them: a width-2 client silently got every value
    duplicated. A pull of another width must fail with an error naming the width.
    """
    cluster = make_cluster(shards=1, width=1)
    keys = _random_keys(4, seed=13)
    writer = cluster.client(0)
    writer.push(keys, np.array([[1.0], [2.0], [3.0], [4.0]], np.float32), 0)
    writer.drain()
    wide = cluster.client(0, width=2, timeout=2.0)
    try:
        values = wide.wait(wide.pull(keys, 0))
        outcome = f"returned {values.tolist()}"
    except HybridPSError as e:
        outcome = None
        assert "width" in str(e)
    assert outcome is None, (
        f"BUG: a width-2 PSClient pulling from a width-1 shard {outcome} (values broadcast across the width) "
        "instead of an error; ShardService accepts a PULL whose header width differs from the shard's"
    )


def test_wait_timeout_names_the_silent_shard_endpoint(make_cluster):
    cluster = make_cluster(shards=1)
    silent = cluster.context.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    silent_endpoint = f"tcp://127.0.0.1:{port}"
    ring = HashRing(range(2), vnodes=64)
    keys = _random_keys(200, seed=14)
    owners = ring.shard_of(keys)
    assert set(owners.tolist()) == {0, 1}
    try:
        with PSClient([cluster.endpoints[0], silent_endpoint], 0, 1, ring, timeout=0.3,
                      context=cluster.context) as client:
            started = time.monotonic()
            with pytest.raises(ShardUnavailableError) as error:
                client.wait(client.pull(keys, 0))
            elapsed = time.monotonic() - started
        text = str(error.value)
        assert f"no reply in 0.3s to the pull of {keys.size} keys at clock 0" in text
        assert f"shard(s) 1 ({silent_endpoint})" in text
        assert cluster.endpoints[0] not in text  # shard 0 did answer
        assert 0.25 < elapsed < 3.0
    finally:
        silent.close(0)


def test_wait_timeout_on_a_held_back_pull_names_the_shard(make_cluster):
    cluster = make_cluster(shards=1, groups=2, staleness=0)
    client = cluster.client(0, timeout=0.3)
    client.wait(client.clock(1))
    with pytest.raises(ShardUnavailableError, match=f"group 0: no reply in 0.3s to the pull of 3 keys at clock 1 "
                                                    f"from shard\\(s\\) 0 \\({cluster.endpoints[0]}\\)"):
        client.wait(client.pull(_random_keys(3, seed=15), 1))


# -- stopping --------------------------------------------------------------------------------------


def test_bye_from_every_group_stops_serve(make_cluster):
    cluster = make_cluster(shards=2, groups=2)
    first, second = cluster.client(0), cluster.client(1)
    keys = _random_keys(100, seed=16)
    first.push(keys, np.ones((keys.size, 1), np.float32), 0)
    first.bye()  # drains the unacknowledged push first
    time.sleep(0.2)
    assert all(t.is_alive() for t in cluster.threads)  # group 1 is still there
    np.testing.assert_array_equal(second.wait(second.pull(keys, 0)), -np.ones((keys.size, 1)))
    second.bye()
    for thread in cluster.threads:
        thread.join(timeout=5)
        assert not thread.is_alive()
    for index, service in enumerate(cluster.services):
        stats = cluster.results[index]
        assert stats is service.stats, stats
        assert stats.requests["BYE"] == 2 and stats.errors == 0
        assert service.groups.left.all() and service.clock.finished.all()


def test_bye_releases_a_final_clock_pull_of_the_other_group(make_cluster):
    cluster = make_cluster(shards=1, groups=2)
    first, second = cluster.client(0), cluster.client(1)
    ticket = first.pull(_random_keys(5, seed=17), wire.FINAL_CLOCK)
    first.wait(first.finish())
    assert not _answered_within(first, ticket, NOT_ANSWERED)
    second.bye()
    first.wait(ticket)
    assert cluster.threads[0].is_alive()  # group 0 finished but has not left


def test_shutdown_stops_serve_at_once(make_cluster):
    cluster = make_cluster(shards=2, groups=3)
    cluster.client(1).shutdown()
    for index, thread in enumerate(cluster.threads):
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert cluster.results[index].requests == {"SHUTDOWN": 1}


# -- boundaries ------------------------------------------------------------------------------------


def test_shard_service_and_client_never_import_mpi4py():
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"  # any import of mpi4py now fails
        "import hybrid_ps.server.service, hybrid_ps.server.shard, hybrid_ps.worker.client, hybrid_ps.protocol.wire\n"
        "import hybrid_ps.placement.ring, hybrid_ps.protocol.staleness, hybrid_ps.net.sockets\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_a_silent_group_is_dropped_after_the_timeout_and_rejoins_when_it_speaks(make_cluster):
    cluster = make_cluster(shards=1, groups=2, staleness=0, group_timeout=0.6)
    service = cluster.services[0]
    alive, silent = cluster.client(0), cluster.client(1)
    keys = _random_keys(20, seed=9)
    silent.wait(silent.clock(1))
    alive.wait(alive.clock(2))
    ticket = alive.pull(keys, 2)  # BSP: needs group 1 at clock 2, which never comes
    assert not _answered_within(alive, ticket, 0.2)
    assert _answered_within(alive, ticket, 3.0), "the silent group still holds the pull after its timeout"
    assert service.clock.dropped.tolist() == [False, True]
    for clock in (3, 4):  # group 0 trains on alone
        alive.wait(alive.clock(clock))
    assert alive.wait(alive.pull(keys, 4)) is not None
    silent.wait(silent.clock(2))  # group 1 is back: it rejoins at the running group's clock, not its own
    assert service.clock.dropped.tolist() == [False, False] and service.clock.clocks.tolist() == [4, 4]
    alive.wait(alive.clock(5))
    ticket = alive.pull(keys, 5)  # and holds group 0 back again
    assert not _answered_within(alive, ticket, NOT_ANSWERED)
    silent.wait(silent.clock(5))
    assert _answered_within(alive, ticket, 2.0)


def test_no_group_is_dropped_without_a_timeout(make_cluster):
    cluster = make_cluster(shards=1, groups=2, staleness=0)
    alive = cluster.client(0)
    alive.wait(alive.clock(2))
    ticket = alive.pull(_random_keys(5, seed=1), 2)
    assert not _answered_within(alive, ticket, 1.0)
    assert not cluster.services[0].clock.dropped.any()


def test_a_dropped_group_does_not_block_a_checkpoint_cut(make_cluster):
    cuts = []
    cluster = make_cluster(shards=1, groups=2, staleness=0, group_timeout=0.6,
                           checkpoint_writer=lambda exported, clock, cut, base: cuts.append(cut))
    alive, silent = cluster.client(0), cluster.client(1)
    silent.wait(silent.clock(2))
    alive.wait(alive.clock(2))
    assert alive.checkpoint(2) == 2  # group 1 never asks: the cut is written once it is dropped
    assert cuts == [2] and cluster.services[0].clock.dropped.tolist() == [False, True]


# -- joining, heartbeats, failover -----------------------------------------------------------------


def test_a_tier_of_its_own_waits_for_no_absent_slot_and_takes_joining_groups_at_the_running_clock(make_cluster):
    cluster = make_cluster(shards=2, groups=2, staleness=0, groups_present=False)
    first, second = cluster.client(0), cluster.client(1)
    keys = _random_keys(50, seed=21)
    assert first.join() == 0
    for clock in (1, 2, 3):  # BSP, but slot 1 is absent: nobody to wait for
        first.wait(first.clock(clock))
    assert first.wait(first.pull(keys, 3)) is not None
    assert second.join() == 3, "a joining group starts at the running group's clock"
    first.wait(first.clock(4))
    held = first.pull(keys, 4)
    assert not _answered_within(first, held, NOT_ANSWERED), "the joined group now holds the others back"
    second.wait(second.clock(4))
    assert _answered_within(first, held, 2.0)
    first.bye()
    assert all(thread.is_alive() for thread in cluster.threads), "the shards serve until every joined group left"
    second.bye()
    for thread in cluster.threads:
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_a_crashed_group_is_dropped_even_with_a_pull_held_back_but_a_waiting_one_is_not(make_cluster):
    cluster = make_cluster(shards=1, groups=2, staleness=0, group_timeout=0.6)
    waiting = cluster.client(0)
    crashed = cluster.dealer(0)
    keys = _random_keys(10, seed=5)
    waiting.wait(waiting.clock(1))
    crashed.send_multipart([_header(wire.Op.PULL, group=1, clock=1, num_keys=keys.size), _u64(keys)])  # then dies
    held = waiting.pull(keys, 1)  # held back until group 1 reaches clock 1: never
    assert not _answered_within(waiting, held, 0.3)
    assert _answered_within(waiting, held, 3.0), "the crashed group's held-back pull kept it in"
    assert cluster.services[0].clock.dropped.tolist() == [False, True], "heartbeats keep a waiting group in"


def test_ping_is_answered_even_while_pulls_are_held_back(make_cluster):
    cluster = make_cluster(shards=1, groups=2, staleness=0)
    client = cluster.client(0)
    client.wait(client.clock(1))
    client.pull(_random_keys(5, seed=2), 1)  # held back by group 1 at clock 0
    reply = _request(cluster.dealer(0), [_header(wire.Op.PING)])
    assert wire.decode_header(reply).op is wire.Op.ACK


def test_evict_promotes_the_backup_and_an_evicted_shard_stops(make_cluster):
    cluster = make_cluster(shards=3, replication=2)
    keys = _random_keys(3000, seed=8)
    client = cluster.client(0)
    client.wait(client.push(keys, np.ones((keys.size, 1), np.float32), 0))
    replicas = client.placement.replicas_of(keys)
    primary = int(replicas[replicas[:, 1] == 2][0, 0])
    backup_keys = keys[(replicas[:, 1] == 2) & (replicas[:, 0] == primary)]  # shard 2 backs them up for ``primary``
    sock = cluster.dealer(2)
    request = [_header(wire.Op.PULL, num_keys=backup_keys.size), _u64(backup_keys)]
    assert wire.decode_header(_request(sock, request)).op is wire.Op.ERROR, "a backup does not serve pulls"
    notice = _request(sock, [_header(wire.Op.EVICT), wire.encode_shard_id(primary)])  # it pulled: a client
    assert wire.decode_header(notice).op is wire.Op.SHARD_DOWN and wire.decode_shard_id(notice[1]) == primary
    assert sock.poll(5000) and wire.decode_header(sock.recv_multipart()).op is wire.Op.ACK
    reply = _request(sock, request)
    assert np.array_equal(np.frombuffer(reply[1], np.float32), -np.ones(backup_keys.size, np.float32))
    _request(sock, [_header(wire.Op.EVICT), wire.encode_shard_id(2)])
    cluster.threads[2].join(timeout=5)
    assert not cluster.threads[2].is_alive(), "told that it is dead, a shard stops serving"


def test_a_shard_told_of_a_death_tells_its_clients_and_a_waiting_client_fails_over_at_once(make_cluster):
    cluster = make_cluster(shards=3, replication=2)
    client = cluster.client(0, timeout=20.0, failover_timeout=15.0)  # far longer than the test may take
    keys = _random_keys(3000, seed=9)
    client.wait(client.push(keys, np.ones((keys.size, 1), np.float32), 0))
    dead = 1
    cluster.dealer(dead).send_multipart([_header(wire.Op.SHUTDOWN)])  # it stops answering, as a killed one would
    cluster.threads[dead].join(timeout=5)
    started = time.monotonic()
    ticket = client.pull(keys, 0)  # part of it waits on the dead shard
    supervisor = cluster.context.socket(zmq.DEALER)  # what the dead shard's supervisor sends the others
    supervisor.setsockopt(zmq.LINGER, 0)
    supervisor.connect(cluster.endpoints[0])
    supervisor.send_multipart([_header(wire.Op.EVICT), wire.encode_shard_id(dead)])
    values = client.wait(ticket)
    assert time.monotonic() - started < 5.0, "failed over on the notice, not after the 15 s timeout"
    np.testing.assert_array_equal(values, -np.ones((keys.size, 1), np.float32))
    assert [shard for shard, _ in client.channel.failovers] == [dead] and dead in client.placement.dead
    assert supervisor.poll(5000) and wire.decode_header(supervisor.recv_multipart()).op is wire.Op.ACK
    supervisor.close(0)


# -- primary-driven replication -------------------------------------------------------------------------------


def test_a_group_pushes_once_to_the_primary_and_every_replica_ends_bit_identical(make_cluster):
    cluster = make_cluster(shards=3, replication=2, optimizer="adagrad", learning_rate=0.3, width=2,
                           peers_known=False)
    client = cluster.client()  # tells each shard where the others are (PEERS)
    universe = _random_keys(4000, seed=21)
    rng = np.random.default_rng(22)
    pushed = 0
    for step in range(5):
        keys = np.sort(rng.choice(universe, 2500, replace=False))
        client.push(keys, rng.normal(size=(keys.size, 2)).astype(np.float32), step, tell_clock=True)
        pushed += keys.size
    client.drain()
    assert sum(s.stats.keys_pushed for s in cluster.services) == 2 * pushed  # every key applied on 2 replicas
    assert sum(s.forwards.forwarded_keys for s in cluster.services) == pushed  # the primaries sent the copies
    assert client.traffic.sent < 1.2 * pushed * (8 + 2 * 4)  # keys and values once (2x if it wrote every replica)
    held = [dict(zip(*_rows_of(service), strict=True)) for service in cluster.services]
    replicas = client.placement.replicas_of(universe)
    for key, owners in zip(universe.tolist(), replicas.tolist(), strict=True):
        if key in held[owners[0]]:
            assert held[owners[0]][key] == held[owners[1]][key], f"replicas of key {key} differ"


def _rows_of(service) -> tuple[list[int], list[bytes]]:
    """A shard's keys and the bytes of each key's values and optimizer state."""
    keys, values, state = service.shard.export()
    rows = np.concatenate([values, *state.values()], axis=1)
    return keys.tolist(), [row.tobytes() for row in rows]


@pytest.mark.parametrize("lost", ["the forward", "the acknowledgement"])
def test_a_push_its_primary_did_not_acknowledge_is_applied_once_on_every_replica(make_cluster, lost):
    """The primary dies after applying a push and before forwarding it (or before ACKing it): sent again, the push
    is applied exactly once on the backups, whichever of them had it."""
    cluster = make_cluster(shards=3, replication=2)
    client = cluster.client(timeout=20.0, failover_timeout=15.0)
    client.join()  # every shard knows this client: the survivors tell it of the death
    keys = cluster.keys_of(0, 600, seed=23)
    primary = cluster.services[0]
    if lost == "the forward":
        primary.forwards.forward = lambda *args: True  # applied, the copies never sent: it waits forever
    else:
        primary._answer_push = lambda push: None  # forwarded, the ACK never sent
    grads = np.arange(1, keys.size + 1, dtype=np.float32).reshape(-1, 1)
    ticket = client.push(keys, grads, 0)
    time.sleep(0.3)
    assert not ticket.done
    cluster.dealer(0).send_multipart([_header(wire.Op.SHUTDOWN)])
    cluster.threads[0].join(timeout=5)
    from hybrid_ps.server.death_notice import tell_shards_of_death

    assert tell_shards_of_death(dict(enumerate(cluster.endpoints)), 0, curve_keys=None) == [1, 2]
    started = time.monotonic()
    client.wait(ticket)
    assert time.monotonic() - started < 5.0, "sent again on the notice, not after the 15 s timeout"
    assert ticket.lost_shard and 0 in client.placement.dead
    np.testing.assert_array_equal(client.wait(client.pull(keys, 0)), -grads)  # once, not twice, not never
    backups = client.placement.replicas_of(keys)[:, 1]
    for backup in (1, 2):
        mine = keys[backups == backup]
        np.testing.assert_array_equal(cluster.services[backup].shard.pull(mine), -grads[backups == backup])


def test_a_primary_waiting_on_a_dead_backup_acknowledges_once_told_of_its_death(make_cluster):
    cluster = make_cluster(shards=2, replication=2)
    client = cluster.client(timeout=20.0, failover_timeout=15.0)
    cluster.dealer(1).send_multipart([_header(wire.Op.SHUTDOWN)])
    cluster.threads[1].join(timeout=5)
    keys = cluster.keys_of(0, 100, seed=24)
    ticket = client.push(keys, np.ones((keys.size, 1), np.float32), 0)
    assert not _answered_within(client, ticket, 0.5), "the primary waits for its backup"
    sock = cluster.dealer(0)
    assert wire.decode_header(_request(sock, [_header(wire.Op.EVICT), wire.encode_shard_id(1)])).op is wire.Op.ACK
    assert _answered_within(client, ticket, 5.0)
    assert cluster.services[0].forwards.waiting == 0


def test_a_push_without_its_sequence_is_refused_by_a_replicated_shard(make_cluster):
    cluster = make_cluster(shards=2, replication=2)
    keys = cluster.keys_of(0, 3, seed=25)
    reply = _request(cluster.dealer(0), [_header(wire.Op.PUSH, num_keys=3), _u64(keys),
                                         np.ones(3, np.float32).tobytes()])
    assert wire.decode_header(reply).op is wire.Op.ERROR
    assert "needs its sequence frame" in wire.error_text(reply[1])
    assert not cluster.services[0].shard.contains(keys).any()


def _restart(cluster, shard_id: int) -> None:
    """Replace dead ``shard_id``'s service with a new, empty one (as its supervisor respawns it), serving."""
    old = cluster.services[shard_id]
    cluster.threads[shard_id].join(timeout=5)
    old.close()
    optimizer = make_optimizer(*cluster.optimizer)
    cluster.services[shard_id] = ShardService(Shard(cluster.width, optimizer, capacity=16), shard_id, cluster.ring,
                                              cluster.groups, 0, context=cluster.context,
                                              replication=cluster.replication, restarted=True)
    cluster.threads[shard_id] = threading.Thread(target=cluster._serve, args=(shard_id,), daemon=True)
    cluster.threads[shard_id].start()


def _adagrad_steps(client: PSClient, universe: np.ndarray, per_step: int, seed: int):
    """A function pushing random width-2 gradients for ``per_step`` of ``universe``'s keys at each clock it is given
    (each push also ends its step), without waiting for the acknowledgements."""
    rng = np.random.default_rng(seed)

    def steps(clocks: range) -> None:
        for step in clocks:
            keys = np.sort(rng.choice(universe, per_step, replace=False))
            client.push(keys, rng.normal(size=(keys.size, 2)).astype(np.float32), step, tell_clock=True)

    return steps


def test_a_restarted_shard_is_filled_while_pushes_go_on_and_every_replica_ends_bit_identical(make_cluster):
    from hybrid_ps.server.death_notice import tell_shards_of_death, tell_shards_of_rejoin

    cluster = make_cluster(shards=3, replication=2, optimizer="adagrad", learning_rate=0.3, width=2)
    client = cluster.client(timeout=20.0, failover_timeout=15.0)
    client.join()
    universe = _random_keys(5000, seed=31)
    steps = _adagrad_steps(client, universe, 3000, seed=32)

    steps(range(0, 3))
    client.drain()
    cluster.dealer(1).send_multipart([_header(wire.Op.SHUTDOWN)])
    assert tell_shards_of_death(dict(enumerate(cluster.endpoints)), 1, curve_keys=None) == [0, 2]
    steps(range(3, 5))
    client.drain()
    assert 1 in client.placement.dead
    _restart(cluster, 1)
    steps(range(5, 7))  # in flight while shard 1 is filled
    filled = tell_shards_of_rejoin(dict(enumerate(cluster.endpoints)), 1, curve_keys=None)
    client.drain()  # the client hears SHARD_UP: from now on its clocks reach shard 1 too
    steps(range(7, 9))
    client.drain()
    assert sorted(filled) == [0, 2] and sum(filled.values()) > 0
    assert client.placement.rejoined == (1,) and not client.placement.dead, "the client was told (SHARD_UP)"
    new = cluster.services[1]
    held = [dict(zip(*_rows_of(service), strict=True)) for service in cluster.services]
    placement = client.placement
    assert sorted(held[1]) == sorted(k for k in universe.tolist() if k in held[0] or k in held[2]
                                     if placement.is_replica(np.array([k], np.uint64), 1)[0])
    replicas = placement.replicas_of(universe)
    for key, owners in zip(universe.tolist(), replicas.tolist(), strict=True):
        if key in held[owners[0]] or key in held[owners[1]]:
            assert held[owners[0]][key] == held[owners[1]][key], f"replicas of key {key} differ"
    assert not new.placement.dead and new.placement.rejoined == (1,) and new.clock.clocks.tolist() == [9]
    assert not placement.is_primary(universe, 1).any(), "a rejoined shard serves as a backup"


def test_a_retired_shards_ranges_are_re_replicated_while_pushes_go_on_and_a_second_death_loses_nothing(
        make_cluster):
    """No restart left: the supervisor retires its dead shard; the next shards of the ring take its place in each
    range, filled by the acting primaries, so that a second death later loses nothing."""
    from hybrid_ps.server.death_notice import tell_shards_of_death, tell_shards_of_retirement

    cluster = make_cluster(shards=4, replication=2, optimizer="adagrad", learning_rate=0.3, width=2)
    client = cluster.client(timeout=20.0, failover_timeout=15.0)
    client.join()
    universe = _random_keys(6000, seed=41)
    first_replicas = client.placement.replicas_of(universe)
    both_gone = np.sort(first_replicas, axis=1).tolist().count([1, 2])
    assert both_gone > 0, "some ranges live on shards 1 and 2 only: without the retirement they would be lost"
    steps = _adagrad_steps(client, universe, 3500, seed=42)

    steps(range(0, 3))
    client.drain()
    cluster.dealer(1).send_multipart([_header(wire.Op.SHUTDOWN)])
    cluster.threads[1].join(timeout=5)
    endpoints = dict(enumerate(cluster.endpoints))
    assert tell_shards_of_death(endpoints, 1, curve_keys=None) == [0, 2, 3]
    steps(range(3, 5))  # in flight while the new backups are filled
    primaries = client.placement.without(1).primary_of(universe)
    filled = tell_shards_of_retirement(endpoints, 1, curve_keys=None)
    steps(range(5, 7))
    client.drain()  # the client hears SHARD_RETIRED
    assert sorted(filled) == [0, 2, 3] and sum(filled.values()) > 0
    placement = client.placement
    assert placement.retired == (1,) and placement.lost_points == 0
    assert [cluster.services[i].placement.retired for i in (0, 2, 3)] == [(1,)] * 3
    np.testing.assert_array_equal(placement.primary_of(universe), primaries)  # no primary moved
    replicas = placement.replicas_of(universe)
    assert (replicas != 1).all() and (replicas[:, 0] != replicas[:, 1]).all()
    held = {i: dict(zip(*_rows_of(cluster.services[i]), strict=True)) for i in (0, 2, 3)}
    for key, owners in zip(universe.tolist(), replicas.tolist(), strict=True):
        if key in held[owners[0]] or key in held[owners[1]]:
            assert held[owners[0]][key] == held[owners[1]][key], f"replicas of key {key} differ"
    before = client.wait(client.pull(universe, 7))
    cluster.dealer(2).send_multipart([_header(wire.Op.SHUTDOWN)])
    cluster.threads[2].join(timeout=5)
    assert tell_shards_of_death(endpoints, 2, curve_keys=None) == [0, 3]
    late = cluster.client(0, timeout=20.0, failover_timeout=15.0)  # a leader restarted now knows nothing yet
    late.join()
    assert late.placement.retired == (1,) and sorted(late.placement.dead) == [1, 2]
    np.testing.assert_array_equal(late.wait(late.pull(universe, 7)), before)  # nothing lost
    np.testing.assert_array_equal(client.wait(client.pull(universe, 7)), before)


def test_a_supervisor_tells_every_other_shard_of_its_shards_death(make_cluster):
    from hybrid_ps.server.death_notice import tell_shards_of_death

    cluster = make_cluster(shards=3, replication=2)
    endpoints = dict(enumerate(cluster.endpoints))
    assert tell_shards_of_death(endpoints, 1, curve_keys=None) == [0, 2]
    assert [sorted(service.placement.dead) for service in cluster.services[::2]] == [[1], [1]]
    cluster.dealer(2).send_multipart([_header(wire.Op.SHUTDOWN)])
    cluster.threads[2].join(timeout=5)
    started = time.monotonic()
    assert tell_shards_of_death(endpoints, 1, curve_keys=None, timeout=0.5) == [0]  # shard 2 is gone too
    assert time.monotonic() - started < 2.0


def test_a_group_that_joins_after_a_shard_died_is_told_at_once(make_cluster):
    from hybrid_ps.server.death_notice import tell_shards_of_death

    cluster = make_cluster(shards=3, groups=2, replication=2)  # group 1 stays: the shards keep serving
    keys = _random_keys(3000, seed=10)
    first = cluster.client(0)
    first.wait(first.push(keys, np.ones((keys.size, 1), np.float32), 0))
    first.close()  # the leader is gone (it said no BYE)
    cluster.dealer(1).send_multipart([_header(wire.Op.SHUTDOWN)])
    cluster.threads[1].join(timeout=5)
    assert tell_shards_of_death(dict(enumerate(cluster.endpoints)), 1, curve_keys=None) == [0, 2]
    started = time.monotonic()
    late = cluster.client(0, timeout=20.0, failover_timeout=15.0)  # a restarted leader: it knows nothing
    late.join()
    assert sorted(late.placement.dead) == [1]
    np.testing.assert_array_equal(late.wait(late.pull(keys, 0)), -np.ones((keys.size, 1), np.float32))
    assert time.monotonic() - started < 5.0, "told at its JOIN, not after its 15 s failover timeout"


def test_a_tier_stops_when_no_group_joins_or_every_joined_group_is_gone(make_cluster):
    nobody = make_cluster(shards=1, groups=2, groups_present=False, group_timeout=0.6)
    nobody.threads[0].join(timeout=5)
    assert not nobody.threads[0].is_alive(), "a tier nobody joins stops after the group timeout"
    abandoned = make_cluster(shards=1, groups=2, groups_present=False, group_timeout=0.6)
    client = abandoned.client(0)
    assert client.join() == 0
    client.close()  # the group crashes: silent from now on
    abandoned.threads[0].join(timeout=5)
    assert not abandoned.threads[0].is_alive(), "once its only group was dropped, the tier stops"
    assert abandoned.services[0].clock.dropped.tolist() == [True, True]


# -- filters and encodings through real shards ------------------------------------------------------


@pytest.mark.parametrize("settings", [dict(threshold=0.2), dict(encoding="bfloat16"), dict(encoding="float8"),
                                      dict(threshold=0.2, encoding="float16")], ids=str)
def test_filtered_and_encoded_pushes_reach_the_shards_in_full_after_a_flush(make_cluster, settings):
    from hybrid_ps.worker.filters import PushFilter

    cluster = make_cluster(shards=2, replication=2, staleness=math.inf)  # SGD, lr 1: a value = -(its gradients)
    client = cluster.client(0)
    push = PushFilter(width=1, **settings)
    rng = np.random.default_rng(4)
    universe = _random_keys(500, seed=12)
    given = np.zeros(universe.size)
    for step in range(30):
        chosen = np.sort(rng.choice(universe.size, 100, replace=False))
        grads = rng.normal(0, 0.1, (100, 1)).astype(np.float32)
        given[chosen] += grads[:, 0]
        keys, values = push.apply(universe[chosen], grads, client.wait(client.pull(universe[chosen], step)))
        if keys.size:
            client.wait(client.push(keys, values, step))
    client.wait(client.push(*push.flush(), 30))
    assert push.stats.bytes_out < push.stats.bytes_in
    np.testing.assert_allclose(-client.wait(client.pull(universe, 31))[:, 0], given, atol=1e-5)


def test_repeated_key_lists_travel_as_references_and_a_forgotten_one_is_sent_again(make_cluster):
    cluster = make_cluster(shards=2, staleness=math.inf)
    plain, cached = cluster.client(0), cluster.client(0, key_cache=True)
    keys = _random_keys(2000, seed=13)
    grads = np.ones((keys.size, 1), np.float32)
    for client in (plain, cached):
        for step in range(5):
            client.wait(client.pull(keys, step))
            client.wait(client.push(keys, grads, step))
    assert cached.traffic.sent < 0.45 * plain.traffic.sent, "after the first pull and push only references go"
    assert cached.traffic.keys_after_cache < 0.25 * cached.traffic.keys_in == 0.25 * plain.traffic.keys_in
    for service in cluster.services:
        service.request_keys._key_lists.clear()  # the shards forget: the client must notice and send the keys again
    assert np.array_equal(cached.wait(cached.pull(keys, 6)), -10 * np.ones((keys.size, 1), np.float32))
    cached.wait(cached.push(keys, grads, 6))
    assert np.array_equal(plain.wait(plain.pull(keys, 7)), -11 * np.ones((keys.size, 1), np.float32))


@pytest.mark.parametrize("options", [dict(compression="zstd"), dict(compression="zstd", compress_values=True),
                                     dict(compression="zstd", key_cache=True)], ids=str)
def test_compressed_frames_give_the_same_model_with_fewer_bytes(make_cluster, options):
    cluster = make_cluster(shards=2, staleness=math.inf)
    plain, packed = cluster.client(0), cluster.client(0, **options)
    keys = np.arange(0, 40_000, 3, dtype=np.uint64)  # small indices, as libsvm data has: deltas compress well
    grads = np.full((keys.size, 1), 0.5, np.float32)
    for client in (plain, packed):
        client.wait(client.push(keys, grads, 0))
        client.wait(client.pull(keys, 1))
    assert packed.traffic.sent < 0.5 * plain.traffic.sent
    assert packed.traffic.keys_out < 0.1 * packed.traffic.keys_in and plain.traffic.keys_out == plain.traffic.keys_in
    assert np.array_equal(packed.wait(packed.pull(keys, 2)), -np.ones((keys.size, 1), np.float32))


def test_a_filtered_push_names_its_keys_as_a_subset_of_the_pulled_list(make_cluster):
    from hybrid_ps.worker.filters import PushFilter

    cluster = make_cluster(shards=1, staleness=math.inf)  # one replica: a push goes where the pull went
    client = cluster.client(0, key_cache=True)
    push = PushFilter(width=1, threshold=0.5)
    keys = _random_keys(4000, seed=3)
    grads = np.where(np.arange(keys.size) % 4 == 0, 1.0, 0.1).astype(np.float32).reshape(-1, 1)
    pulled = client.wait(client.pull(keys, 0))
    keys_before = client.traffic.keys_after_cache
    sent_keys, values = push.apply(keys, grads, pulled)
    client.wait(client.push(sent_keys, values, 0))
    assert sent_keys.size == 1000
    assert client.traffic.keys_after_cache - keys_before == 16 + 4000 // 8, "a reference and a bitmask, not 1000 keys"
    expected = np.where(np.arange(keys.size) % 4 == 0, -1.0, 0.0).astype(np.float32).reshape(-1, 1)
    assert np.array_equal(client.wait(client.pull(keys, 1)), expected)


def test_a_push_after_a_prefetched_pull_refers_to_the_list_pulled_at_its_own_clock(make_cluster):
    cluster = make_cluster(shards=1, staleness=math.inf)
    client = cluster.client(0, key_cache=True)
    now, upcoming = _random_keys(4000, seed=5), _random_keys(4000, seed=6)
    client.wait(client.pull(now, 0))
    client.wait(client.pull(upcoming, 1))  # the next step's pull goes before this step's push
    keys_before = client.traffic.keys_after_cache
    client.wait(client.push(now[::2], np.ones((2000, 1), np.float32), 0))
    assert client.traffic.keys_after_cache - keys_before == 16 + 4000 // 8
    assert np.array_equal(client.wait(client.pull(now, 2))[::2], -np.ones((2000, 1), np.float32))


# -- CURVE: only the job's clients get in ------------------------------------------------------------


def test_with_the_jobs_keys_a_client_trains_and_without_them_nothing_reaches_the_shard(make_cluster, caplog):
    curve_keys = JobKeys.generate()
    cluster = make_cluster(shards=1, staleness=math.inf, curve_keys=curve_keys)
    client = cluster.client(0)
    known = _random_keys(100, seed=21)
    client.wait(client.push(known, np.ones((known.size, 1), np.float32), 0))
    before = client.wait(client.pull(known, 1)).copy()
    stranger = JobKeys.generate()
    impostors = {
        "plain TCP": cluster.context.socket(zmq.DEALER),
        "another job's client keys": cluster.context.socket(zmq.DEALER),
        "a wrong server key": cluster.context.socket(zmq.DEALER),
    }
    other_keys = JobKeys(curve_keys.server_public, curve_keys.server_secret, stranger.client_public, stranger.client_secret)
    other_keys.connect_as_client(impostors["another job's client keys"])
    stranger.connect_as_client(impostors["a wrong server key"])
    push = [_header(wire.Op.PUSH, num_keys=known.size), _u64(known), np.full(known.size, 5.0, np.float32).tobytes()]
    for name, sock in impostors.items():
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(cluster.endpoints[0])
        sock.send_multipart(push)
    try:
        for name, sock in impostors.items():
            assert not sock.poll(1000), f"{name}: the shard answered"
    finally:
        for sock in impostors.values():
            sock.close(0)
    assert np.array_equal(client.wait(client.pull(known, 2)), before), "an impostor's push was applied"
    assert cluster.services[0].stats.requests.get("PUSH") == 1
    assert any("unknown CURVE key" in r.getMessage() for r in caplog.records)


def test_a_push_whose_update_would_overflow_is_rejected_and_the_shard_keeps_serving(make_cluster):
    cluster = make_cluster(shards=1, optimizer="adagrad", staleness=math.inf)
    client = cluster.client(0)
    keys = _random_keys(10, seed=30)
    client.wait(client.push(keys, np.ones((keys.size, 1), np.float32), 0))
    before = client.wait(client.pull(keys, 1)).copy()
    with pytest.raises(ShardUnavailableError, match="overflows float32"):
        client.wait(client.push(keys, np.full((keys.size, 1), 3e38, np.float32), 1))
    assert np.array_equal(client.wait(client.pull(keys, 2)), before)
    assert cluster.services[0].stats.errors == 1


# -- feature admission and eviction ----------------------------------------------------------------


def test_a_key_gets_a_row_at_its_third_push_and_its_primary_forwards_only_admitted_keys(make_cluster):
    from hybrid_ps.server.admission import Admission

    cluster = make_cluster(shards=3, replication=2, optimizer="sgd", learning_rate=1.0,
                           admission=Admission(after=3, sketch_bytes=1 << 16))
    client = cluster.client()
    keys = _random_keys(500, seed=41)
    ones = np.ones((keys.size, 1), np.float32)
    for step in range(2):
        client.wait(client.push(keys, ones, step, tell_clock=True))
        np.testing.assert_array_equal(client.wait(client.pull(keys, step + 1)), 0.0)  # reads as the initial value
    assert sum(len(service.shard) for service in cluster.services) == 0
    assert sum(service.forwards.forwarded_keys for service in cluster.services) == 0
    client.wait(client.push(keys, 2 * ones, 2, tell_clock=True))
    np.testing.assert_array_equal(client.wait(client.pull(keys, 3)), -2.0)  # only the admitting push applies
    assert sum(len(service.shard) for service in cluster.services) == 2 * keys.size  # on both replicas
    assert sum(service.stats.keys_not_admitted for service in cluster.services) == 2 * keys.size


def test_eviction_at_a_cut_takes_the_same_rows_off_every_replica_and_out_of_the_checkpoint(make_cluster):
    """Rows not pushed for 2 clocks go at the cut of clock 4, on the primaries (which write the cut) and, through
    DROP between the same forwards, on the backups; pushed again, an evicted key starts afresh."""
    from hybrid_ps.server.eviction import EvictionPolicy

    written: dict[int, np.ndarray] = {}

    def writer(exported, clock, cut, base):
        written[cut] = np.concatenate([written.get(cut, np.zeros(0, np.uint64)), exported[0]])

    cluster = make_cluster(shards=3, replication=2, optimizer="adagrad", learning_rate=0.3, width=2, stamped=True,
                           eviction=EvictionPolicy(after=2), checkpoint_writer=writer)
    client = cluster.client()
    universe = _random_keys(3000, seed=42)
    old, recent = universe[:1000], universe[1000:]
    rng = np.random.default_rng(43)
    client.wait(client.push(universe, rng.normal(size=(universe.size, 2)).astype(np.float32), 0, tell_clock=True))
    for step in range(1, 4):
        client.wait(client.push(recent, rng.normal(size=(recent.size, 2)).astype(np.float32), step, tell_clock=True))
    client.wait(client.clock(4))
    assert client.checkpoint(4) == 4
    deadline = time.monotonic() + 5  # a backup takes its DROP off the primary's link, soon after the cut
    while sum(len(service.shard) for service in cluster.services) > 2 * recent.size and time.monotonic() < deadline:
        time.sleep(0.01)
    held = [dict(zip(*_rows_of(service), strict=True)) for service in cluster.services]
    assert not any(int(key) in rows for rows in held for key in old)  # pushed at clock 0 < 4 - 2: gone everywhere
    assert sum(len(rows) for rows in held) == 2 * recent.size
    for key, owners in zip(recent.tolist(), client.placement.replicas_of(recent).tolist(), strict=True):
        assert held[owners[0]][key] == held[owners[1]][key], f"replicas of key {key} differ"
    np.testing.assert_array_equal(np.sort(written[4]), np.sort(recent))  # the cut holds what the shards hold
    assert sum(service.eviction.evicted for service in cluster.services) == old.size  # by the primaries
    client.wait(client.push(old, np.ones((old.size, 2), np.float32), 4, tell_clock=True))
    np.testing.assert_allclose(client.wait(client.pull(old, 5)), -0.3, rtol=1e-5)  # one AdaGrad step from zero

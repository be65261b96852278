"""The parts of a PS client: Routing (where keys go), Liveness (whom to ping, who is dead), RequestBook and
place_pull_reply (requests in flight), ShardLinks (one DEALER per shard, over real ZeroMQ on 127.0.0.1),
and ShardChannel's answer to a malformed reply."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from hybrid_ps.errors import RangeLostError, ShardUnavailableError
from hybrid_ps.net.links import ShardLinks, endpoints_by_shard
from hybrid_ps.net.sockets import bind_router, close_router
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.protocol import wire
from hybrid_ps.tier import TierView
from hybrid_ps.worker import liveness
from hybrid_ps.worker.client import PSClient
from hybrid_ps.worker.liveness import Liveness
from hybrid_ps.worker.requests import RequestBook, Resend, Ticket, place_pull_reply
from hybrid_ps.worker.routing import Routing

KEYS = np.arange(1, 3001, dtype=np.uint64) * np.uint64(7919)  # sorted, spread over the ring


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _by_key(parts, count: int) -> list[list[int]]:
    """For each key position, the shards of the parts holding it (positions ``None``: every key)."""
    holders: list[list[int]] = [[] for _ in range(count)]
    for shard, positions in parts:
        for position in range(count) if positions is None else positions.tolist():
            holders[position].append(shard)
    return holders


# -- Routing ------------------------------------------------------------------------------------------


def test_one_shard_gets_every_key_without_positions():
    routing = Routing(ring=HashRing([5], 16))
    assert routing.pull_parts(KEYS) == [(5, None)]
    assert routing.pull_parts(np.zeros(0, np.uint64)) == []
    assert routing.placement.backup_parts(KEYS, 5) == []  # no replication: nothing to forward
    assert routing.live_shards == [5] and routing.coordinator == 5


def _forwarded(placement, parts) -> list[list[int]]:
    """Per key of KEYS, the backups its acting primary (in ``parts``) forwards it to."""
    backups: list[list[int]] = [[] for _ in range(KEYS.size)]
    for primary, positions in parts:
        positions = np.arange(KEYS.size) if positions is None else positions
        for backup, among in placement.backup_parts(KEYS[positions], primary):
            for position in positions[among].tolist():
                backups[position].append(backup)
    return backups


def test_pulls_and_pushes_go_to_one_acting_primary_which_forwards_to_the_other_replica():
    ring = HashRing(range(3), 16)
    routing = Routing(ring=ring, replication=2)
    pulls = routing.pull_parts(KEYS)
    for shard, positions in pulls:
        assert positions is not None and positions.size and np.all(np.diff(positions) > 0), shard
    assert sorted(shard for shard, _ in pulls) == [0, 1, 2]
    owners = ring.shard_of(KEYS).tolist()
    assert _by_key(pulls, KEYS.size) == [[owner] for owner in owners]  # nothing dead: the ring's owner
    replicas = routing.placement.replicas_of(KEYS)
    assert replicas[:, 0].tolist() == owners
    assert _forwarded(routing.placement, pulls) == [[row[1]] for row in replicas.tolist()]


def test_a_shard_that_gets_all_of_a_pushs_keys_gets_no_positions():
    routing = Routing(ring=HashRing(range(3), 16), replication=2)
    key = KEYS[:1]
    replicas = routing.placement.replicas_of(key)[0].tolist()
    assert routing.pull_parts(key) == [(replicas[0], None)]
    [(backup, positions)] = routing.placement.backup_parts(key, replicas[0])
    assert backup == replicas[1] and positions.tolist() == [0]


def test_without_a_shard_its_pulls_move_to_the_backups_and_nothing_else_moves():
    ring = HashRing(range(3), 16)
    routing = Routing(ring=ring, replication=2)
    replicas = routing.placement.replicas_of(KEYS)
    routing.without(1)
    assert routing.live_shards == [0, 2] and routing.coordinator == 0
    pulled = _by_key(routing.pull_parts(KEYS), KEYS.size)
    expected = np.where(replicas[:, 0] == 1, replicas[:, 1], replicas[:, 0])
    assert pulled == [[shard] for shard in expected.tolist()]
    assert (replicas[:, 0] == 1).any()  # some pulls did move
    forwarded = _forwarded(routing.placement, routing.pull_parts(KEYS))
    others = [sorted(set(row) - {1, p}) for row, p in zip(replicas.tolist(), expected.tolist(), strict=True)]
    assert forwarded == others


def test_the_coordinator_is_the_lowest_live_shard():
    routing = Routing(ring=HashRing([2, 4, 9], 16), replication=3)
    assert routing.coordinator == 2
    routing.without(2)
    assert routing.coordinator == 4
    routing.without(4)
    assert routing.coordinator == 9 and routing.live_shards == [9]


def test_losing_every_replica_of_a_range_raises_range_lost():
    routing = Routing(ring=HashRing(range(3), 16), replication=2)
    routing.without(0)
    with pytest.raises(RangeLostError, match=r"every replica of \d+ of the 48 key ranges is dead .*dead: \[0, 1\]"):
        routing.without(1)
    with pytest.raises(RangeLostError, match="restart the job with --resume latest"):
        routing.pull_parts(KEYS)
    single = Routing(ring=HashRing(range(2), 16), replication=1)
    with pytest.raises(RangeLostError, match="replication 1"):
        single.without(1)


def test_switch_to_a_tier_view_routes_by_its_shards_with_nobody_dead():
    ring = HashRing(range(3), 16)
    routing = Routing(ring=ring, replication=2)
    routing.without(2)
    routing.switch_to(TierView({0: "tcp://a:1", 3: "tcp://b:1", 4: "tcp://c:1"}, 1))
    placement = routing.placement
    assert routing.live_shards == [0, 3, 4] and not placement.dead and placement.replication == 1
    assert placement.ring.vnodes == 16
    expected = HashRing([0, 3, 4], 16).shard_of(KEYS).tolist()
    assert _by_key(routing.pull_parts(KEYS), KEYS.size) == [[s] for s in expected]


# -- Liveness -----------------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    """The liveness module's ``time.monotonic``, set by hand: ``clock.now = ...``."""
    fake = SimpleNamespace(now=100.0)
    monkeypatch.setattr(liveness, "time", SimpleNamespace(monotonic=lambda: fake.now))
    return fake


def test_a_quiet_shard_is_pinged_once_per_heartbeat_interval(clock):
    alive = Liveness(heartbeat_interval=1.0, failover_timeout=5.0)
    alive.track(0)
    alive.track(1)
    clock.now = 100.5
    assert alive.check({}, [0, 1]) == ([], [])
    clock.now = 101.5
    assert alive.check({}, [0, 1]) == ([0, 1], [])
    clock.now = 102.0  # quiet for 2 s, but pinged 0.5 s ago
    assert alive.check({}, [0, 1]) == ([], [])
    alive.heard(1)
    clock.now = 102.6
    assert alive.check({}, [0, 1]) == ([0], [])  # shard 1 spoke 0.6 s ago
    assert alive.check({}, [1]) == ([], [])  # only the shards asked about


def test_only_a_shard_owing_a_reply_and_silent_past_the_failover_timeout_is_dead(clock):
    alive = Liveness(heartbeat_interval=1.0, failover_timeout=3.0)
    for shard in (0, 1, 2):
        alive.track(shard)
    clock.now = 102.0
    alive.awaiting(0, owed_before=0)  # silence counts from this request
    alive.awaiting(2, owed_before=1)  # it owed one already: silence counts from when it was tracked
    clock.now = 103.5
    ping, dead = alive.check({0: 1, 1: 0, 2: 2}, [0, 1, 2])
    assert dead == [(2, pytest.approx(3.5))] and ping == [0, 1]
    clock.now = 105.5
    ping, dead = alive.check({0: 1, 1: 0}, [0, 1])
    assert dead == [(0, pytest.approx(3.5))]  # shard 1 owes nothing: silent for 5.5 s, still alive
    assert ping == [1]
    alive.heard(0)
    clock.now = 106.0
    assert alive.check({0: 1}, [0]) == ([], [])


def test_liveness_on_the_real_clock_pings_then_declares_dead():
    alive = Liveness(heartbeat_interval=0.1, failover_timeout=0.6)
    alive.track(0)
    alive.awaiting(0, owed_before=0)
    assert alive.check({0: 1}, [0]) == ([], [])
    time.sleep(0.15)
    assert alive.check({0: 1}, [0]) == ([0], [])
    time.sleep(0.5)
    ping, dead = alive.check({0: 1}, [0])
    assert ping == [] and [shard for shard, _ in dead] == [0] and dead[0][1] > 0.6


# -- RequestBook and pull replies ---------------------------------------------------------------------


def test_request_ids_increase_and_each_shard_counts_what_it_owes():
    book = RequestBook()
    pull, clock = Ticket(wire.Op.PULL, "pull"), Ticket(wire.Op.CLOCK, "clock 1")
    ids = [book.open(0, pull), book.open(1, pull), book.open(1, clock), book.open(2, clock)]
    assert ids == [1, 2, 3, 4]
    assert book.outstanding == {0: 1, 1: 2, 2: 1}
    assert pull.pending == {1, 2} and clock.pending == {3, 4} and not pull.done
    assert book.shards_awaited(pull) == [0, 1] and book.shards_awaited(clock) == [1, 2]
    assert book.answered(2, 1) is pull and book.outstanding[1] == 1
    assert pull.pending == {1, 2}  # answered does not close
    book.close(2, pull)
    assert pull.pending == {1} and book.shards_awaited(pull) == [0]
    assert book.answered(2, 1) is None and book.outstanding[1] == 1  # a second reply: unknown, owes nothing less
    assert book.answered(99, 0) is None and book.outstanding[0] == 1
    book.close(1, pull)
    assert pull.done
    assert [ticket.what for ticket in book.open_tickets()] == ["pull", "clock 1", "clock 1"]  # 1 never answered


def test_orphans_of_a_dead_shard_are_forgotten_and_closed():
    book = RequestBook()
    a, b = Ticket(wire.Op.PULL, "a"), Ticket(wire.Op.PUSH, "b")
    book.open(0, a)
    book.open(1, a)
    book.open(1, b)
    book.keep_for_resend(2, Resend(wire.Op.PULL, 4, [np.arange(3, dtype=np.uint64)], 3, 0))
    orphans = book.orphans_of(1)
    assert [(r, t.what, resend is not None) for r, t, resend in orphans] == [(2, "a", True), (3, "b", False)]
    assert book.outstanding[1] == 0 and book.outstanding[0] == 1
    assert a.pending == {1} and b.done
    assert book.take_resend(2) is None  # closed with its request
    assert book.shards_awaited(a) == [0] and book.orphans_of(1) == []


def test_a_resend_is_kept_until_taken_once():
    book = RequestBook()
    ticket = Ticket(wire.Op.PUSH, "push")
    request = book.open(0, ticket)
    keys = np.array([1, 5], np.uint64)
    book.keep_for_resend(request, Resend(wire.Op.PUSH, 7, [keys, np.ones((2, 1), np.float32)], 2, wire.FLAG_CLOCK))
    kept = book.take_resend(request)
    assert kept is not None and (kept.op, kept.clock, kept.num_keys, kept.extra_flags) == (
        wire.Op.PUSH, 7, 2, wire.FLAG_CLOCK)
    assert kept.arrays[0] is keys
    assert book.take_resend(request) is None
    book.keep_for_resend(request, Resend(wire.Op.PUSH, 7, [], 2, 0))
    book.close(request, ticket)
    assert book.take_resend(request) is None


def test_the_lowest_unacknowledged_push_sequence_rises_as_pushes_are_answered():
    book = RequestBook()
    ticket = Ticket(wire.Op.PUSH, "push")
    assert book.lowest_unacknowledged(default=9) == 9
    requests = [book.open(0, ticket) for _ in range(3)]
    for request, sequence in zip(requests, [4, 5, 6], strict=True):
        book.keep_for_resend(request, Resend(wire.Op.PUSH, 0, [], 0, 0, sequence))
    book.keep_for_resend(book.open(0, ticket), Resend(wire.Op.PULL, 0, [], 0, 0))  # a pull has no sequence
    assert book.lowest_unacknowledged(default=9) == 4
    book.close(requests[1], ticket)
    assert book.lowest_unacknowledged(default=9) == 4
    book.close(requests[0], ticket)
    assert book.lowest_unacknowledged(default=9) == 6


def _reply(request_id: int, values: np.ndarray, clocks: list[int]) -> tuple[wire.Header, list[memoryview]]:
    """A PULL_REPLY as a shard sends it, decoded as the client does."""
    header = wire.Header(wire.Op.PULL_REPLY, 0, request_id, min(clocks), values.shape[0], values.shape[1])
    frames = [memoryview(wire.encode_header(header)), memoryview(np.ascontiguousarray(values, np.float32).tobytes()),
              memoryview(np.array(clocks, np.int64).tobytes())]
    return wire.decode_header(frames), frames


@pytest.mark.parametrize("width", [1, 3])
def test_a_multi_shard_pull_puts_each_reply_at_its_positions(width):
    keys = np.array([2, 3, 5, 7, 11], np.uint64)
    ticket = Ticket(wire.Op.PULL, "pull of 5 keys at clock 4", keys=keys, clock=4)
    ticket.values = np.full((5, width), -1.0, np.float32)
    book = RequestBook()
    first, second = book.open(0, ticket), book.open(1, ticket)
    ticket.placement = {first: np.array([0, 2, 4]), second: np.array([1, 3])}
    expected = np.arange(5 * width, dtype=np.float32).reshape(5, width)
    header, frames = _reply(second, expected[[1, 3]], [5, 2])
    assert place_pull_reply(ticket, second, header, frames, width, "shard 1 (tcp://b)").tolist() == [5, 2]
    header, frames = _reply(first, expected[[0, 2, 4]], [3, 7])
    assert place_pull_reply(ticket, first, header, frames, width, "shard 0 (tcp://a)").tolist() == [3, 7]
    np.testing.assert_array_equal(ticket.values, expected)
    assert ticket.shard_clocks.tolist() == [3, 2]  # elementwise min over the replies
    assert ticket.placement == {}


def test_the_only_reply_of_a_pull_becomes_its_values():
    keys = np.array([4, 8, 9], np.uint64)
    ticket = Ticket(wire.Op.PULL, "pull of 3 keys", keys=keys)
    ticket.placement = {1: 3}
    values = np.array([[0.5, 1.5], [2.5, 3.5], [4.5, 5.5]], np.float32)
    header, frames = _reply(1, values, [6])
    place_pull_reply(ticket, 1, header, frames, 2, "shard 0 (tcp://a)")
    np.testing.assert_array_equal(ticket.values, values)
    assert ticket.values.flags.aligned and ticket.values.dtype == np.float32
    assert ticket.shard_clocks.tolist() == [6]


def test_a_reply_with_the_wrong_key_count_names_the_shard():
    ticket = Ticket(wire.Op.PULL, "pull of 3 keys at clock 0", keys=np.array([1, 2, 3], np.uint64))
    ticket.values = np.zeros((3, 1), np.float32)
    ticket.placement = {1: np.array([0, 2]), 2: 1}
    header, frames = _reply(1, np.ones((3, 1)), [0])
    with pytest.raises(ShardUnavailableError,
                       match=re.escape("shard 4 (tcp://h:9) answered 3 keys of the pull of 3 keys at clock 0, "
                                       "asked 2")):
        place_pull_reply(ticket, 1, header, frames, 1, "shard 4 (tcp://h:9)")
    header, frames = _reply(2, np.ones((2, 1)), [0])
    with pytest.raises(ShardUnavailableError, match="answered 2 keys .*, asked 1$"):
        place_pull_reply(ticket, 2, header, frames, 1, "shard 5 (tcp://h:8)")
    assert ticket.values.sum() == 0 and ticket.shard_clocks is None


# -- ShardLinks ---------------------------------------------------------------------------------------


def _echo(router: zmq.Socket, prefix: bytes) -> list[bytes]:
    """Answer one message on ``router`` with its frames, ``prefix`` first; the frames received."""
    assert router.poll(2000), "nothing reached the router"
    identity, *frames = router.recv_multipart()
    router.send_multipart([identity, prefix, *frames])
    return frames


def _receive(links: ShardLinks, count: int) -> list[tuple[int, list[bytes]]]:
    got: list[tuple[int, list[bytes]]] = []
    deadline = time.monotonic() + 3
    while len(got) < count and time.monotonic() < deadline:
        got += [(shard, [bytes(frame) for frame in frames]) for shard, frames in links.receive(100)]
    return got


def test_links_send_to_each_shard_and_receive_its_replies_by_shard(context):
    (a, a_endpoint), (b, b_endpoint) = bind_router(context, "127.0.0.1"), bind_router(context, "127.0.0.1")
    links = ShardLinks(context=context)
    links.connect(3, a_endpoint)
    links.connect(7, b_endpoint)
    assert links.endpoints == {3: a_endpoint, 7: b_endpoint}
    links.send(3, [b"to three", memoryview(b"\x01\x02")])
    links.send(7, [b"to seven"])
    assert _echo(a, b"from a") == [b"to three", b"\x01\x02"]
    assert _echo(b, b"from b") == [b"to seven"]
    got = _receive(links, 2)
    assert sorted(got) == [(3, [b"from a", b"to three", b"\x01\x02"]), (7, [b"from b", b"to seven"])]
    started = time.monotonic()
    assert list(links.receive(30)) == []
    assert time.monotonic() - started < 1
    assert links.where(3) == f"shard 3 ({a_endpoint})"
    links.close()
    close_router(context, a, None, 0)
    close_router(context, b, None, 0)


def test_several_replies_waiting_on_one_link_come_in_one_receive(context):
    router, endpoint = bind_router(context, "127.0.0.1")
    links = ShardLinks(context=context)
    links.connect(0, endpoint)
    for i in range(3):
        links.send(0, [b"%d" % i])
    for _ in range(3):
        _echo(router, b"re")
    time.sleep(0.3)  # all three arrived
    assert [(shard, [bytes(f) for f in frames]) for shard, frames in links.receive(1000)] == [
        (0, [b"re", b"0"]), (0, [b"re", b"1"]), (0, [b"re", b"2"])]
    links.close()
    close_router(context, router, None, 0)


def test_a_disconnected_link_is_not_connected_and_receives_nothing(context):
    router, endpoint = bind_router(context, "127.0.0.1")
    links = ShardLinks(context=context)
    assert not links.connected(0)
    links.connect(0, endpoint)
    assert links.connected(0)
    links.send(0, [b"ping"])
    _echo(router, b"late")
    time.sleep(0.1)
    links.disconnect(0, linger_ms=0)
    assert not links.connected(0)
    assert list(links.receive(50)) == []  # the closed socket is out of the poller
    assert links.where(0) == f"shard 0 ({endpoint})"  # still named in messages
    links.close()  # skips the closed socket
    close_router(context, router, None, 0)


def test_send_if_room_drops_instead_of_blocking_when_nobody_reads(context):
    router, endpoint = bind_router(context, "127.0.0.1")
    close_router(context, router, None, 0)  # nobody listens there now: messages only queue up
    links = ShardLinks(context=context)
    links.connect(0, endpoint)
    done = threading.Event()

    def flood() -> None:
        for _ in range(12_000):  # beyond the high-water mark of 10 000
            links.send_if_room(0, [b"fence", b"x"])
        done.set()

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    assert done.wait(5), "send_if_room blocked"
    thread.join()
    links.disconnect(0, linger_ms=0)


def test_endpoints_by_shard_takes_a_list_or_a_dict():
    assert endpoints_by_shard(["tcp://a:1", "tcp://b:2"]) == {0: "tcp://a:1", 1: "tcp://b:2"}
    given = {4: "tcp://c:3", 2: "tcp://d:4"}
    copied = endpoints_by_shard(given)
    assert copied == given and copied is not given
    assert endpoints_by_shard(()) == {}


# -- ShardChannel -------------------------------------------------------------------------------------


def test_a_malformed_reply_raises_shard_unavailable_naming_the_shard(context):
    router, endpoint = bind_router(context, "127.0.0.1")
    client = PSClient([endpoint], 0, 1, HashRing([0], 16), timeout=3.0, context=context)
    try:
        ticket = client.clock(3)
        assert router.poll(3000), "the CLOCK did not arrive"
        identity, *request = router.recv_multipart()
        header = wire.decode_header(request)
        assert (header.op, header.clock) == (wire.Op.CLOCK, 3)
        router.send_multipart([identity, b"garbage"])
        started = time.monotonic()
        with pytest.raises(ShardUnavailableError) as raised:
            client.wait(ticket)
        assert time.monotonic() - started < 2.5, "it waited for the timeout instead"
        message = str(raised.value)
        assert message.startswith(f"shard 0 ({endpoint}) sent a bad reply: ")
        assert f"header is 7 bytes, expected {wire.HEADER_SIZE}" in message
    finally:
        client.close()
        close_router(context, router, None, 0)

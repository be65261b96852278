"""What a shard sends back and holds back: HeldPulls (pulls the SSP rule holds), Replies (ACKs, pulled values and
errors, over a real ROUTER/DEALER pair on 127.0.0.1) and GroupTable.choose_stop_clock."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import zmq

from hybrid_ps.errors import WireError
from hybrid_ps.net.sockets import bind_router, close_router
from hybrid_ps.protocol import wire
from hybrid_ps.protocol.staleness import VectorClock
from hybrid_ps.server.cuts import CutReplies
from hybrid_ps.server.groups import GroupTable
from hybrid_ps.server.held_pulls import MAX_HELD_KEYS, MAX_HELD_PULLS, HeldPulls
from hybrid_ps.server.replies import Replies, is_clock

# -- HeldPulls ----------------------------------------------------------------------------------------


def _pull(clock: int, request_id: int = 1) -> wire.Header:
    return wire.Header(wire.Op.PULL, 0, request_id, clock, 1)


def _keys(count: int) -> np.ndarray:
    return np.arange(count, dtype=np.uint64)


def test_held_pulls_are_released_in_arrival_order_once_their_clock_is_ready():
    held = HeldPulls(max_keys=100)
    for request_id, (identity, clock) in enumerate([(b"a", 3), (b"b", 1), (b"a", 5), (b"a", 2)], start=1):
        held.hold(identity, _pull(clock, request_id), _keys(request_id))
    assert len(held) == 4
    asked = []
    released = held.release(lambda clock: asked.append(clock) or clock <= 2)
    assert asked == [3, 1, 5, 2]
    assert [(p.identity, p.header.request_id, p.keys.size) for p in released] == [(b"b", 2, 2), (b"a", 4, 4)]
    assert len(held) == 2
    assert held.release(lambda clock: False) == [] and len(held) == 2
    assert [p.header.clock for p in held.release(lambda clock: True)] == [3, 5]
    assert len(held) == 0 and held.release(lambda clock: True) == []


def test_a_connection_may_hold_at_most_max_held_pulls_while_another_still_may():
    held = HeldPulls(max_keys=1000)
    for i in range(MAX_HELD_PULLS):
        held.hold(b"greedy", _pull(i), _keys(1))
    message = (f"{MAX_HELD_PULLS} pulls ({MAX_HELD_PULLS} keys) of this connection are held back already "
               f"(the SSP rule): at most {MAX_HELD_PULLS}, with {MAX_HELD_KEYS} * 1000 keys")
    with pytest.raises(WireError, match=f"^{re.escape(message)}$"):
        held.hold(b"greedy", _pull(99), _keys(1))
    assert len(held) == MAX_HELD_PULLS  # the refused pull is not held
    held.hold(b"other", _pull(99), _keys(1))
    assert len(held) == MAX_HELD_PULLS + 1
    held.release(lambda clock: clock == 0)
    held.hold(b"greedy", _pull(100), _keys(1))  # room again


def test_a_connection_may_pin_at_most_max_held_keys_messages_of_keys():
    held = HeldPulls(max_keys=10)
    for _ in range(MAX_HELD_KEYS - 1):
        held.hold(b"a", _pull(1), _keys(10))
    held.hold(b"a", _pull(1), _keys(9))
    held.hold(b"a", _pull(1), _keys(1))  # exactly MAX_HELD_KEYS * max_keys keys
    with pytest.raises(WireError, match=re.escape(f"{MAX_HELD_KEYS + 1} pulls ({MAX_HELD_KEYS * 10} keys) of this "
                                                  f"connection are held back already")):
        held.hold(b"a", _pull(1), _keys(1))
    held.hold(b"b", _pull(1), _keys(10))
    assert len(held) == MAX_HELD_KEYS + 2


# -- Replies ------------------------------------------------------------------------------------------


class Pair:
    """A shard's ROUTER (bound as a shard binds it) and one client DEALER, with its identity on the ROUTER."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.router, endpoint = bind_router(self.context, "127.0.0.1")
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(endpoint)
        self.dealer.send(b"hello")
        assert self.router.poll(3000), "the DEALER did not connect"
        self.identity, _ = self.router.recv_multipart()

    def received(self) -> list[bytes]:
        assert self.dealer.poll(3000), "no reply reached the client"
        return self.dealer.recv_multipart()

    def nothing_waiting(self) -> bool:
        return not self.dealer.poll(100)

    def close(self) -> None:
        self.dealer.close(0)
        close_router(self.context, self.router, None, 0)
        self.context.destroy(linger=0)


@pytest.fixture
def pair():
    pair = Pair()
    yield pair
    pair.close()


def _replies(pair: Pair, clock: VectorClock, announced=None, calls: list | None = None) -> Replies:
    def announcement():
        if calls is not None:
            calls.append(1)
        return announced

    return Replies(socket=pair.router, shard_id=3, clock=clock, announcement=announcement)


def _clock(*clocks: int) -> VectorClock:
    vector = VectorClock(len(clocks))
    for group, value in enumerate(clocks):
        vector.advance(group, value)
    return vector


def _header(frames: list[bytes]) -> wire.Header:
    return wire.decode_header(frames)


def test_the_ack_of_a_clock_carries_the_announcement_when_there_is_one(pair):
    replies = _replies(pair, _clock(5, 3), announced=(wire.FLAG_STOP, 9))
    replies.ack(pair.identity, wire.Header(wire.Op.CLOCK, 1, 17, 4))
    header = _header(pair.received())
    assert (header.op, header.group, header.request_id, header.clock, header.flags) == (
        wire.Op.ACK, 1, 17, 9, wire.FLAG_STOP)
    reshard = _replies(pair, _clock(5, 3), announced=(wire.FLAG_RESHARD, 12))
    reshard.ack(pair.identity, wire.Header(wire.Op.PUSH, 0, 18, 4, flags=wire.FLAG_CLOCK))
    header = _header(pair.received())
    assert (header.request_id, header.clock, header.flags) == (18, 12, wire.FLAG_RESHARD)


def test_the_ack_of_a_clock_without_an_announcement_carries_the_slowest_clock(pair):
    calls: list = []
    replies = _replies(pair, _clock(5, 3), announced=None, calls=calls)
    replies.ack(pair.identity, wire.Header(wire.Op.CLOCK, 0, 2, 6))
    header = _header(pair.received())
    assert (header.op, header.request_id, header.clock, header.flags) == (wire.Op.ACK, 2, 3, 0)
    assert calls == [1]


def test_the_ack_of_a_pull_or_a_plain_push_never_carries_the_announcement(pair):
    calls: list = []
    replies = _replies(pair, _clock(5, 3), announced=(wire.FLAG_STOP, 9), calls=calls)
    replies.ack(pair.identity, wire.Header(wire.Op.PULL, 0, 4, 9, 1))
    replies.ack(pair.identity, wire.Header(wire.Op.PUSH, 0, 5, 9, 1))
    for request_id in (4, 5):
        header = _header(pair.received())
        assert (header.request_id, header.clock, header.flags) == (request_id, 3, 0)
    assert calls == [], "the announcement is consulted only for a group's clock"


def test_is_clock_is_a_clock_or_a_push_telling_the_clock():
    assert is_clock(wire.Header(wire.Op.CLOCK))
    assert is_clock(wire.Header(wire.Op.PUSH, flags=wire.FLAG_CLOCK | wire.FLAG_KEEP_KEYS))
    assert not is_clock(wire.Header(wire.Op.PUSH, flags=wire.FLAG_KEEP_KEYS))
    assert not is_clock(wire.Header(wire.Op.PULL, flags=wire.FLAG_CLOCK))
    assert not is_clock(wire.Header(wire.Op.JOIN))


def test_ack_with_carries_the_given_clock(pair):
    _replies(pair, _clock(1)).ack_with(pair.identity, wire.Header(wire.Op.JOIN, 2, 8), 42)
    header = _header(pair.received())
    assert (header.op, header.group, header.request_id, header.clock, header.flags) == (wire.Op.ACK, 2, 8, 42, 0)


def test_values_are_a_pull_reply_with_the_arrays_shape_and_every_groups_clock(pair):
    clock = _clock(5, 3, 8)
    clock.finish(1)
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    _replies(pair, clock).values(pair.identity, wire.Header(wire.Op.PULL, 2, 30, 6, 4, 3), values)
    frames = pair.received()
    header = _header(frames)
    assert (header.op, header.group, header.request_id, header.num_keys, header.width) == (
        wire.Op.PULL_REPLY, 2, 30, 4, 3)
    assert header.clock == 5  # the slowest running group (group 1 finished)
    np.testing.assert_array_equal(wire.values_from_frame(frames[1], header), values)
    assert np.frombuffer(frames[2], np.int64).tolist() == [5, wire.FINAL_CLOCK, 8]


def test_an_error_carries_the_request_and_text_cut_to_4096_bytes(pair):
    replies = _replies(pair, _clock(0))
    replies.error(pair.identity, wire.Header(wire.Op.PUSH, 1, 77), "keys must be strictly increasing")
    frames = pair.received()
    header = _header(frames)
    assert (header.op, header.group, header.request_id, header.flags) == (wire.Op.ERROR, 1, 77, 0)
    assert wire.error_text(frames[1]) == "keys must be strictly increasing"
    replies.error(pair.identity, None, "x" * 5000, flags=wire.FLAG_KEYS_MISSED)
    frames = pair.received()
    header = _header(frames)
    assert (header.group, header.request_id, header.flags) == (0, 0, wire.FLAG_KEYS_MISSED)
    assert frames[1] == b"x" * 4096


def test_answer_acks_every_request_that_waited_on_a_cut_or_sends_its_error(pair):
    replies = _replies(pair, _clock(0, 0))
    waited = [(pair.identity, wire.Header(wire.Op.CHECKPOINT, 0, 11, 6)),
              (pair.identity, wire.Header(wire.Op.CHECKPOINT, 1, 12, 6))]
    replies.answer(CutReplies(waited, 6))
    acks = [_header(pair.received()) for _ in waited]
    assert [(h.op, h.group, h.request_id, h.clock) for h in acks] == [(wire.Op.ACK, 0, 11, 6), (wire.Op.ACK, 1, 12, 6)]
    replies.answer(CutReplies(waited[:1], 6, error="checkpoint at clock 6 failed: OSError: disk full"))
    frames = pair.received()
    assert (_header(frames).op, _header(frames).request_id) == (wire.Op.ERROR, 11)
    assert wire.error_text(frames[1]) == "checkpoint at clock 6 failed: OSError: disk full"
    replies.answer(CutReplies([], 6))
    assert pair.nothing_waiting()


def test_a_reply_to_a_departed_client_is_logged_not_raised(pair, caplog):
    replies = _replies(pair, _clock(0))
    with caplog.at_level(logging.WARNING, logger="hybrid_ps.server.replies"):
        replies.ack(b"\x00gone", wire.Header(wire.Op.CLOCK, 0, 1, 1))
        replies.values(b"\x00gone", wire.Header(wire.Op.PULL, 0, 2, 0, 1), np.zeros((1, 1), np.float32))
        replies.error(b"\x00gone", None, "late")
    assert caplog.text.count("shard 3 could not reply to a departed client") == 3
    assert pair.nothing_waiting()
    replies.ack(pair.identity, wire.Header(wire.Op.CLOCK, 0, 4, 1))  # the socket still serves the others
    assert _header(pair.received()).request_id == 4


# -- GroupTable.choose_stop_clock ---------------------------------------------------------------------


def test_the_stop_clock_is_chosen_once_two_past_the_fastest_group():
    groups = GroupTable(num_groups=3)
    groups.clock.advance(0, 4)
    groups.clock.advance(1, 7)
    assert groups.stop_at is None
    assert groups.choose_stop_clock() is True and groups.stop_at == 9
    groups.clock.advance(2, 20)
    assert groups.choose_stop_clock() is False and groups.stop_at == 9
    fresh = GroupTable(num_groups=2)
    assert fresh.choose_stop_clock() is True and fresh.stop_at == 2

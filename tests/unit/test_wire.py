"""Wire format: header round trip and every validation rule."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from hybrid_ps import wire
from hybrid_ps.errors import WireError


def _frames(op: wire.Op, *extra: bytes, **fields) -> list[bytes]:
    return [wire.encode_header(wire.Header(op, **fields)), *extra]


@pytest.mark.parametrize("op", list(wire.Op))
def test_header_round_trip(op):
    frames = [b""] * wire._FRAMES_FOR_OP[op]
    frames[0] = wire.encode_header(wire.Header(op, group=3, request_id=2**40, clock=-5, num_keys=7, width=4))
    header = wire.decode_header(frames)
    assert (header.op, header.group, header.request_id, header.clock, header.num_keys, header.width) == (
        op, 3, 2**40, -5, 7, 4)
    assert len(frames[0]) == wire.HEADER_SIZE


def test_final_clock_fits_the_header():
    header = wire.decode_header(_frames(wire.Op.ACK, clock=wire.FINAL_CLOCK))
    assert header.clock == wire.FINAL_CLOCK


def _raw_header(**changes) -> bytes:
    fields = dict(magic=wire.MAGIC, version=wire.VERSION, op=int(wire.Op.CLOCK), dtype=0, flags=0, group=0,
                  request_id=1, clock=0, num_keys=0, width=1)
    fields.update(changes)
    return struct.pack(wire.HEADER_FORMAT, *fields.values())


@pytest.mark.parametrize(
    "frames, message",
    [
        ([], "empty message"),
        ([b"short"], "header is 5 bytes"),
        ([_raw_header(magic=b"XX")], "bad magic"),
        ([_raw_header(version=99)], "wire version 99"),
        ([_raw_header(op=42)], "unknown op 42"),
        ([_raw_header(dtype=7)], "unknown dtype code 7"),
        ([_raw_header(width=0)], "width must be >= 1"),
        ([_raw_header(), b"extra"], "CLOCK needs 1 frames, got 2"),
        ([_raw_header(op=int(wire.Op.PUSH)), b""], "PUSH needs 3 frames, got 2"),
    ],
)
def test_bad_headers_are_rejected(frames, message):
    with pytest.raises(WireError, match=message):
        wire.decode_header(frames)


def test_keys_frame_is_a_zero_copy_view():
    keys = np.array([1, 5, 9], dtype="<u8")
    buffer = bytearray(keys.tobytes())
    view = wire.keys_from_frame(memoryview(buffer), 3, max_keys=10)
    np.testing.assert_array_equal(view, keys)
    buffer[0:8] = np.array([2], "<u8").tobytes()
    assert view[0] == 2  # shares memory with the frame


@pytest.mark.parametrize(
    "keys, count, limit, message",
    [
        ([1, 2, 3], 4, 10, "keys frame is 24 bytes"),
        ([1, 2, 3], 3, 2, "exceed the limit of 2"),
        ([1, 3, 3], 3, 10, "strictly increasing"),
        ([3, 2], 2, 10, "strictly increasing"),
    ],
)
def test_bad_keys_frames(keys, count, limit, message):
    with pytest.raises(WireError, match=message):
        wire.keys_from_frame(np.array(keys, "<u8").tobytes(), count, limit)


def test_values_frame_shape_length_and_finiteness():
    header = wire.Header(wire.Op.PUSH, num_keys=2, width=3)
    values = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(wire.values_from_frame(values.tobytes(), header), values.reshape(2, 3))
    with pytest.raises(WireError, match="values frame is 20 bytes"):
        wire.values_from_frame(values[:5].tobytes(), header)
    for bad in (np.nan, np.inf, -np.inf):
        values[4] = bad
        with pytest.raises(WireError, match="NaN or Inf"):
            wire.values_from_frame(values.tobytes(), header)


def test_error_text_is_bounded_and_never_raises():
    assert wire.error_text(b"bad thing") == "bad thing"
    assert len(wire.error_text(b"x" * 100_000)) == 4096
    assert wire.error_text(b"\xff\xfe") == "\ufffd\ufffd"

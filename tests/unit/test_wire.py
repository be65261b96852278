"""hybrid_ps.protocol.wire: header round trip for every op and every validation rule of headers and frames."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from hybrid_ps.errors import HybridPSError, WireError
from hybrid_ps.protocol import wire

# Frames each op carries (header included), straight from the table in the module docstring.
FRAMES = {
    wire.Op.PULL: 2,
    wire.Op.PUSH: 3,  # or 4, with the sequence frame of replication
    wire.Op.CLOCK: 1,
    wire.Op.FINISH: 1,
    wire.Op.BYE: 1,
    wire.Op.SHUTDOWN: 1,
    wire.Op.CHECKPOINT: 1,
    wire.Op.STOP: 1,
    wire.Op.PING: 1,
    wire.Op.EVICT: 2,
    wire.Op.JOIN: 1,
    wire.Op.VIEW: 2,
    wire.Op.RESHARD: 2,
    wire.Op.FORWARD: 5,
    wire.Op.PEERS: 2,
    wire.Op.REJOIN: 3,
    wire.Op.FILL: 5,
    wire.Op.FILLED: 4,
    wire.Op.ENDPOINTS: 1,
    wire.Op.RETIRE: 2,
    wire.Op.DROP: 3,
    wire.Op.ACK: 1,
    wire.Op.PULL_REPLY: 3,
    wire.Op.ERROR: 2,
    wire.Op.SHARD_DOWN: 2,
    wire.Op.SHARD_UP: 3,
    wire.Op.SHARD_RETIRED: 2,
    wire.Op.CUT_WRITTEN: 1,
}
OPTIONAL_LAST_FRAME = {wire.Op.PUSH, wire.Op.ACK, wire.Op.RETIRE, wire.Op.CUT_WRITTEN}  # a push's sequence; the shards' view answering
# a supervisor; the sender of a shard's RETIRE to its peers


def _raw_header(**changes) -> bytes:
    """A header packed by hand, so that fields encode_header would refuse can be forged."""
    fields = dict(magic=wire.MAGIC, version=wire.VERSION, op=int(wire.Op.CLOCK), dtype=0, flags=0, group=0,
                  request_id=1, clock=0, num_keys=0, width=1)
    fields.update(changes)
    return struct.pack(wire.HEADER_FORMAT, *fields.values())


def _message(op: wire.Op, header: bytes | None = None, frames: int | None = None) -> list[bytes]:
    count = FRAMES[op] if frames is None else frames
    first = header if header is not None else wire.encode_header(wire.Header(op))
    return [first] + [b""] * (count - 1)


# -- header layout and round trip ----------------------------------------------------------------


def test_header_layout_is_fixed_and_little_endian():
    assert wire.HEADER_FORMAT.startswith("<")
    assert wire.HEADER_SIZE == struct.calcsize(wire.HEADER_FORMAT) == 2 + 4 + 4 + 8 + 8 + 8 + 4
    encoded = wire.encode_header(wire.Header(wire.Op.PULL, group=1, request_id=2, clock=3, num_keys=4, width=5))
    assert len(encoded) == wire.HEADER_SIZE
    assert encoded[:2] == b"HP" == wire.MAGIC
    assert encoded[2] == wire.VERSION
    assert encoded[3] == int(wire.Op.PULL)
    assert encoded[4] == 0  # dtype code of float32
    assert int.from_bytes(encoded[6:10], "little") == 1  # group, u32 little endian


def test_every_op_has_a_frame_count_and_requests_are_below_replies():
    assert set(FRAMES) == set(wire.Op)
    requests = [op for op in wire.Op if op < 64]
    replies = [op for op in wire.Op if op >= 64]
    assert {wire.Op.ACK, wire.Op.PULL_REPLY, wire.Op.ERROR, wire.Op.SHARD_DOWN, wire.Op.SHARD_UP,
            wire.Op.SHARD_RETIRED, wire.Op.CUT_WRITTEN} == set(replies)
    assert wire.Op.PULL in requests and wire.Op.PUSH in requests


@pytest.mark.parametrize("op", list(wire.Op), ids=lambda op: op.name)
def test_header_round_trip_for_every_op(op):
    header = wire.Header(op, group=2**32 - 1, request_id=2**64 - 1, clock=-(2**63), num_keys=2**64 - 1,
                         width=2**32 - 1, flags=255)
    frames = _message(op, wire.encode_header(header))
    decoded = wire.decode_header(frames)
    assert decoded == header
    assert decoded.op is op and isinstance(decoded.op, wire.Op)
    assert decoded.dtype == np.dtype("<f4")


@pytest.mark.parametrize("op", list(wire.Op), ids=lambda op: op.name)
def test_round_trip_of_small_values_and_memoryview_frames(op):
    header = wire.Header(op, group=3, request_id=12345, clock=wire.FINAL_CLOCK, num_keys=7, width=4,
                         flags=wire.FLAG_STOP)
    frames = [memoryview(bytearray(wire.encode_header(header)))] + [memoryview(b"")] * (FRAMES[op] - 1)
    assert wire.decode_header(frames) == header


def test_defaults_of_a_header():
    decoded = wire.decode_header([wire.encode_header(wire.Header(wire.Op.ACK))])
    assert (decoded.group, decoded.request_id, decoded.clock, decoded.num_keys, decoded.width, decoded.flags) == (
        0, 0, 0, 0, 1, 0)


def test_final_clock_is_int64_max():
    assert wire.FINAL_CLOCK == 2**63 - 1


# -- header validation -----------------------------------------------------------------------------


def test_empty_message():
    with pytest.raises(WireError, match="empty message"):
        wire.decode_header([])


@pytest.mark.parametrize("length", [0, 1, wire.HEADER_SIZE - 1, wire.HEADER_SIZE + 1, 1000])
def test_header_of_the_wrong_length(length):
    raw = (_raw_header() * 40)[:length]
    with pytest.raises(WireError, match=f"header is {length} bytes, expected {wire.HEADER_SIZE}"):
        wire.decode_header([raw])


@pytest.mark.parametrize("magic", [b"XX", b"hp", b"\x00\x00", b"PH"])
def test_bad_magic(magic):
    with pytest.raises(WireError, match="bad magic"):
        wire.decode_header([_raw_header(magic=magic)])


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5, 7, 255])
def test_bad_version(version):
    with pytest.raises(WireError, match=f"wire version {version}, this build speaks {wire.VERSION}"):
        wire.decode_header([_raw_header(version=version)])


@pytest.mark.parametrize("op", [0, 22, 42, 63, 71, 255])
def test_unknown_op(op):
    with pytest.raises(WireError, match=f"unknown op {op}$"):
        wire.decode_header([_raw_header(op=op)])


@pytest.mark.parametrize("dtype", [4, 7, 255])
def test_unknown_dtype(dtype):
    with pytest.raises(WireError, match=f"unknown dtype code {dtype}"):
        wire.decode_header([_raw_header(dtype=dtype)])


@pytest.mark.parametrize("op", list(wire.Op), ids=lambda op: op.name)
def test_wrong_frame_count_for_every_op(op):
    allowed = {FRAMES[op], FRAMES[op] + 1} if op in OPTIONAL_LAST_FRAME else {FRAMES[op]}
    expected = " or ".join(map(str, sorted(allowed)))
    for count in {1, 2, 3, 4, 5} - allowed:
        frames = _message(op, wire.encode_header(wire.Header(op)), count)
        with pytest.raises(WireError, match=f"{op.name} needs {expected} frames, got {count}"):
            wire.decode_header(frames)


def test_a_push_sequence_round_trips_and_a_bad_frame_is_refused():
    sequence = wire.PushSequence(writer=2**64 - 1, sequence=7, acked_below=3)
    assert wire.PushSequence.from_frame(sequence.to_frame()) == sequence
    assert wire.PushSequence.from_frame(memoryview(sequence.to_frame())) == sequence
    with pytest.raises(WireError, match="sequence frame is 24 bytes, got 23"):
        wire.PushSequence.from_frame(sequence.to_frame()[:-1])


@pytest.mark.parametrize("op", [wire.Op.PULL, wire.Op.PUSH, wire.Op.CLOCK])
def test_width_zero(op):
    frames = _message(op, _raw_header(op=int(op), width=0))
    with pytest.raises(WireError, match="width must be >= 1, got 0"):
        wire.decode_header(frames)


def test_wire_errors_are_hybrid_ps_errors():
    assert issubclass(WireError, HybridPSError)


def test_encode_refuses_unknown_dtypes():
    with pytest.raises(KeyError):
        wire.encode_header(wire.Header(wire.Op.PUSH, dtype=np.dtype("<f8")))


# -- keys frames -----------------------------------------------------------------------------------


def test_keys_frame_decodes_uint64_little_endian():
    keys = np.array([0, 1, 2**32, 2**63, 2**64 - 1], dtype="<u8")
    decoded = wire.keys_from_frame(keys.tobytes(), keys.size, max_keys=10)
    assert decoded.dtype == np.dtype("<u8")
    np.testing.assert_array_equal(decoded, keys)


def test_keys_frame_is_a_zero_copy_view():
    keys = np.array([1, 5, 9], dtype="<u8")
    buffer = bytearray(keys.tobytes())
    view = wire.keys_from_frame(memoryview(buffer), 3, max_keys=10)
    assert np.shares_memory(view, np.frombuffer(buffer, dtype=np.uint8))
    buffer[0:8] = np.array([2], "<u8").tobytes()
    assert view[0] == 2  # a write to the frame shows through


def test_keys_frame_view_of_an_array_buffer_shares_memory():
    keys = np.arange(10, 20, dtype="<u8")
    view = wire.keys_from_frame(memoryview(keys).cast("B"), keys.size, max_keys=100)
    assert np.shares_memory(view, keys)


@pytest.mark.parametrize("count", [0, 1])
def test_empty_and_single_key_frames(count):
    keys = np.array([7], "<u8")[:count]
    assert wire.keys_from_frame(keys.tobytes(), count, max_keys=1).size == count


@pytest.mark.parametrize(
    "frame, count, message",
    [
        (np.array([1, 2, 3], "<u8").tobytes(), 4, "keys frame is 24 bytes, expected 4 \\* 8"),
        (np.array([1, 2, 3], "<u8").tobytes(), 2, "keys frame is 24 bytes, expected 2 \\* 8"),
        (np.array([1, 2, 3], "<u8").tobytes()[:-1], 3, "keys frame is 23 bytes"),
        (b"", 1, "keys frame is 0 bytes"),
    ],
)
def test_keys_frame_length_mismatch(frame, count, message):
    with pytest.raises(WireError, match=message):
        wire.keys_from_frame(frame, count, max_keys=10)


def test_too_many_keys_is_checked_before_the_length():
    with pytest.raises(WireError, match="3 keys exceed the limit of 2 per message"):
        wire.keys_from_frame(np.array([1, 2, 3], "<u8").tobytes(), 3, max_keys=2)
    # a forged huge count is refused without looking at (or allocating for) the frame
    with pytest.raises(WireError, match="exceed the limit"):
        wire.keys_from_frame(b"", 2**64 - 1, max_keys=1 << 24)


@pytest.mark.parametrize(
    "keys",
    [[1, 3, 3], [3, 2], [5, 6, 7, 1], [2**64 - 1, 0], [0, 0]],
)
def test_keys_must_be_strictly_increasing(keys):
    with pytest.raises(WireError, match="strictly increasing"):
        wire.keys_from_frame(np.array(keys, "<u8").tobytes(), len(keys), max_keys=10)


def test_increasing_keys_compare_as_unsigned():
    keys = np.array([2**62, 2**63, 2**64 - 2], "<u8")  # would look decreasing as int64
    np.testing.assert_array_equal(wire.keys_from_frame(keys.tobytes(), 3, 10), keys)


# -- values frames ---------------------------------------------------------------------------------


def test_values_frame_shape_and_zero_copy():
    header = wire.Header(wire.Op.PUSH, num_keys=2, width=3)
    values = np.arange(6, dtype=np.float32)
    buffer = bytearray(values.tobytes())
    decoded = wire.values_from_frame(memoryview(buffer), header)
    assert decoded.shape == (2, 3) and decoded.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(decoded, values.reshape(2, 3))
    assert np.shares_memory(decoded, np.frombuffer(buffer, dtype=np.uint8))


def test_values_frame_with_no_keys():
    header = wire.Header(wire.Op.PUSH, num_keys=0, width=4)
    assert wire.values_from_frame(b"", header).shape == (0, 4)


@pytest.mark.parametrize("size", [0, 20, 28, 48])
def test_values_frame_length(size):
    header = wire.Header(wire.Op.PUSH, num_keys=2, width=3)
    with pytest.raises(WireError, match=f"values frame is {size} bytes, expected 2 keys \\* width 3 \\* 4"):
        wire.values_from_frame(b"\x00" * size, header)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 3, 5])
def test_values_frame_rejects_non_finite(bad, where):
    header = wire.Header(wire.Op.PUSH, num_keys=2, width=3)
    values = np.arange(6, dtype=np.float32)
    values[where] = bad
    with pytest.raises(WireError, match="NaN or Inf"):
        wire.values_from_frame(values.tobytes(), header)


def test_values_frame_accepts_extreme_finite_values():
    header = wire.Header(wire.Op.PUSH, num_keys=1, width=4)
    finfo = np.finfo(np.float32)
    values = np.array([finfo.max, -finfo.max, finfo.tiny, -0.0], np.float32)
    np.testing.assert_array_equal(wire.values_from_frame(values.tobytes(), header)[0], values)


# -- error text ------------------------------------------------------------------------------------


def test_error_text_decodes_utf8():
    assert wire.error_text(b"bad thing") == "bad thing"
    assert wire.error_text("schlüssel ✓".encode()) == "schlüssel ✓"
    assert wire.error_text(memoryview(b"from a frame")) == "from a frame"
    assert wire.error_text(b"") == ""


def test_error_text_is_bounded():
    assert len(wire.error_text(b"x" * 100_000)) == 4096
    assert wire.error_text(b"x" * 100_000) == "x" * 4096
    assert len(wire.error_text(memoryview(b"y" * 5000))) == 4096
    # a multibyte character cut at the bound never raises and never grows the text
    text = wire.error_text("é".encode() * 3000)
    assert len(text) <= 4096 and text.startswith("é")


def test_error_text_never_raises_on_invalid_utf8():
    assert wire.error_text(b"\xff\xfe") == "\ufffd\ufffd"
    assert wire.error_text(b"ok \xc3") == "ok \ufffd"


# -- value encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding, relative_error", [("float32", 0.0), ("float16", 2**-11), ("bfloat16", 2**-8),
                                                      ("float8", 2**-3)])
def test_value_encodings_round_trip_within_their_precision(encoding, relative_error):
    values = (np.random.default_rng(3).standard_normal((1000, 3)) * 10.0 ** np.arange(-1, 2)).astype(np.float32)  # normal float16 range
    encoded = wire.encode_values(values, encoding)
    assert encoded.dtype == wire.ENCODINGS[encoding]
    decoded = wire.decode_values(encoded)
    assert decoded.dtype == np.float32 and decoded.shape == values.shape
    smallest_step = 2**-16 if encoding == "float8" else 2**-24  # the subnormal step
    assert np.all(np.abs(decoded - values) <= relative_error * np.abs(values) + smallest_step / 2)
    if encoding == "float32":
        assert decoded is encoded, "float32 is not copied"


def test_float16_saturates_instead_of_overflowing_and_bfloat16_keeps_the_range():
    big = np.array([1e5, -1e6, 3e38], dtype=np.float32)
    assert wire.decode_values(wire.encode_values(big, "float16")).tolist() == [65504.0, -65504.0, 65504.0]
    assert np.allclose(wire.decode_values(wire.encode_values(big, "bfloat16")), big, rtol=2**-8)
    assert wire.decode_values(wire.encode_values(big, "float8")).tolist() == [57344.0, -57344.0, 57344.0]
    with pytest.raises(ValueError, match="unknown value encoding 'int4'"):
        wire.encode_values(big, "int4")


def test_float8_rounds_to_the_nearest_of_its_256_values():
    every_code = np.arange(256, dtype=np.uint8)
    finite = np.sort(np.unique(wire.decode_values(every_code)[np.isfinite(wire.decode_values(every_code))]))
    values = np.random.default_rng(5).uniform(-2.0, 2.0, 10_000).astype(np.float32) * 2.0 ** np.arange(-20, 20, 4).repeat(1000)
    decoded = wire.decode_values(wire.encode_values(values, "float8"))
    saturated = np.clip(values, -57344, 57344)
    nearest = np.min(np.abs(finite[None, :] - saturated[:, None]), axis=1)
    assert np.all(np.isin(decoded, finite))
    assert np.allclose(np.abs(decoded - saturated), nearest, rtol=1e-3, atol=0)  # no nearer float8 value exists


@pytest.mark.parametrize("encoding", ["float16", "bfloat16", "float8"])
def test_encoded_push_values_decode_to_float32_and_are_checked(encoding):
    values = np.array([[1.5], [-2.5]], dtype=np.float32)
    encoded = wire.encode_values(values, encoding)
    header = wire.Header(wire.Op.PUSH, num_keys=2, width=1, dtype=encoded.dtype)
    frames = [wire.encode_header(header), b"", encoded.tobytes()]
    decoded_header = wire.decode_header(frames)
    assert decoded_header.dtype == encoded.dtype
    assert wire.values_from_frame(frames[2], decoded_header).tolist() == [[1.5], [-2.5]]
    infinite = np.array([[np.inf], [0]], dtype=np.float32)  # from a peer that does not saturate
    bad = {"float16": infinite.astype(np.float16), "bfloat16": wire.encode_values(infinite, encoding),
           "float8": np.array([[0x7C], [0]], dtype=np.uint8)}[encoding]  # 0x7C: e5m2 +inf
    with pytest.raises(WireError, match="NaN or Inf"):
        wire.values_from_frame(bad.tobytes(), decoded_header)


def test_an_evict_names_its_shard_in_a_frame_of_its_own():
    frames = [wire.encode_header(wire.Header(wire.Op.EVICT, 0, 1, clock=99)), wire.encode_shard_id(7)]
    assert wire.decode_header(frames).clock == 99 and wire.decode_shard_id(frames[1]) == 7
    with pytest.raises(WireError, match="an EVICT's shard frame is 4 bytes, got 8"):
        wire.decode_shard_id(b"\x00" * 8)
    with pytest.raises(WireError, match="EVICT needs 2 frames, got 1"):
        wire.decode_header(frames[:1])

"""The PS wire format: message schema, header encode/decode and validation (no sockets).

A message is a ZeroMQ multipart message (the ROUTER's identity frame aside)::

    frame 0  header   HEADER_SIZE bytes, struct ``HEADER_FORMAT`` (little endian):
                      magic b"HP", version, op, dtype, flags, group (u32),
                      request_id (u64), clock (i64), num_keys (u64), width (u32)
    frame 1  keys     num_keys * uint64, strictly increasing       (PULL, PUSH); with FLAG_KEYS_BY_REF
                      16 bytes instead: (signature, count) of a list sent with FLAG_KEEP_KEYS;
                      with FLAG_COMPRESSED_KEYS (FLAG_COMPRESSED_VALUES) a frame is zstd (codec.py)
    frame 2  values   num_keys * width * dtype, row-major           (PUSH; frame 1 of PULL_REPLY)
                      dtype code 0 float32; 1 float16, 2 bfloat16, 3 float8 (pushes of ``comm.value_encoding``)
    frame 2  clocks   num_groups * int64, the shard's vector clock   (PULL_REPLY, after values;
                      FINAL_CLOCK for groups that finished training)
    frame 1  text     UTF-8 error message                           (ERROR)
    frame 1  view     UTF-8 JSON {"endpoints": {id: endpoint}, "replication": R}  (VIEW, RESHARD, PEERS)
    frame 3  sequence 3 * uint64 (``PushSequence``): writer, sequence, acked_below  (PUSH with replication,
                      FORWARD): which push this is, so that a replica applies it once however often it arrives

Requests and the frames they carry:

    ========== ================== =========================================
    op         frames             meaning
    ========== ================== =========================================
    PULL       header keys        values of ``keys`` once SSP allows ``clock``
    PUSH       header keys grads  apply the optimizer to ``keys`` (to the acting primary; with replication
               [sequence]         it forwards them to the backups and ACKs once they have them)
    FORWARD    header keys grads  (primary to backup) a group's push, applied once per sequence and key:
               sequence sender    ``group`` is the pushing group, ``sender`` the primary (a shard known dead
                                  is refused: a fenced primary that wakes may still forward what it had queued)
    CLOCK      header             group ``group`` finished clock ``clock``
    FINISH     header             group ``group`` finished training
    BYE        header             group ``group`` leaves (shard exits when all left)
    SHUTDOWN   header             stop the shard now
    CHECKPOINT header             group ``group`` stopped at ``clock`` for a checkpoint
                                  (``FINAL_CLOCK``: after training); answered once every
                                  group has asked or finished and the shard took its snapshot of
                                  the cut, then CUT_WRITTEN once the shard file is written
    STOP       header             (to the lowest live shard) a preemption signal: stop every group
                                  at one clock
    PING       header             a heartbeat: answered at once, whatever SSP holds back
    EVICT      header shard       the shard named by ``shard`` (``encode_shard_id``) is dead: stop routing
                                  to it (a shard told that it is dead itself stops serving: a falsely
                                  suspected shard fences itself)
    JOIN       header             group ``group`` starts (or restarts): the ACK carries the clock it
                                  continues at (the slowest running group's, if it was away)
    PEERS      header view        (with replication, a leader's first message to each shard) the shards
                                  as the leader knows them: a primary forwards pushes to them
    REJOIN     header shard       (a supervisor, to every other shard) the dead shard ``shard`` runs again at
               endpoint           ``endpoint`` (UTF-8), empty: fill it with the rows this shard is acting
                                  primary of and it replicates, forward to it from now on, tell the clients
                                  (SHARD_UP); ACKed, with the rows sent in ``clock``, once it has them all
    FILL       header keys rows   (to a rejoined shard) set ``keys``' values and optimizer state (float32,
               applied sender     ``width`` values then each state's ``width``, then the stamp with eviction);
                                  ``applied``: the recent pushes they hold (uint64: group, writer, sequence,
                                  count, keys; repeated), not to apply again
    FILLED     header clocks      (to a rejoined shard) the fill from this shard is complete; its vector
               table sender       clock, and a JSON table: the shards it knows dead, its placement history
                                  (rejoins and retirements, in order), the groups that finished or left
    RETIRE     header shard       (a supervisor out of restarts, to every other shard; or a shard, to its
               [sender]           peers, with ``sender``) dead shard ``shard`` never comes back: its ranges
                                  go on to the next shards of the ring; a shard that learns it tells its peers
                                  (before any forward or fill it sends under the new placement), its clients
                                  (SHARD_RETIRED), and fills each new backup with the rows it is acting
                                  primary of; a supervisor's is ACKed, with the rows sent, once they have them
    DROP       header keys sender (primary to backup) its eviction at a cut took ``keys`` out: take them out too,
                                  between the same forwards
    ENDPOINTS  header             (a supervisor, now and then, to its own shard) the ACK carries the shards
                                  as it knows them (a view frame: a restarted peer's new endpoint)
    VIEW       header view        (admin, to the coordinating shard) the tier's shards change to
                                  ``view``: pick the clock every group reshards at
    RESHARD    header view        group ``group`` stopped at ``clock`` (after checkpointing that cut):
                                  once every group asked, load the ranges ``view`` moves here from
                                  the cut's files, drop those it moves away, switch to ``view``
    ========== ================== =========================================

Every request gets exactly one reply carrying its ``request_id``: ``ACK``,
``PULL_REPLY`` (header values clocks) or ``ERROR`` (header text). One message is no reply:
``SHARD_DOWN`` (header shard, request id 0), which a shard sends unasked to every client it has
heard from when it learns that the shard named in its frame died (and after a JOIN's ACK, for every
shard it knows dead); likewise ``SHARD_UP`` (header shard endpoint) when a dead shard was restarted and
filled (REJOIN): the client connects to it, a live backup again; and ``SHARD_RETIRED`` (header shard)
when a dead shard was retired (RETIRE): the client routes by the placement without it. The ACK
of a CHECKPOINT comes once the shard took its snapshot of the cut (the group trains on); ``CUT_WRITTEN``
(header [text], the CHECKPOINT's request id and the cut's clock) once its file is written (with ``text``:
it could not be), and only then may the cut be published; the ACK of a
CHECKPOINT carries the cut's clock (the directory name). Once the coordinating
shard (the lowest live one) has a stop clock, every ACK of a CLOCK it sends has ``FLAG_STOP`` set and carries
that clock: each group stops there and checkpoints. Likewise ``FLAG_RESHARD``
carries the clock at which every group checkpoints and sends RESHARD. A PUSH with
``FLAG_CLOCK`` is also the group's CLOCK of ``clock + 1`` (answered like one). A pull whose
``clock`` is ``FINAL_CLOCK`` is answered once every group has sent FINISH.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import WireError
from . import codec
from .numerics import all_finite

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER_FORMAT",
    "HEADER_SIZE",
    "FINAL_CLOCK",
    "FLAG_STOP",
    "FLAG_RESHARD",
    "FLAG_KEEP_KEYS",
    "FLAG_KEYS_BY_REF",
    "FLAG_COMPRESSED_KEYS",
    "FLAG_COMPRESSED_VALUES",
    "FLAG_CLOCK",
    "FLAG_KEYS_MISSED",
    "Op",
    "Header",
    "encode_header",
    "decode_header",
    "keys_from_frame",
    "values_from_frame",
    "encode_values",
    "decode_values",
    "ENCODINGS",
    "error_text",
    "encode_shard_id",
    "decode_shard_id",
    "PushSequence",
]

MAGIC = b"HP"
VERSION = 6  # 2: EVICT names the dead shard in a frame of its own; 3: primary-driven replication (FORWARD);
# 4: RETIRE, SHARD_RETIRED, the placement history in FILLED; 5: CUT_WRITTEN (checkpoints written from a snapshot);
# 6: DROP (feature eviction)
HEADER_FORMAT = "<2sBBBBIQqQI"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
FLAG_STOP = 1
"""Header flag of CLOCK acknowledgements: ``clock`` is the clock every group must stop at."""
FLAG_RESHARD = 2
"""Header flag of CLOCK acknowledgements: ``clock`` is the clock every group reshards at."""
FLAG_KEEP_KEYS = 4
"""Header flag of PULL and PUSH: keep this key list for later references (see hybrid_ps.protocol.keycache)."""
FLAG_KEYS_BY_REF = 8
"""Header flag of PULL and PUSH: the keys frame is a reference to a kept key list (16 bytes)."""
FLAG_COMPRESSED_KEYS = 16
"""Header flag of PULL and PUSH: the keys frame is ``codec.pack_keys`` output (zstd)."""
FLAG_COMPRESSED_VALUES = 32
"""Header flag of PUSH: the values frame is ``codec.pack_values`` output (zstd)."""
FLAG_CLOCK = 64
"""Header flag of PUSH: once it is applied, the group finished ``clock + 1`` steps (a CLOCK in the same message,
which saves a message and its reply every step); the ACK answers it as a CLOCK's would."""
FLAG_KEYS_MISSED = 128
"""Header flag of ERROR: the request referenced a key list the shard does not keep (any more); the client
sends the request again with its keys."""
FINAL_CLOCK = np.iinfo(np.int64).max
"""Pull clock meaning "answer when every group has finished training"."""

DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 2: np.dtype("<u2"), 3: np.dtype("u1")}
"""Value dtype codes on the wire: float32, float16, bfloat16 (a float32's top half, carried as uint16)
and float8 (e5m2: a float16's top byte, carried as uint8)."""
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
ENCODINGS = {"float32": DTYPES[0], "float16": DTYPES[1], "bfloat16": DTYPES[2], "float8": DTYPES[3]}
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_FLOAT8_MAX = 57344.0  # the largest finite e5m2 value

_MAX_ERROR_TEXT = 4096


class Op(enum.IntEnum):
    """Message operations; requests below 64, replies from 64."""

    PULL = 1
    PUSH = 2
    CLOCK = 3
    FINISH = 4
    BYE = 5
    SHUTDOWN = 6
    CHECKPOINT = 7
    STOP = 8
    PING = 9
    EVICT = 10
    JOIN = 11
    VIEW = 12
    RESHARD = 13
    FORWARD = 14
    PEERS = 15
    REJOIN = 16
    FILL = 17
    FILLED = 18
    ENDPOINTS = 19
    RETIRE = 20
    DROP = 21
    ACK = 64
    PULL_REPLY = 65
    ERROR = 66
    SHARD_DOWN = 67
    SHARD_UP = 68
    SHARD_RETIRED = 69
    CUT_WRITTEN = 70


_FRAMES_FOR_OP: dict[Op, int | tuple[int, ...]] = {
    Op.PULL: 2,
    Op.PUSH: (3, 4),  # the sequence frame with replication
    Op.CLOCK: 1,
    Op.FINISH: 1,
    Op.BYE: 1,
    Op.SHUTDOWN: 1,
    Op.CHECKPOINT: 1,
    Op.STOP: 1,
    Op.PING: 1,
    Op.EVICT: 2,
    Op.JOIN: 1,
    Op.VIEW: 2,
    Op.RESHARD: 2,
    Op.FORWARD: 5,
    Op.PEERS: 2,
    Op.REJOIN: 3,
    Op.FILL: 5,
    Op.FILLED: 4,
    Op.ENDPOINTS: 1,
    Op.RETIRE: (2, 3),  # the sender frame from a shard telling its peers
    Op.DROP: 3,
    Op.ACK: (1, 2),  # the shards as a shard knows them, answering a supervisor's EVICT, REJOIN, RETIRE or ENDPOINTS
    Op.PULL_REPLY: 3,
    Op.ERROR: 2,
    Op.SHARD_DOWN: 2,
    Op.SHARD_UP: 3,
    Op.SHARD_RETIRED: 2,
    Op.CUT_WRITTEN: (1, 2),  # the error text if the file could not be written
}


@dataclass(frozen=True)
class Header:
    """The fixed header at the front of every message."""

    op: Op
    group: int = 0
    request_id: int = 0
    clock: int = 0
    num_keys: int = 0
    width: int = 1
    dtype: np.dtype = DTYPES[0]
    flags: int = 0


def encode_header(header: Header) -> bytes:
    """Pack a header into its ``HEADER_SIZE`` bytes."""
    return struct.pack(
        HEADER_FORMAT,
        MAGIC,
        VERSION,
        int(header.op),
        DTYPE_CODES[np.dtype(header.dtype)],
        header.flags,
        header.group,
        header.request_id,
        header.clock,
        header.num_keys,
        header.width,
    )


def decode_header(frames: Sequence[memoryview | bytes]) -> Header:
    """Decode and validate the header of a message and its frame count.

    Args:
        frames: the message frames (identity frame already removed).

    Returns:
        The decoded header.

    Raises:
        WireError: bad length, magic, version, op, dtype or frame count.
    """
    if not frames:
        raise WireError("empty message")
    raw = frames[0]
    if len(raw) != HEADER_SIZE:
        raise WireError(f"header is {len(raw)} bytes, expected {HEADER_SIZE}")
    magic, version, op, dtype, flags, group, request_id, clock, num_keys, width = struct.unpack(
        HEADER_FORMAT, raw
    )
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"wire version {version}, this build speaks {VERSION}")
    try:
        op = Op(op)
    except ValueError:
        raise WireError(f"unknown op {op}") from None
    if dtype not in DTYPES:
        raise WireError(f"unknown dtype code {dtype}")
    counts = _FRAMES_FOR_OP[op]
    if len(frames) not in (counts if isinstance(counts, tuple) else (counts,)):
        wanted = " or ".join(map(str, counts)) if isinstance(counts, tuple) else counts
        raise WireError(f"{op.name} needs {wanted} frames, got {len(frames)}")
    if width < 1:
        raise WireError(f"width must be >= 1, got {width}")
    return Header(op, group, request_id, clock, num_keys, width, DTYPES[dtype], flags)


def keys_from_frame(frame: memoryview | bytes, num_keys: int, max_keys: int, compressed: bool = False) -> np.ndarray:
    """View a keys frame as uint64 without copying (or decompress it), checking count and order.

    Raises:
        WireError: wrong byte length, too many keys, or keys not strictly increasing.
    """
    if num_keys > max_keys:
        raise WireError(f"{num_keys} keys exceed the limit of {max_keys} per message")
    if compressed:
        keys = codec.unpack_keys(frame, num_keys)
    elif len(frame) != num_keys * 8:
        raise WireError(f"keys frame is {len(frame)} bytes, expected {num_keys} * 8")
    else:
        keys = np.frombuffer(frame, dtype="<u8")
    if num_keys > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        raise WireError("keys must be strictly increasing")
    return keys


def values_from_frame(frame: memoryview | bytes, header: Header) -> np.ndarray:
    """View a values frame as a ``[num_keys, width]`` array without copying.

    Raises:
        WireError: wrong byte length or non-finite values.
    """
    itemsize = header.dtype.itemsize
    expected = header.num_keys * header.width * itemsize
    if header.flags & FLAG_COMPRESSED_VALUES:
        raw = codec.unpack_values(frame, header.dtype, header.num_keys * header.width)
    elif len(frame) != expected:
        raise WireError(
            f"values frame is {len(frame)} bytes, expected {header.num_keys} keys * "
            f"width {header.width} * {itemsize}"
        )
    else:
        raw = np.frombuffer(frame, dtype=header.dtype)
    values = decode_values(raw.reshape(header.num_keys, header.width))
    if not all_finite(values):
        raise WireError("values contain NaN or Inf")
    return values


def encode_values(values: np.ndarray, encoding: str) -> np.ndarray:
    """``values`` (float32) in the wire dtype of ``encoding`` (``float32``, ``float16``, ``bfloat16``, ``float8``).

    float16 saturates at +-65504 and float8 at +-57344 instead of overflowing; bfloat16 and
    float8 round to nearest even (float8 through float16 rounded to odd, so exactly: 2 mantissa bits, magnitudes from
    2**-16 (smaller ones flush to zero) up; error feedback carries what rounding loses).
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    if encoding == "float32":
        return values
    if encoding == "float16":
        return np.clip(values, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)
    if encoding == "bfloat16":
        bits = values.view(np.uint32)
        rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
        return (rounded >> np.uint32(16)).astype(np.uint16)
    if encoding == "float8":
        bits = _float16_rounded_to_odd(np.clip(values, -_FLOAT8_MAX, _FLOAT8_MAX))
        rounded = bits + (np.uint16(0x7F) + ((bits >> np.uint16(8)) & np.uint16(1)))
        return (rounded >> np.uint16(8)).astype(np.uint8)
    raise ValueError(f"unknown value encoding {encoding!r} (one of {', '.join(ENCODINGS)})")


def _float16_rounded_to_odd(values: np.ndarray) -> np.ndarray:
    """float16 bits of ``values``, rounded toward zero with the last bit set if inexact.

    Rounding to odd first keeps the later rounding to fewer bits correct (no double rounding).
    """
    half = values.astype(np.float16)
    widened = half.astype(np.float32)
    bits = half.view(np.uint16)
    bits -= (np.abs(widened) > np.abs(values)).astype(np.uint16)  # rounded away from zero: one step back
    bits |= (widened != values).astype(np.uint16)
    return bits


def decode_values(encoded: np.ndarray) -> np.ndarray:
    """Wire values (float32, float16, bfloat16 as uint16, float8 as uint8) as float32.

    float32 comes back without a copy.
    """
    if encoded.dtype == DTYPES[0]:
        return encoded
    if encoded.dtype == DTYPES[1]:
        return encoded.astype(np.float32)
    if encoded.dtype == DTYPES[3]:
        return (encoded.astype(np.uint16) << np.uint16(8)).view(np.float16).astype(np.float32)
    return (encoded.astype(np.uint32) << np.uint32(16)).view(np.float32)


_SHARD_ID = struct.Struct("<I")


def encode_shard_id(shard: int) -> bytes:
    """The frame of an EVICT: the dead shard's id."""
    return _SHARD_ID.pack(shard)


def decode_shard_id(frame: memoryview | bytes) -> int:
    """The dead shard's id from an EVICT's frame.

    Raises:
        WireError: the frame is not one uint32.
    """
    if len(frame) != _SHARD_ID.size:
        raise WireError(f"an EVICT's shard frame is {_SHARD_ID.size} bytes, got {len(frame)}")
    return int(_SHARD_ID.unpack(frame)[0])


@dataclass(frozen=True)
class PushSequence:
    """Which push a PUSH or FORWARD is: ``sequence`` is unique per ``writer`` (one client's random id), and the
    writer will never send again a push below ``acked_below`` (every one of those was acknowledged)."""

    writer: int
    sequence: int
    acked_below: int

    _FORMAT = struct.Struct("<QQQ")

    def to_frame(self) -> bytes:
        return self._FORMAT.pack(self.writer, self.sequence, self.acked_below)

    @classmethod
    def from_frame(cls, frame: memoryview | bytes) -> PushSequence:
        """Decode a sequence frame.

        Raises:
            WireError: the frame is not three uint64.
        """
        if len(frame) != cls._FORMAT.size:
            raise WireError(f"a push's sequence frame is {cls._FORMAT.size} bytes, got {len(frame)}")
        return cls(*cls._FORMAT.unpack(frame))


def error_text(frame: memoryview | bytes) -> str:
    """Decode the text frame of an ERROR reply (bounded, never raises)."""
    return bytes(frame[:_MAX_ERROR_TEXT]).decode("utf-8", errors="replace")

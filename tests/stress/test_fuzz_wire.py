"""Fuzzing the wire format against a live shard: random, truncated, oversized and type-confused messages.

A real ``ShardService`` (SGD, learning rate 1, ASP, width 2, 4 groups) serves in a
process of its own on 127.0.0.1, so that a crash shows as an exit and its memory
as its RSS (``/proc/<pid>/status``). Hypothesis throws batches of messages at it
through a raw DEALER socket: random frames and bytes, headers with every op, dtype
code and flag combination and frames that do not fit them, keyed requests with
garbage zstd, references to unknown key lists, huge counts and widths, unsorted
and duplicate keys, NaN/Inf values in every dtype. Between batches a correct
``PSClient`` (group 0, key cache and zstd on) pulls and pushes a set of known keys.

Checked: every message gets exactly one well-formed reply with its request id
(``ERROR`` for a malformed one; a pull may be held back by the SSP rule), no reply
is an "internal error" (an exception that escaped the validation), the shard
process stays alive, the known keys hold exactly what the correct client pushed
(rejected messages changed nothing), and the shard's RSS stays bounded.

Messages a shard must obey whoever sends them are not thrown: a valid SHUTDOWN,
an EVICT of the shard itself and a BYE of group 0 (the correct client's). The
shard's state is the sum of every batch, so a failure is reported with the
batches before it rather than shrunk. The tests after the fuzz pin down, one by
one, what it found (and the growth it could not see from one connection),
against a shard serving in a thread whose state they inspect.
``pytest -s`` prints the message count and the memory figures; ``HYBRID_PS_FUZZ_EXAMPLES`` and
``HYBRID_PS_FUZZ_SECONDS`` make the hunt longer.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import re
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import zmq
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hybrid_ps.errors import CheckpointError, WireError
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.protocol import codec, wire
from hybrid_ps.protocol.keycache import reference_frame, signature
from hybrid_ps.server.service import ShardService
from hybrid_ps.server.shard import Shard
from hybrid_ps.tables.optimizers import make_optimizer
from hybrid_ps.tier import TierView
from hybrid_ps.worker.client import PSClient

pytestmark = pytest.mark.timeout(240)

WIDTH = 2
GROUPS = 4
MAX_KEYS = 1 << 20  # the shard's max_keys: large enough that a lying header could ask for 8 MB of keys
VNODES = 64
KNOWN = 1024  # keys the correct client owns (drawn far from the fuzz keys)
# batches of messages, and a time bound (a loaded 2-core machine is slow); raise both for a longer hunt
MAX_EXAMPLES = int(os.environ.get("HYBRID_PS_FUZZ_EXAMPLES", 2000))
FUZZ_SECONDS = float(os.environ.get("HYBRID_PS_FUZZ_SECONDS", 15))
_CHUNK = 100
FUZZ_CONNECTIONS = 12
RSS_GROWTH_LIMIT = 48 << 20

_SHARD = r"""
import ctypes, json, logging, math, signal, sys
import zmq
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.tables.optimizers import make_optimizer
from hybrid_ps.server.service import ShardService
from hybrid_ps.server.shard import Shard
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the test
spec = json.loads(sys.argv[1])
logging.basicConfig(level=logging.ERROR, format="fuzzed shard: %(message)s")  # rejections are expected
service = ShardService(Shard(spec["width"], make_optimizer("sgd", 1.0)), 0, HashRing([0], spec["vnodes"]),
                       spec["groups"], math.inf, "127.0.0.1", max_keys=spec["max_keys"], context=zmq.Context())
print(service.endpoint, flush=True)
with service:
    service.serve()
"""

# -- what goes on the wire -----------------------------------------------------------------------------

_REQUEST_ID = slice(10, 18)  # of the header: magic 2, version, op, dtype, flags 1 each, group 4, then the id
_FLAGS = (wire.FLAG_STOP, wire.FLAG_RESHARD, wire.FLAG_KEEP_KEYS, wire.FLAG_KEYS_BY_REF, wire.FLAG_COMPRESSED_KEYS,
          wire.FLAG_COMPRESSED_VALUES)
_NAN_BITS = {0: [0x7FC00000, 0x7F800000, 0xFF800000, 0x7F800001], 1: [0x7E00, 0x7C00, 0xFC00, 0x7C01],
             2: [0x7FC0, 0x7F80, 0xFF80, 0x7F81], 3: [0x7E, 0x7C, 0xFC, 0x7D]}
"""NaN, +Inf, -Inf and a signalling NaN as the bits of each wire dtype code."""
_FRAMES = {wire.Op.PULL: 2, wire.Op.PUSH: 3, wire.Op.VIEW: 2, wire.Op.RESHARD: 2, wire.Op.PULL_REPLY: 3,
           wire.Op.ERROR: 2}
"""Frames (header included) of the ops that carry more than a header (wire.py's table)."""


def raw_header(op: int, dtype: int = 0, flags: int = 0, group: int = 0, clock: int = 0, num_keys: int = 0,
               width: int = WIDTH, magic: bytes = wire.MAGIC, version: int = wire.VERSION) -> bytes:
    """A header packed by hand (any op, dtype code, count or width); the request id is stamped when sent."""
    return struct.pack(wire.HEADER_FORMAT, magic, version, op, dtype, flags, group, 0, clock, num_keys, width)


def encoded(values: np.ndarray, code: int) -> np.ndarray:
    """float32 values (small integers here: exact in every encoding) in the wire dtype of ``code``."""
    return wire.encode_values(values, ("float32", "float16", "bfloat16", "float8")[code])


@functools.lru_cache(maxsize=None)
def bomb(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes (declared in its header): a few kB per 100 MB."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj(size=size)
    step = 1 << 20
    out = [compressor.compress(bytes(min(size - start, step))) for start in range(0, size, step)]
    return b"".join([*out, compressor.flush()])


u8 = st.integers(0, 255)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
clocks = st.one_of(st.integers(-2, 40), st.sampled_from([wire.FINAL_CLOCK, -(2**63), 2**62]), i64)
groups = st.one_of(st.integers(0, GROUPS - 1), st.integers(GROUPS, GROUPS + 2), st.just(2**32 - 1), u32)
valid_groups = st.one_of(st.integers(0, GROUPS - 1), st.integers(0, GROUPS - 1), groups)  # mostly valid
counts = st.one_of(st.integers(0, 40), st.sampled_from([MAX_KEYS, MAX_KEYS + 1, 2**32, 2**63, 2**64 - 1]), u64)
widths = st.one_of(st.sampled_from([0, 1, WIDTH, WIDTH + 1, 2**31, 2**32 - 1]), u32)
blobs = st.binary(max_size=160)
fuzz_keys = st.one_of(st.integers(0, 4096), st.sampled_from([2**32, 2**63, 2**64 - 2, 2**64 - 1]), u64)
specials = st.sampled_from([0.0, 1.0, -1.0, 2.0, -3.0, 0.5, 1e-45, 65504.0, 7e4, 3.4e38, -3.4e38,
                            float("nan"), float("inf"), float("-inf")])


def key_lists(min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[np.ndarray]:
    return st.sets(fuzz_keys, min_size=min_size, max_size=max_size).map(
        lambda keys: np.array(sorted(keys), dtype=np.uint64))


@st.composite
def garbage(draw) -> list[bytes]:
    """Random frames: random bytes, a valid header cut short or padded, a broken magic or version."""
    kind = draw(st.sampled_from(["bytes", "cut header", "long header", "magic", "version", "header only"]))
    header = raw_header(draw(st.sampled_from(list(wire.Op))), draw(st.integers(0, 3)), draw(u8), draw(groups),
                        draw(clocks), draw(counts), draw(widths))
    if kind == "bytes":
        return draw(st.lists(blobs, min_size=1, max_size=6))
    if kind == "cut header":
        first = header[: draw(st.integers(0, wire.HEADER_SIZE - 1))]
    elif kind == "long header":
        first = header + draw(st.binary(min_size=1, max_size=16))
    elif kind == "magic":
        first = draw(st.binary(min_size=2, max_size=2).filter(lambda m: m != wire.MAGIC)) + header[2:]
    elif kind == "version":
        first = header[:2] + bytes([draw(u8.filter(lambda v: v != wire.VERSION))]) + header[3:]
    else:
        first = header
    return [first, *draw(st.lists(blobs, max_size=4))]


@st.composite
def random_headers(draw) -> list[bytes]:
    """Any op code (known or not), dtype code, flags, group, clock, count and width, then 0..4 random frames."""
    header = raw_header(draw(st.one_of(st.sampled_from(list(wire.Op)), u8)), draw(st.one_of(st.integers(0, 3), u8)),
                        draw(u8), draw(groups), draw(clocks), draw(counts), draw(widths))
    return [header, *draw(st.lists(blobs, max_size=4))]


@st.composite
def keys_frame(draw, keys: np.ndarray, flags: int, kept: tuple[int, np.ndarray] | None) -> bytes:
    """The keys frame of ``keys`` as ``flags`` ask (a reference, zstd, raw), sometimes broken."""
    if flags & wire.FLAG_KEYS_BY_REF:
        sig, base = kept if kept is not None and draw(st.booleans()) else (draw(u64), keys)
        kind = draw(st.sampled_from(["list", "subset", "bad mask", "short", "long count"]))
        if kind == "list":
            return reference_frame(sig, base.size)
        if kind == "subset":
            return reference_frame(sig, base.size, np.array(draw(st.lists(st.booleans(), min_size=base.size,
                                                                          max_size=base.size)), dtype=bool))
        if kind == "bad mask":
            return reference_frame(sig, base.size) + draw(st.binary(min_size=0, max_size=8).filter(
                lambda b: len(b) != (base.size + 7) // 8))
        if kind == "short":
            return reference_frame(sig, base.size)[: draw(st.integers(0, 15))]
        return struct.pack("<QQ", sig, draw(u64)) + draw(st.binary(max_size=8))
    if flags & wire.FLAG_COMPRESSED_KEYS:
        kind = draw(st.sampled_from(["packed", "garbage", "cut", "more keys", "zstd of bytes", "lying size"]))
        if kind == "packed":
            return codec.pack_keys(keys)
        if kind == "garbage":
            return draw(blobs)
        if kind == "cut":
            packed = codec.pack_keys(keys)
            return packed[: draw(st.integers(0, len(packed) - 1))]
        if kind == "more keys":
            return codec.pack_keys(np.append(keys, np.uint64(2**64 - 1)))
        if kind == "zstd of bytes":
            return zstandard.ZstdCompressor().compress(draw(blobs))
        return bomb(draw(st.sampled_from([8 * keys.size, 8 * keys.size + 8, 1 << 20, 1 << 26])))
    raw = keys.astype("<u8").tobytes()
    cut = draw(st.sampled_from([0, 0, 0, -1, -7, 1, 8]))
    return raw[:cut] if cut < 0 else raw + bytes(cut)


@st.composite
def values_frame(draw, count: int, code: int, flags: int) -> bytes:
    """``count`` values of dtype code ``code``: special floats (float32) or random bit patterns, maybe zstd."""
    if code == 0:
        raw = draw(hnp.arrays(np.float32, count, elements=specials)).tobytes()
    else:
        dtype = wire.DTYPES.get(code, np.dtype("u1"))
        raw = draw(hnp.arrays(dtype, count)).tobytes()
    cut = draw(st.sampled_from([0, 0, 0, -1, 1, 4]))
    raw = raw[:cut] if cut < 0 else raw + bytes(cut)
    if flags & wire.FLAG_COMPRESSED_VALUES:
        kind = draw(st.sampled_from(["packed", "garbage", "lying size"]))
        if kind == "packed":
            return zstandard.ZstdCompressor().compress(raw)  # not shuffled: still a valid frame of the right size
        if kind == "garbage":
            return draw(blobs)
        return bomb(draw(st.sampled_from([len(raw), len(raw) + 1, 1 << 26])))
    return raw


@st.composite
def keyed_conversations(draw) -> list[list[bytes]]:
    """Every op with every flag combination, carrying keys (and values) of fuzz keys: a first message asks
    the shard to keep its list, the next ones refer to it (or do not); counts, widths, dtypes may lie."""
    base = draw(key_lists(max_size=30))
    kept = (signature(base), base)
    messages = []
    for index in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(list(wire.Op)))
        flags = draw(st.integers(0, 63)) | (wire.FLAG_KEEP_KEYS if index == 0 else 0)
        flags |= draw(st.sampled_from([0, 0, 0, 64, 128]))  # bits no flag uses
        if index == 0 or draw(st.booleans()):
            keys = base
        else:
            keys = base[np.array(draw(st.lists(st.booleans(), min_size=base.size, max_size=base.size)), dtype=bool)]
        mutation = draw(st.sampled_from(["none", "none", "shuffle", "duplicate", "reverse"]))
        if keys.size >= 2 and mutation != "none":
            keys = keys.copy()
            if mutation == "shuffle":
                keys = keys[np.array(draw(st.permutations(range(keys.size))))]
            elif mutation == "duplicate":
                keys[1] = keys[0]
            else:
                keys = keys[::-1].copy()
        code = draw(st.one_of(st.integers(0, 3), st.integers(0, 3), u8))
        num_keys = draw(st.one_of(st.just(keys.size), st.just(keys.size), counts))
        width = draw(st.one_of(st.just(WIDTH), st.just(WIDTH), widths))
        frames = [raw_header(op, code, flags, draw(valid_groups), draw(clocks), num_keys, width),
                  draw(keys_frame(keys, flags, kept)),
                  draw(values_frame(keys.size * WIDTH, code, flags))]
        expected = _FRAMES.get(op, 1)
        frames = frames[: draw(st.sampled_from([expected, expected, expected - 1, expected + 1, 3, 2]))]
        frames += [draw(blobs)] * (len(frames) == 0)
        messages.append(frames)
    return messages


@st.composite
def control_messages(draw) -> list[bytes]:
    """CLOCK, FINISH, BYE, CHECKPOINT, STOP, PING, EVICT, JOIN, VIEW, RESHARD of any group at any clock;
    views: JSON the shard can parse (with or without this shard) or not."""
    op = draw(st.sampled_from([wire.Op.CLOCK, wire.Op.FINISH, wire.Op.BYE, wire.Op.CHECKPOINT, wire.Op.STOP,
                               wire.Op.PING, wire.Op.EVICT, wire.Op.JOIN, wire.Op.VIEW, wire.Op.RESHARD]))
    frames = [raw_header(op, 0, draw(st.sampled_from([0, 0, *_FLAGS])), draw(valid_groups), draw(clocks))]
    if op in (wire.Op.VIEW, wire.Op.RESHARD):
        shard_ids = draw(st.sets(st.integers(0, 5), min_size=1, max_size=3))
        view = TierView({s: f"tcp://127.0.0.1:{9000 + s}" for s in shard_ids}, draw(st.integers(0, 3)))
        frames.append(draw(st.one_of(st.just(view.to_bytes()), blobs, st.just(b"{}"),
                                     st.just(b'{"endpoints": {"x": 1}, "replication": 1}'))))
    elif op is wire.Op.EVICT:  # a shard id (0: this shard, on a ring of 0 and 1) or not one
        frames.append(draw(st.one_of(st.integers(0, 2**32 - 1).map(wire.encode_shard_id), blobs)))
    return frames


@st.composite
def invalid_pushes_of_known_keys(draw, known: np.ndarray) -> tuple[list[bytes], str]:
    """A push of known keys with nonzero gradients, broken in exactly one way the shard must refuse."""
    keys = known[np.sort(np.array(draw(st.sets(st.integers(0, known.size - 1), min_size=2, max_size=40)
                                       .map(sorted)), dtype=np.int64))]
    code = draw(st.integers(0, 3))
    grads = np.array(draw(st.lists(st.sampled_from([-3, -2, -1, 1, 2, 3]), min_size=keys.size * WIDTH,
                                   max_size=keys.size * WIDTH)), dtype=np.float32).reshape(keys.size, WIDTH)
    values = encoded(grads, code).copy()
    flags = draw(st.sampled_from([0, wire.FLAG_COMPRESSED_KEYS, wire.FLAG_COMPRESSED_VALUES,
                                  wire.FLAG_COMPRESSED_KEYS | wire.FLAG_COMPRESSED_VALUES]))
    header = dict(op=int(wire.Op.PUSH), dtype=code, flags=flags, group=draw(st.integers(0, GROUPS - 1)),
                  clock=draw(st.integers(0, 5)), num_keys=keys.size, width=WIDTH)
    how = draw(st.sampled_from(["nan", "unsorted", "duplicate", "keys short", "keys long", "values short",
                                "values long", "num_keys", "width", "group", "dtype", "no values", "extra frame",
                                "reply op", "bad zstd keys", "bad zstd values", "unknown reference", "magic",
                                "version", "keys of zstd bomb", "values of zstd bomb"]))
    if how == "nan":
        bits = values.view(f"<u{values.itemsize}").reshape(-1)
        bits[draw(st.integers(0, bits.size - 1))] = draw(st.sampled_from(_NAN_BITS[code]))
    elif how in ("unsorted", "duplicate"):
        i = draw(st.integers(0, keys.size - 2))
        keys = keys.copy()
        keys[i], keys[i + 1] = (keys[i + 1], keys[i]) if how == "unsorted" else (keys[i], keys[i])
    elif how == "num_keys":
        header["num_keys"] = draw(st.sampled_from([keys.size - 1, keys.size + 1, 2**64 - 1, MAX_KEYS + 1]))
    elif how == "width":
        header["width"] = draw(st.sampled_from([0, 1, WIDTH + 1, 2**32 - 1]))
    elif how == "group":
        header["group"] = draw(st.integers(GROUPS, 2**32 - 1))
    elif how == "dtype":
        header["dtype"] = draw(st.integers(4, 255))
    elif how == "reply op":
        header["op"] = draw(st.sampled_from([wire.Op.ACK, wire.Op.PULL_REPLY, wire.Op.ERROR]))
    key_bytes, value_bytes = keys.astype("<u8").tobytes(), values.tobytes()
    if how == "keys short":  # cut or padded before compression (zstd ignores bytes after its frame)
        key_bytes = key_bytes[: -draw(st.integers(1, 7))]
    elif how == "keys long":
        key_bytes += bytes(draw(st.integers(1, 8)))
    elif how == "values short":
        value_bytes = value_bytes[: -draw(st.integers(1, 4))]
    elif how == "values long":
        value_bytes += bytes(draw(st.integers(1, 4)))
    if flags & wire.FLAG_COMPRESSED_KEYS:
        key_bytes = zstandard.ZstdCompressor().compress(key_bytes) if "keys " in how else codec.pack_keys(keys)
    if flags & wire.FLAG_COMPRESSED_VALUES:
        value_bytes = (zstandard.ZstdCompressor().compress(value_bytes) if "values " in how
                       else codec.pack_values(values))
    if how == "bad zstd keys":
        header["flags"] |= wire.FLAG_COMPRESSED_KEYS
        key_bytes = draw(st.sampled_from([b"", b"\x28\xb5\x2f\xfd", codec.pack_keys(keys)[:-2],
                                          codec.pack_keys(keys[:-1]), codec.pack_keys(keys)[::-1]]))
    elif how == "bad zstd values":
        header["flags"] |= wire.FLAG_COMPRESSED_VALUES
        value_bytes = draw(st.sampled_from([b"", b"\x28\xb5\x2f\xfd", codec.pack_values(values)[:-2],
                                            codec.pack_values(values[:-1])]))
    elif how == "unknown reference":
        header["flags"] = (flags & ~wire.FLAG_COMPRESSED_KEYS) | wire.FLAG_KEYS_BY_REF
        key_bytes = reference_frame(draw(u64), keys.size, draw(st.sampled_from([None, np.ones(keys.size, bool)])))
    elif how == "keys of zstd bomb":
        header["flags"] |= wire.FLAG_COMPRESSED_KEYS
        key_bytes = bomb(draw(st.sampled_from([8 * keys.size + 8, 1 << 26])))
    elif how == "values of zstd bomb":
        header["flags"] |= wire.FLAG_COMPRESSED_VALUES
        value_bytes = bomb(draw(st.sampled_from([values.nbytes + values.itemsize, 1 << 26])))
    frames = [raw_header(**header), key_bytes, value_bytes]
    if how == "magic":
        frames[0] = b"PH" + frames[0][2:]
    elif how == "version":
        version = draw(st.sampled_from([0, wire.VERSION - 1, wire.VERSION + 1, 255]))
        frames[0] = frames[0][:2] + bytes([version]) + frames[0][3:]
    elif how == "no values":
        frames = frames[:2]
    elif how == "extra frame":
        frames.append(draw(blobs))
    return frames, how


_INTERNAL = re.compile(r"internal error|\b(Type|Attribute|Key|Index|Value|Memory|Overflow|ZeroDivision|Assertion|"
                       r"UnboundLocal|Recursion|Runtime|NotImplemented)Error\b")
"""An error reply that reports an exception the validation did not anticipate."""


def _disruptive(frames: list[bytes]) -> bool:
    """A well-formed request any shard must obey: SHUTDOWN, EVICT of itself, BYE of the correct client's group."""
    try:
        header = wire.decode_header(frames)
    except WireError:
        return False
    return (header.op is wire.Op.SHUTDOWN or (header.op is wire.Op.EVICT and frames[1:] == [wire.encode_shard_id(0)])
            or (header.op is wire.Op.BYE and header.group == 0))


# -- the live shard --------------------------------------------------------------------------------------


def memory_of(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) << 10, int(fields["VmHWM"].split()[0]) << 10


@dataclass
class Tally:
    messages: int = 0
    batches: int = 0
    replies: collections.Counter = field(default_factory=collections.Counter)
    reasons: collections.Counter = field(default_factory=collections.Counter)  # error texts, numbers elided
    ops: collections.Counter = field(default_factory=collections.Counter)  # of the messages whose header decodes
    held: set = field(default_factory=set)
    internal_errors: list = field(default_factory=list)
    client_rounds: int = 0
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=12))  # recent batches
    failure: str | None = None  # the first broken invariant, with the batches before it


class LiveShard:
    """A shard process, a raw DEALER for the fuzz, and a correct client of group 0 with a model of its keys."""

    def __init__(self) -> None:
        spec = {"width": WIDTH, "groups": GROUPS, "vnodes": VNODES, "max_keys": MAX_KEYS}
        self.process = subprocess.Popen([sys.executable, "-c", _SHARD, json.dumps(spec)], stdout=subprocess.PIPE)
        self.endpoint = self.process.stdout.readline().decode().strip()
        assert self.endpoint.startswith("tcp://"), "the shard did not start"
        self.context = zmq.Context()
        self.connections = []  # more of them than the shard keeps key caches for (2 per group slot)
        for _ in range(FUZZ_CONNECTIONS):
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self.connections.append(sock)
        self.fuzz = self.connections[0]
        self.client = PSClient([self.endpoint], 0, GROUPS, HashRing([0], VNODES), width=WIDTH, timeout=60,
                               context=self.context, heartbeat_interval=0.5, key_cache=True, compression="zstd",
                               compress_values=True)
        rng = np.random.default_rng(8)
        self.rng = rng
        self.known = np.unique(rng.integers(2**40, 2**62, KNOWN, dtype=np.uint64))
        self.expected = np.zeros((self.known.size, WIDTH), dtype=np.float64)
        self.tally = Tally()
        self._next_id = 1 << 40
        self.client_round()
        self.rss_start, self.hwm_start = memory_of(self.process.pid)

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.fuzz.send_multipart([wire.encode_header(wire.Header(wire.Op.SHUTDOWN, request_id=1))])
                self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.client.close()
            for sock in self.connections:
                sock.close(0)
            self.context.destroy(linger=0)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def client_round(self) -> None:
        """The correct client: its known keys hold exactly what it pushed; then it pushes integers to some."""
        pulled = self.client.wait(self.client.pull(self.known, 0))
        np.testing.assert_array_equal(pulled, self.expected.astype(np.float32),
                                      err_msg="the known keys changed: a rejected message reached the parameters")
        some = np.sort(self.rng.choice(self.known.size, self.rng.integers(1, self.known.size), replace=False))
        grads = self.rng.integers(-2, 3, (some.size, WIDTH)).astype(np.float32)
        self.client.wait(self.client.push(self.known[some], grads, 0))
        self.expected[some] -= grads  # SGD, learning rate 1
        self.tally.client_rounds += 1

    def exchange(self, messages: list[list[bytes]], must_fail: set[int] = frozenset(), connection: int = 0
                 ) -> list[tuple]:
        """Send ``messages`` (those at ``must_fail`` positions must be refused) through one of the connections,
        then a PING; check every reply that arrived before the PING's answer. Returns (message, reply header,
        reply text) triples."""
        self.fuzz = self.connections[connection]
        expectations = []
        for position, frames in enumerate(messages):
            frames = list(frames)
            if len(frames[0]) == wire.HEADER_SIZE:  # a unique request id, to match the reply
                self._next_id += 1
                stamp = struct.pack("<Q", self._next_id)
                frames[0] = frames[0][: _REQUEST_ID.start] + stamp + frames[0][_REQUEST_ID.stop:]
            try:
                header = wire.decode_header(frames)
                request_id = header.request_id
                may_hold = header.op in (wire.Op.PULL, wire.Op.RESHARD, wire.Op.CHECKPOINT)
                self.tally.ops[header.op.name] += 1
            except WireError:  # refused before the header is known: an ERROR of request 0
                request_id, may_hold, must_fail = 0, False, {*must_fail, position}
            expectations.append([request_id, may_hold, position in must_fail, frames])
            self.fuzz.send_multipart(frames)
        self._next_id += 1
        ping = self._next_id
        self.fuzz.send_multipart([wire.encode_header(wire.Header(wire.Op.PING, group=1, request_id=ping))])
        self.tally.messages += len(messages)
        self.tally.batches += 1
        self.tally.history.append([e[3] for e in expectations])
        frames_of = lambda request_id: next((e[3] for e in expectations if e[0] == request_id), None)  # noqa: E731
        answered = []
        while True:
            assert self.fuzz.poll(30_000), f"the shard stopped answering (alive: {self.alive})"
            reply = self.fuzz.recv_multipart()
            header = wire.decode_header(reply)  # replies are well-formed
            if header.request_id == ping and header.op is wire.Op.ACK:
                break
            assert header.op in (wire.Op.ACK, wire.Op.PULL_REPLY, wire.Op.ERROR), header
            text = wire.error_text(reply[1]) if header.op is wire.Op.ERROR else ""
            if text:
                self.tally.reasons[re.sub(r"0x[0-9a-f]+|\d+", "N", re.sub(r"b'.*?'|b\".*?\"", "b'..'", text))[:70]] += 1
            if _INTERNAL.search(text):
                self.tally.internal_errors.append((text, frames_of(header.request_id)))
            self.tally.replies[header.op.name] += 1
            if header.request_id in self.tally.held:  # a held-back pull answered later (or a reshard refused)
                self.tally.held.discard(header.request_id)
                continue
            match = next((e for e in expectations if e[0] == header.request_id), None)
            assert match is not None, f"a reply to no pending request: {header} {text!r}"
            expectations.remove(match)
            if match[2]:
                assert header.op is wire.Op.ERROR, f"an invalid message was accepted: {match[3]!r}"
            answered.append((match[3], header, text))
        unanswered = [e for e in expectations if not e[1]]
        assert not unanswered, f"no reply to {[e[3] for e in unanswered]!r}"
        self.tally.held.update(e[0] for e in expectations)
        return answered


@pytest.fixture(scope="module")
def live_shard():
    shard = LiveShard()
    yield shard
    shard.close()


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


# -- the tests -------------------------------------------------------------------------------------------


def test_fuzzed_messages_are_refused_and_change_nothing(live_shard):
    shard = live_shard
    deadline = time.monotonic() + FUZZ_SECONDS
    started = time.monotonic()
    anything = st.one_of(garbage(), random_headers(), control_messages(), keyed_conversations().map(tuple))

    @settings(max_examples=_CHUNK, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(connection=st.integers(0, FUZZ_CONNECTIONS - 1), batch=st.lists(anything, min_size=1, max_size=6),
           invalid=st.lists(invalid_pushes_of_known_keys(shard.known), max_size=3))
    def fuzz(connection, batch, invalid):
        if time.monotonic() > deadline or shard.tally.failure:
            return
        messages = []
        for item in batch:
            messages.extend(item if isinstance(item, tuple) else [item])
        messages = [m for m in messages if not _disruptive(m)]
        must_fail = set(range(len(messages), len(messages) + len(invalid)))
        messages += [frames for frames, _ in invalid]
        try:
            shard.exchange(messages, must_fail, connection)
            assert shard.alive, "the shard process died"
            shard.client_round()
            rss, hwm = memory_of(shard.process.pid)
            assert rss - shard.rss_start < RSS_GROWTH_LIMIT, f"shard RSS grew by {_megabytes(rss - shard.rss_start)}"
            assert hwm - shard.hwm_start < RSS_GROWTH_LIMIT, \
                f"shard peak RSS grew by {_megabytes(hwm - shard.hwm_start)}"
        except Exception as e:  # the shard's state is the sum of every batch: shrinking one batch means nothing
            history = "\n".join(f"  batch -{len(shard.tally.history) - i}: {batch!r}"[:4000]
                                for i, batch in enumerate(shard.tally.history))
            shard.tally.failure = f"{type(e).__name__}: {e}\nafter these batches (the last one failed):\n{history}"

    while time.monotonic() < deadline and shard.tally.batches < MAX_EXAMPLES and not shard.tally.failure:
        fuzz()  # a fresh random run of _CHUNK batches each time: the time bound holds whatever the machine's load
    elapsed = time.monotonic() - started
    rss, hwm = memory_of(shard.process.pid)
    tally = shard.tally
    print(f"\nfuzz: {tally.messages} messages in {tally.batches} batches ({elapsed:.1f}s, "
          f"{tally.messages / elapsed:.0f}/s), replies {dict(tally.replies)}, {len(tally.held)} held back; "
          f"{tally.client_rounds} rounds of the correct client; shard RSS {_megabytes(shard.rss_start)} -> "
          f"{_megabytes(rss)} (peak {_megabytes(hwm)}, at start {_megabytes(shard.hwm_start)})")
    print(f"decodable headers by op: {dict(tally.ops.most_common())}")
    print(f"{len(tally.reasons)} kinds of rejection; the most frequent:")
    for reason, count in tally.reasons.most_common(int(os.environ.get("HYBRID_PS_FUZZ_REASONS", 12))):
        print(f"  {count:6d}  {reason}")
    assert not tally.failure, tally.failure
    assert not tally.internal_errors, tally.internal_errors[:5]
    assert tally.messages >= 200, "too few messages thrown to mean anything"
    assert shard.alive and rss - shard.rss_start < RSS_GROWTH_LIMIT


@pytest.mark.parametrize("frame", ["keys", "values"])
def test_a_zstd_frame_declaring_more_than_the_header_is_refused_before_it_is_inflated(live_shard, frame):
    """A few kB of zstd can declare (and hold) hundreds of MB: the shard must not inflate it to find out."""
    shard = live_shard
    keys = shard.known[:4]
    declared = 256 << 20
    inflatable = bomb(declared)
    assert len(inflatable) < 64 << 10
    flags = wire.FLAG_COMPRESSED_KEYS if frame == "keys" else wire.FLAG_COMPRESSED_VALUES
    message = [raw_header(wire.Op.PUSH, 0, flags, 1, 0, keys.size),
               inflatable if frame == "keys" else keys.astype("<u8").tobytes(),
               inflatable if frame == "values" else np.ones((keys.size, WIDTH), np.float32).tobytes()]
    _, hwm_before = memory_of(shard.process.pid)
    (_, header, text), = shard.exchange([message], must_fail={0})
    _, hwm_after = memory_of(shard.process.pid)
    print(f"\n{_megabytes(declared)} zstd {frame} frame of {len(inflatable)} bytes: {text!r}; shard peak RSS "
          f"{_megabytes(hwm_before)} -> {_megabytes(hwm_after)}")
    assert f"frame holds {declared} bytes, expected" in text
    assert hwm_after - hwm_before < 32 << 20, "the shard inflated the frame"
    shard.client_round()


# -- what the fuzz found, one by one, against a shard serving in a thread (its state is inspected) ----------------


class ThreadShard:
    """A ShardService (SGD, learning rate 1) serving in a thread on 127.0.0.1, and raw DEALERs to it."""

    def __init__(self, groups: int = 2, staleness: float = math.inf, shard_ids=(0,), replication: int = 1,
                 checkpoint_writer=None, cut_reader=None, width: int = 1, max_keys: int = 1 << 24) -> None:
        self.context = zmq.Context()
        self.ring = HashRing(shard_ids, VNODES)
        self.service = ShardService(Shard(width, make_optimizer("sgd", 1.0), capacity=16), shard_ids[0], self.ring,
                                    groups, staleness, max_keys=max_keys, context=self.context, replication=replication,
                                    checkpoint_writer=checkpoint_writer, cut_reader=cut_reader)
        self.thread = threading.Thread(target=self.service.serve, daemon=True)
        self.thread.start()
        self.sockets: list[zmq.Socket] = []

    def dealer(self) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.service.endpoint)
        self.sockets.append(sock)
        return sock

    def request(self, sock: zmq.Socket, frames: list) -> tuple[wire.Header, str]:
        """Send ``frames`` (numpy arrays as bytes) and wait for one reply."""
        sock.send_multipart([f.tobytes() if isinstance(f, np.ndarray) else f for f in frames])
        assert sock.poll(20_000), "no reply"
        reply = sock.recv_multipart()
        header = wire.decode_header(reply)
        return header, wire.error_text(reply[1]) if header.op is wire.Op.ERROR else ""

    def sync(self, sock: zmq.Socket) -> list[wire.Header]:
        """A PING through ``sock``; returns the replies that came before its answer (the service is idle then)."""
        sock.send(wire.encode_header(wire.Header(wire.Op.PING, request_id=2**63)))
        replies = []
        while True:
            assert sock.poll(20_000), "no reply"
            header = wire.decode_header(sock.recv_multipart())
            if header.request_id == 2**63:
                return replies
            replies.append(header)

    def close(self) -> None:
        admin = self.dealer()
        admin.send(wire.encode_header(wire.Header(wire.Op.SHUTDOWN, request_id=1)))
        admin.poll(5000)
        self.thread.join(10)
        for sock in self.sockets:
            sock.close(0)
        self.service.close()
        self.context.destroy(linger=0)
        assert not self.thread.is_alive()


@pytest.fixture
def thread_shard():
    shards = []

    def make(**kwargs) -> ThreadShard:
        shards.append(ThreadShard(**kwargs))
        return shards[-1]

    yield make
    for shard in shards:
        shard.close()


def _pull(keys: np.ndarray, request_id: int = 5, clock: int = 0, group: int = 0, flags: int = 0) -> list:
    return [wire.encode_header(wire.Header(wire.Op.PULL, group, request_id, clock, keys.size, 1, flags=flags)), keys]


def test_a_clock_past_the_range_of_stop_clocks_is_refused_and_clock_acks_keep_working(thread_shard):
    """Found by the fuzz: CLOCK at 2**63 - 1, then STOP: the stop clock (two past the fastest group) overflowed
    int64 and every later CLOCK acknowledgement failed with "internal error: argument out of range"."""
    shard = thread_shard(groups=2)
    sock = shard.dealer()
    for clock in (wire.FINAL_CLOCK, 2**63 - 2, 2**62 + 1, -1):
        header, text = shard.request(sock, [wire.encode_header(wire.Header(wire.Op.CLOCK, 1, 3, clock))])
        assert header.op is wire.Op.ERROR and "out of range" in text, text
    assert shard.request(sock, [wire.encode_header(wire.Header(wire.Op.CLOCK, 1, 4, 7))])[0].op is wire.Op.ACK
    assert shard.request(sock, [wire.encode_header(wire.Header(wire.Op.STOP, 0, 5))])[0].op is wire.Op.ACK
    header, text = shard.request(sock, [wire.encode_header(wire.Header(wire.Op.CLOCK, 0, 6, 3))])
    assert (header.op, header.flags, header.clock) == (wire.Op.ACK, wire.FLAG_STOP, 9), text


def test_a_reshard_is_refused_by_a_shard_without_checkpoints(thread_shard):
    """Found by the fuzz: RESHARD from every group made a shard without a cut reader fail half-way (TypeError),
    or leave the tier, although no cut can exist without checkpoints (VIEW was refused already)."""
    shard = thread_shard(groups=2)
    sock = shard.dealer()
    view = TierView({0: shard.service.endpoint, 1: "tcp://127.0.0.1:9"}, 1).to_bytes()
    for group in (0, 1):
        header, text = shard.request(sock, [wire.encode_header(wire.Header(wire.Op.RESHARD, group, 9, 0)), view])
        assert header.op is wire.Op.ERROR and "needs checkpoints" in text, text
    assert shard.thread.is_alive() and shard.service.placement.ring.num_shards == 1


class _Part:
    """What a cut reader yields (the fields of a checkpoint.ShardState that resharding reads)."""

    def __init__(self, keys: np.ndarray, value: float) -> None:
        self.keys = keys
        self.values = np.full((keys.size, 1), value, np.float32)
        self.state: dict[str, np.ndarray] = {}


@pytest.mark.parametrize("cut_is_readable", [False, True])
def test_a_reshard_whose_cut_cannot_be_read_leaves_the_shard_as_it_was(thread_shard, cut_is_readable):
    """A RESHARD dropped the ranges moving away before reading the cut: when reading failed (a bad clock,
    missing files) the shard answered ERROR with those keys gone. Now it reads first and rolls back."""
    gained = np.arange(10**6, 10**6 + 5000, dtype=np.uint64)
    new_ring = HashRing([0, 1], VNODES)
    gained = gained[new_ring.shard_of(gained) == 0][:100]

    def cut_reader(cut, owned):
        yield _Part(gained[owned(gained)], 5.0)
        if not cut_is_readable:
            raise CheckpointError(f"ckpt-{cut}: shard-1.h5 is truncated")

    shard = thread_shard(groups=2, checkpoint_writer=lambda *args: None, cut_reader=cut_reader)
    sock = shard.dealer()
    held = np.arange(1, 2001, dtype=np.uint64)
    grads = -np.arange(1, 2001, dtype=np.float32).reshape(-1, 1)
    push = wire.encode_header(wire.Header(wire.Op.PUSH, 0, 1, 0, held.size, 1))
    assert shard.request(sock, [push, held, grads])[0].op is wire.Op.ACK
    view = TierView({0: shard.service.endpoint, 1: "tcp://127.0.0.1:9"}, 1).to_bytes()
    sock.send_multipart([wire.encode_header(wire.Header(wire.Op.RESHARD, 0, 20, 4)), view])
    sock.send_multipart([wire.encode_header(wire.Header(wire.Op.RESHARD, 1, 21, 4)), view])
    replies = shard.sync(sock)
    assert sorted(h.request_id for h in replies) == [20, 21]
    keys, values, _ = shard.service.shard.export()
    if cut_is_readable:
        assert all(h.op is wire.Op.ACK and h.clock == 4 for h in replies)
        stays = held[new_ring.shard_of(held) == 0]
        assert 0 < stays.size < held.size and shard.service.placement.ring.num_shards == 2
        assert set(keys.tolist()) == set(stays.tolist()) | set(gained.tolist())
        np.testing.assert_array_equal(shard.service.shard.pull(gained), np.full((gained.size, 1), 5.0))
        np.testing.assert_array_equal(shard.service.shard.pull(stays), stays.astype(np.float32).reshape(-1, 1))
    else:
        assert all(h.op is wire.Op.ERROR for h in replies)
        assert shard.service.placement.ring.num_shards == 1
        order = np.argsort(keys)  # the table's order is its own: compare by key
        np.testing.assert_array_equal(keys[order], held)
        np.testing.assert_array_equal(values[order], held.astype(np.float32).reshape(-1, 1))


def test_evictions_of_shards_not_on_the_ring_are_ignored(thread_shard):
    """Each EVICT of a new id grew the shard's dead set and rebuilt its placement (O(dead) each time)."""
    shard = thread_shard(groups=1, shard_ids=(0, 1), replication=2)
    sock = shard.dealer()
    for request_id, victim in enumerate([*range(2, 300), 2**31, 2**32 - 1]):
        sock.send_multipart([wire.encode_header(wire.Header(wire.Op.EVICT, 0, request_id)),
                             wire.encode_shard_id(victim)])
    replies = shard.sync(sock)
    assert len(replies) == 300 and all(h.op is wire.Op.ACK for h in replies)
    assert shard.service.placement.dead == frozenset()
    sock.send_multipart([wire.encode_header(wire.Header(wire.Op.EVICT, 0, 1)), wire.encode_shard_id(1)])
    # a shard of the ring: its backup ranges are served here now, and this connection (a client: it pinged) is told
    assert [h.op for h in shard.sync(sock)] == [wire.Op.SHARD_DOWN, wire.Op.ACK]
    assert shard.service.placement.dead == {1}


def _text_of(shard: ThreadShard, sock: zmq.Socket, keys: np.ndarray) -> str:
    header, text = shard.request(sock, _pull(keys, 99, clock=5))
    assert header.op is wire.Op.ERROR
    return text


def test_a_connection_cannot_hold_back_pulls_without_bound(thread_shard):
    """Each held-back pull keeps its keys frame: one connection could pin any amount of memory."""
    shard = thread_shard(groups=2, staleness=0)
    sock = shard.dealer()
    keys = np.arange(1000, dtype=np.uint64)
    for request_id in range(1, 101):
        sock.send_multipart(_pull(keys, request_id, clock=5))  # group 1 is at clock 0: held back
    refused = shard.sync(sock)
    assert len(refused) == 36 and all(h.op is wire.Op.ERROR for h in refused)
    assert len(shard.service.held_pulls) == 64
    assert "64 pulls (64000 keys) of this connection are held back already" in _text_of(shard, sock, keys)
    other = shard.dealer()  # another connection is not refused because of the first one
    other.send_multipart(_pull(keys, 500, clock=5))
    assert shard.sync(other) == []
    sock.send(wire.encode_header(wire.Header(wire.Op.CLOCK, 0, 600, 5)))
    sock.send(wire.encode_header(wire.Header(wire.Op.FINISH, 1, 601)))
    released = shard.sync(sock)
    assert sum(h.op is wire.Op.PULL_REPLY for h in released) == 64
    assert [h.request_id for h in shard.sync(other)] == [500] and not shard.service.held_pulls
    # and at most four messages' worth of keys
    small = thread_shard(groups=2, staleness=0, max_keys=1000)
    sock = small.dealer()
    for request_id in range(1, 6):
        sock.send_multipart(_pull(keys, request_id, clock=5))
    assert [(h.op, h.request_id) for h in small.sync(sock)] == [(wire.Op.ERROR, 5)]


def test_connections_gone_without_bye_leave_a_bounded_number_of_key_caches(thread_shard):
    """Each connection's kept key lists (up to 16 MB) stayed until it said BYE: leaders that crash or
    restart never do. Beyond two caches per group slot the least recently used goes."""
    shard = thread_shard(groups=2)
    keys = np.arange(0, 20_000, 2, dtype=np.uint64)
    survivor = shard.dealer()
    assert shard.request(survivor, _pull(keys, flags=wire.FLAG_KEEP_KEYS))[0].op is wire.Op.PULL_REPLY
    reference = reference_frame(signature(keys), keys.size)
    for _ in range(30):
        sock = shard.dealer()
        assert shard.request(sock, _pull(keys, flags=wire.FLAG_KEEP_KEYS))[0].op is wire.Op.PULL_REPLY
        sock.close(0)
        header, _ = shard.request(survivor, _pull(keys, flags=wire.FLAG_KEYS_BY_REF)[:1] + [reference])
        assert header.op is wire.Op.PULL_REPLY  # a connection in use keeps its lists
    assert len(shard.service.request_keys._key_lists) <= 4
    # a client whose lists were dropped is told so, and (PSClient) sends its keys again
    client = PSClient([shard.service.endpoint], 0, 2, shard.ring, timeout=30, context=shard.context, key_cache=True)
    try:
        for _ in range(3):
            client.wait(client.pull(keys, 0))
        for _ in range(8):
            shard.request(shard.dealer(), _pull(keys, flags=wire.FLAG_KEEP_KEYS))
        np.testing.assert_array_equal(client.wait(client.pull(keys, 0)), np.zeros((keys.size, 1)))
    finally:
        client.close()

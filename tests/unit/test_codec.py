"""hybrid_ps.protocol.codec: zstd frames of keys (deltas, byte-shuffled) and values round-trip exactly; bad frames are refused."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from hybrid_ps.errors import WireError
from hybrid_ps.protocol import codec, wire

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("keys", [
    np.unique(RNG.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True)),  # hashed feature ids
    np.arange(0, 300_000, 7, dtype=np.uint64),  # small libsvm indices
    np.array([2**64 - 1], dtype=np.uint64), np.zeros(0, dtype=np.uint64),
], ids=["hashed", "small", "one", "none"])
def test_keys_round_trip_exactly(keys):
    frame = codec.pack_keys(keys)
    assert np.array_equal(codec.unpack_keys(frame, keys.size), keys)
    assert np.array_equal(wire.keys_from_frame(frame, keys.size, 1 << 24, compressed=True), keys)


def test_small_keys_shrink_a_lot_and_hashed_ones_a_little():
    small = np.arange(0, 300_000, 7, dtype=np.uint64)
    hashed = np.unique(RNG.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True))
    assert len(codec.pack_keys(small)) < small.nbytes / 50
    assert len(codec.pack_keys(hashed)) < 0.9 * hashed.nbytes


@pytest.mark.parametrize("encoding", ["float32", "float16", "bfloat16", "float8"])
def test_values_round_trip_exactly(encoding):
    values = wire.encode_values(RNG.normal(0, 0.01, (3000, 2)).astype(np.float32), encoding)
    frame = codec.pack_values(values)
    assert np.array_equal(codec.unpack_values(frame, values.dtype, values.size), values.reshape(-1))


def test_a_compressed_push_decodes_through_the_wire_checks():
    values = RNG.normal(0, 1, (100, 1)).astype(np.float32)
    header = wire.Header(wire.Op.PUSH, num_keys=100, width=1, flags=wire.FLAG_COMPRESSED_VALUES)
    assert np.array_equal(wire.values_from_frame(codec.pack_values(values), header), values)


def test_bad_frames_are_refused_with_a_clear_error():
    keys = np.arange(100, dtype=np.uint64)
    with pytest.raises(WireError, match="compressed keys frame is malformed"):
        codec.unpack_keys(b"not zstd at all", 100)
    with pytest.raises(WireError, match="compressed keys frame holds 792 bytes, expected 800"):
        codec.unpack_keys(codec.pack_keys(keys[:-1]), 100)
    bomb = zstandard.ZstdCompressor().compress(bytes(10**7))  # 10 MB of zeros in a few hundred bytes
    with pytest.raises(WireError, match="compressed values frame"):
        codec.unpack_values(bomb, np.dtype("<f4"), 100)
    unsorted = codec.pack_keys(keys[::-1].copy())  # wraps around: deltas of a descending list
    with pytest.raises(WireError, match="strictly increasing"):
        wire.keys_from_frame(unsorted, 100, 1 << 24, compressed=True)


def test_threads_compress_and_decompress_at_once_without_corrupting_each_other():
    import threading

    keys = [np.unique(np.random.default_rng(s).integers(0, 2**40, 20_000, dtype=np.uint64)) for s in range(4)]
    failures = []

    def work(own: np.ndarray) -> None:
        for _ in range(30):
            try:
                if not np.array_equal(codec.unpack_keys(codec.pack_keys(own), own.size), own):
                    failures.append("wrong keys")
            except Exception as e:  # reported by the assertion below, not lost in the thread
                failures.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures

"""Lossless compression of PS frames with Zstandard (the ``zstandard`` package): keys always, values optionally.

Sorted keys are sent as deltas (the first key, then the gaps), byte-shuffled so
that the high bytes, mostly zero, sit together; values are byte-shuffled by their
item size. Both then go through zstd at level 1. Decompression is bounded by the
size the header announces, so a forged frame cannot blow up a shard's memory.
"""

from __future__ import annotations

import threading

import numpy as np
import zstandard

from ..errors import WireError

__all__ = ["MIN_BYTES", "pack_keys", "unpack_keys", "pack_values", "unpack_values"]

MIN_BYTES = 4096
"""Frames smaller than this are sent as they are (compression would not pay for itself)."""

_LEVEL = 1
_local = threading.local()  # zstandard's (de)compressor objects must not be shared between threads


def _codecs() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    if not hasattr(_local, "codecs"):
        _local.codecs = (zstandard.ZstdCompressor(level=_LEVEL), zstandard.ZstdDecompressor())
    return _local.codecs


def _shuffle(array: np.ndarray) -> bytes:
    """The bytes of ``array`` grouped by position inside each item (all first bytes, then all second bytes, ...)."""
    items = np.ascontiguousarray(array).reshape(-1).view(np.uint8).reshape(-1, array.dtype.itemsize)
    return np.ascontiguousarray(items.T).tobytes()


def _unshuffle(raw: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    columns = np.frombuffer(raw, dtype=np.uint8).reshape(dtype.itemsize, count)
    return np.ascontiguousarray(columns.T).view(dtype).reshape(-1)


def _decompress(frame: memoryview | bytes, size: int, what: str) -> bytes:
    try:
        # zstandard allocates (and fills) the content size a frame's header declares, whatever
        # max_output_size says: a frame of a few kB can declare gigabytes (a decompression bomb).
        # A declared size must be the one expected; an undeclared one is bounded by max_output_size
        # (at least 1: 0 would mean "no limit").
        declared = zstandard.frame_content_size(frame)
        if declared not in (-1, size):
            raise WireError(f"compressed {what} frame holds {declared} bytes, expected {size}")
        raw = _codecs()[1].decompress(frame, max_output_size=max(size, 1))
    except zstandard.ZstdError as e:
        raise WireError(f"compressed {what} frame is malformed: {e}") from None
    if len(raw) != size:
        raise WireError(f"compressed {what} frame holds {len(raw)} bytes, expected {size}")
    return raw


def pack_keys(keys: np.ndarray) -> bytes:
    """Sorted uint64 keys as a compressed frame (deltas, byte-shuffled, zstd)."""
    keys = np.asarray(keys, dtype=np.uint64)
    deltas = np.empty_like(keys)
    if keys.size:
        deltas[0] = keys[0]
        np.subtract(keys[1:], keys[:-1], out=deltas[1:])
    return _codecs()[0].compress(_shuffle(deltas))


def unpack_keys(frame: memoryview | bytes, count: int) -> np.ndarray:
    """The ``count`` keys of a ``pack_keys`` frame (order is checked by the caller).

    Raises:
        WireError: malformed, or not ``count`` keys.
    """
    deltas = _unshuffle(_decompress(frame, count * 8, "keys"), np.dtype("<u8"), count)
    return np.cumsum(deltas, dtype=np.uint64)


def pack_values(values: np.ndarray) -> bytes:
    """Values (any wire dtype) as a compressed frame (byte-shuffled by item size, zstd)."""
    return _codecs()[0].compress(_shuffle(values))


def unpack_values(frame: memoryview | bytes, dtype: np.dtype, count: int) -> np.ndarray:
    """The ``count`` values of ``dtype`` of a ``pack_values`` frame (flat).

    Raises:
        WireError: malformed, or not ``count`` values.
    """
    return _unshuffle(_decompress(frame, count * dtype.itemsize, "values"), dtype, count)

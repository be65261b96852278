"""Key-list caching: a shard keeps the key lists a connection sent lately, so a repeat travels as a 16-byte reference.

Sorted key lists repeat: a preloaded data set sends the same batch unions every
pass, and with one replica a push goes to the shard that served the pull of the
same keys. A request flagged ``FLAG_KEEP_KEYS`` asks the shard to keep its list;
``FLAG_KEYS_BY_REF`` replaces the keys frame by ``reference_frame(signature, count)``.
Client and shard apply the same least-recently-used rule to the same sequence of
messages (one connection is first in, first out), so the client's mirror knows
what the shard holds; if they ever disagree the shard answers "key list not
cached" and the client sends the keys again, transparently. A reference may
carry a bitmask over the kept list: a filtered push names the subset of the
step's pulled keys it updates in one bit a key.
"""

from __future__ import annotations

import collections
import struct

import numpy as np

from ..placement.ring import mix64

__all__ = ["CAPACITY_KEYS", "MISS", "signature", "reference_frame", "parse_reference", "KeyListCache"]

CAPACITY_KEYS = 1 << 21
"""Keys kept per connection (16 MiB of uint64) on both sides."""
MISS = "key list not cached"
"""How a shard's error reply for an unknown reference starts."""

_REFERENCE = struct.Struct("<QQ")
_SALT = np.uint64(0x5BD1E9955BD1E995)


def signature(keys: np.ndarray) -> int:
    """A 64-bit content signature of a key list (a sum of hashes: one vectorised pass)."""
    with np.errstate(over="ignore"):
        return int(np.add.reduce(mix64(keys ^ _SALT), dtype=np.uint64))


def reference_frame(sig: int, count: int, subset: np.ndarray | None = None) -> bytes:
    """The 16 bytes sent instead of a kept key list, then (``subset``: a bool mask over it) one bit a key."""
    head = _REFERENCE.pack(sig, count)
    return head if subset is None else head + np.packbits(subset, bitorder="little").tobytes()


def parse_reference(frame: memoryview | bytes) -> tuple[int, int, np.ndarray | None]:
    """``(signature, count, subset mask or None)`` of a reference frame.

    Raises:
        ValueError: shorter than 16 bytes, or a bitmask of the wrong length.
    """
    if len(frame) < _REFERENCE.size:
        raise ValueError(f"a key-list reference is at least {_REFERENCE.size} bytes, got {len(frame)}")
    sig, count = _REFERENCE.unpack(frame[: _REFERENCE.size])
    if len(frame) == _REFERENCE.size:
        return sig, count, None
    bits = np.frombuffer(frame, dtype=np.uint8, offset=_REFERENCE.size)
    if bits.size != (count + 7) // 8:
        raise ValueError(f"a subset of {count} keys needs {(count + 7) // 8} mask bytes, got {bits.size}")
    return sig, count, np.unpackbits(bits, count=count, bitorder="little").view(bool)


class KeyListCache:
    """Key lists by signature, least recently used first out, at most ``capacity`` keys in all.

    The shard keeps the lists; the client's mirror keeps only their sizes (``keys=None``).
    """

    def __init__(self, capacity: int = CAPACITY_KEYS) -> None:
        self.capacity = capacity
        self._lists: collections.OrderedDict[int, tuple[int, np.ndarray | None]] = collections.OrderedDict()
        self._held = 0

    def __len__(self) -> int:
        return len(self._lists)

    def recall(self, sig: int, count: int) -> tuple[bool, np.ndarray | None]:
        """``(hit, keys)`` for a list of ``count`` keys; a hit becomes the most recently used."""
        entry = self._lists.get(sig)
        if entry is None or entry[0] != count:
            return False, None
        self._lists.move_to_end(sig)
        return True, entry[1]

    def remember(self, sig: int, count: int, keys: np.ndarray | None = None) -> None:
        """Keep a list (or, in a mirror, its size), evicting the least recently used beyond the capacity."""
        if count > self.capacity:
            return
        old = self._lists.pop(sig, None)
        self._held -= old[0] if old else 0
        self._lists[sig] = (count, keys)
        self._held += count
        while self._held > self.capacity:
            _, (evicted, _) = self._lists.popitem(last=False)
            self._held -= evicted

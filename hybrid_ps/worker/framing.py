"""How a leader's keyed requests (PULL, PUSH) go on the wire: key-list references, compression, byte counts.

Stages, each optional: a key list the shard keeps goes as a reference (a subset
of the list pulled at the same clock as a reference with a bitmask, see hybrid_ps.protocol.keycache);
large key and value frames are zstd-compressed (hybrid_ps.protocol.codec). ``Traffic``
counts the frames before and after each stage. No sockets here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..protocol import codec, wire
from ..protocol.keycache import KeyListCache, reference_frame, signature

__all__ = ["Traffic", "RequestFraming"]

_PULLED_CLOCKS = 4
"""Pulled key lists remembered per shard, by clock: a push names its keys as a subset of the list
pulled at its own clock, which with prefetching is not the latest pull."""


def _size(frame: np.ndarray | bytes | memoryview) -> int:
    return frame.nbytes if isinstance(frame, np.ndarray) else len(frame)


@dataclass
class Traffic:
    """Bytes a client sent and received, with the key and value frames before and after each stage."""

    sent: int = 0  # on the wire: every frame of every request, replicas included
    received: int = 0
    keys_in: int = 0  # key frames as given (uint64)
    keys_after_cache: int = 0  # ... with repeats sent as references
    keys_out: int = 0  # ... and compressed
    values_in: int = 0  # pushed value frames as given (after the encoding)
    values_out: int = 0  # ... compressed

    def count_request(self, frames: list) -> None:
        """Add one request's frames as sent (its header included)."""
        self.sent += wire.HEADER_SIZE + sum(_size(frame) for frame in frames)


class RequestFraming:
    """The per-shard state of the stages: what each shard keeps for this client, and its recent pulled lists.

    Args:
        key_cache: send kept key lists as references.
        compression: ``zstd`` or ``none``.
        compress_values: with compression, compress pushed values too.
    """

    def __init__(self, key_cache: bool = False, compression: str = "none", compress_values: bool = False) -> None:
        self.key_cache = key_cache
        self.compression = compression != "none"
        self.compress_values = self.compression and compress_values
        self.traffic = Traffic()
        self._mirrors: dict[int, KeyListCache] = {}  # per shard: the key lists it keeps for us
        self._pulled: dict[int, OrderedDict[int, tuple[int, np.ndarray]]] = {}  # shard -> clock -> (sig, keys)

    def connected(self, shard: int) -> None:
        """A (new) connection to ``shard``: it keeps nothing for us yet."""
        self._mirrors[shard] = KeyListCache()
        self._pulled[shard] = OrderedDict()

    def frames(self, shard: int, op: wire.Op, clock: int, arrays: list, by_reference: bool = True) -> tuple[int, list]:
        """Header flags and frames for a keyed request's ``arrays`` (keys, and values for a push) at ``clock``."""
        flags, frames = (self._keys_or_reference(shard, op, clock, arrays, by_reference) if self.key_cache
                         else (0, arrays))
        self.traffic.keys_in += arrays[0].nbytes
        self.traffic.keys_after_cache += _size(frames[0])
        if self.compression:
            flags, frames = self._compressed(flags, frames)
        self.traffic.keys_out += _size(frames[0])
        if len(arrays) > 1:
            self.traffic.values_in += arrays[1].nbytes
            self.traffic.values_out += _size(frames[1])
        return flags, frames

    def split_push(self, shard: int, clock: int, keys: np.ndarray, positions: np.ndarray | None) -> list:
        """A shard's push part at ``clock`` as the keys it served in the pull of that clock (named by a
        subset reference) and the others (a backup's); ``[positions]`` when there is nothing to gain."""
        base = self._pulled_at(shard, clock)[1]
        if not self.key_cache or base is None or not base.size:
            return [positions]
        part = keys if positions is None else keys[positions]
        inside = base[np.minimum(np.searchsorted(base, part), base.size - 1)] == part
        if inside.all() or not inside.any():
            return [positions]
        everything = np.arange(keys.size) if positions is None else positions
        return [everything[inside], everything[~inside]]

    def _pulled_at(self, shard: int, clock: int) -> tuple[int, np.ndarray | None]:
        pulled = self._pulled.get(shard)
        return (0, None) if pulled is None else pulled.get(clock, (0, None))

    def _keys_or_reference(self, shard: int, op: wire.Op, clock: int, arrays: list,
                           by_reference: bool) -> tuple[int, list]:
        """A reference to a list the shard keeps (or to a subset of the one pulled at ``clock``), or the keys,
        kept there."""
        keys = arrays[0]
        sig = signature(keys)
        mirror = self._mirrors[shard]
        reference = None
        if by_reference and mirror.recall(sig, keys.size)[0]:
            reference = reference_frame(sig, keys.size)
        elif by_reference and op is wire.Op.PUSH:
            reference = self._subset_reference(shard, clock, keys)
        if op is wire.Op.PULL:
            pulled = self._pulled[shard]
            pulled[clock] = (sig, keys)
            pulled.move_to_end(clock)
            while len(pulled) > _PULLED_CLOCKS:
                pulled.popitem(last=False)
        if reference is not None:
            return wire.FLAG_KEYS_BY_REF, [reference, *arrays[1:]]
        mirror.remember(sig, keys.size)
        return wire.FLAG_KEEP_KEYS, arrays

    def _subset_reference(self, shard: int, clock: int, keys: np.ndarray) -> bytes | None:
        sig, base = self._pulled_at(shard, clock)
        if base is None or keys.size > base.size:
            return None
        positions = np.minimum(np.searchsorted(base, keys), base.size - 1)
        if not np.array_equal(base[positions], keys) or not self._mirrors[shard].recall(sig, base.size)[0]:
            return None
        subset = np.zeros(base.size, dtype=bool)
        subset[positions] = True
        return reference_frame(sig, base.size, subset)

    def _compressed(self, flags: int, frames: list) -> tuple[int, list]:
        """Keys (unless sent by reference) and, if asked, values, zstd-compressed when large enough."""
        frames = list(frames)
        if not flags & wire.FLAG_KEYS_BY_REF and frames[0].nbytes >= codec.MIN_BYTES:
            frames[0], flags = codec.pack_keys(frames[0]), flags | wire.FLAG_COMPRESSED_KEYS
        if self.compress_values and len(frames) > 1 and frames[1].nbytes >= codec.MIN_BYTES:
            frames[1], flags = codec.pack_values(frames[1]), flags | wire.FLAG_COMPRESSED_VALUES
        return flags, frames

"""Key -> shard mapping: a consistent-hash ring with virtual nodes, shared by client and server.

Each shard owns ``vnodes`` points on a 64-bit ring. A key is hashed onto the
ring (``mix64``, so sequential block ids spread as well as hashed feature ids)
and belongs to the first point at or after it, wrapping around. Adding or
removing a shard moves only the ranges next to its points: ~1/S of the keys.
With replication ``R`` a key's range also lives on the next ``R - 1`` distinct
shards met walking on from that point (its preference list: primary first).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .errors import ConfigError

__all__ = ["mix64", "HashRing"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_BUCKET_BITS = 16  # the owner table covers the ring in 2**16 equal arcs (512 KiB as int64, 64 KiB as int8)
_CHUNK = 1 << 15  # keys hashed per step: the scratch arrays stay in cache and are allocated once per call
_SPLIT_BY_MASKS = 8  # up to this many shards, split makes one pass per shard instead of sorting


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised: a bijective uint64 -> uint64 hash."""
    x = np.asarray(x, dtype=np.uint64)
    z = np.empty_like(x)  # a new array: the input is never modified
    _mix64_into(x, z, np.empty_like(x))
    return z


def _mix64_into(x: np.ndarray, z: np.ndarray, scratch: np.ndarray) -> None:
    """``z = mix64(x)`` without temporaries (``scratch``: same shape, overwritten)."""
    np.add(x, _GOLDEN, out=z)
    for shift, multiplier in ((_S30, _M1), (_S27, _M2)):
        np.right_shift(z, shift, out=scratch)
        np.bitwise_xor(z, scratch, out=z)
        np.multiply(z, multiplier, out=z)
    np.right_shift(z, _S31, out=scratch)
    np.bitwise_xor(z, scratch, out=z)


class HashRing:
    """Consistent hashing of uint64 keys onto shard ids.

    Args:
        shard_ids: the ids of the shards on the ring (e.g. ``range(S)``).
        vnodes: virtual nodes per shard; more gives a more even split.
    """

    def __init__(self, shard_ids: Iterable[int], vnodes: int = 256) -> None:
        ids = np.array(sorted(set(int(s) for s in shard_ids)), dtype=np.uint64)
        if ids.size == 0:
            raise ConfigError("a hash ring needs at least one shard")
        if vnodes < 1:
            raise ConfigError(f"vnodes must be >= 1, got {vnodes}")
        self.shard_ids = ids.astype(np.int64)
        self.vnodes = vnodes
        owners = np.repeat(ids, vnodes)
        replicas = np.tile(np.arange(vnodes, dtype=np.uint64), ids.size)
        points = mix64(mix64(owners) ^ replicas)
        order = np.argsort(points, kind="stable")
        self._points = points[order]
        self._owners = owners[order].astype(np.int64)
        self._slots = np.searchsorted(self.shard_ids, self._owners)  # each point's owner as an index of shard_ids
        self._ids_are_slots = bool(np.array_equal(self.shard_ids, np.arange(ids.size)))
        self._bucket_slots = self._bucket_table(self._slots)
        self._small_bucket_slots = self._bucket_slots.astype(np.int8) if ids.size < 128 else self._bucket_slots
        self._bucket_points = self._bucket_table(np.arange(self._points.size)).astype(np.int32)

    def _bucket_table(self, per_point: np.ndarray) -> np.ndarray:
        """``per_point`` of each of 2**_BUCKET_BITS equal arcs of the ring, -1 where it differs inside the arc.

        Most keys are then placed by one gather on their hash's top bits instead of a binary
        search over every point (a branchy ~50 ns per key); keys in mixed arcs take the search.
        """
        shift = np.uint64(64 - _BUCKET_BITS)
        starts = np.arange(1 << _BUCKET_BITS, dtype=np.uint64) << shift
        ends = starts | ((np.uint64(1) << shift) - np.uint64(1))
        first = np.searchsorted(self._points, starts, side="left")  # == size: wraps to point 0
        last = np.searchsorted(self._points, ends, side="left")
        values = np.append(per_point, per_point[0])  # point ``size`` is point 0 again
        changes = np.concatenate([[0], np.cumsum(values[1:] != values[:-1])])
        return np.where(changes[first] == changes[last], values[first], -1).astype(np.int64)

    @property
    def num_shards(self) -> int:
        """How many shards are on the ring."""
        return int(self.shard_ids.size)

    @property
    def num_points(self) -> int:
        """How many virtual nodes the ring has (shards x vnodes)."""
        return int(self._points.size)

    def _slot_of(self, keys: np.ndarray, small: bool = False) -> np.ndarray:
        """The owner of every key as an index into ``shard_ids`` (same shape; int64, or int8 if ``small``)."""
        return self._lookup(keys, self._small_bucket_slots if small else self._bucket_slots, self._slots)

    def point_of(self, keys: np.ndarray) -> np.ndarray:
        """The ring point (virtual node index, int32) each key belongs to (same shape)."""
        return self._lookup(keys, self._bucket_points, None)

    def preference_slots(self, replication: int) -> np.ndarray:
        """Each point's preference list: ``[num_points, R]`` indices into ``shard_ids``, primary first.

        Column 0 is the point's owner; the next columns are the next distinct shards
        met walking clockwise from it. ``R`` is capped at the number of shards.
        """
        replication = max(1, min(int(replication), self.num_shards))
        size = self.num_points
        table = np.full((size, replication), -1, dtype=np.int64)
        table[:, 0] = self._slots
        filled = np.ones(size, dtype=np.int64)
        rows = np.arange(size)
        for step in range(1, size):  # a few steps: with vnodes, other shards follow within a handful of points
            open_rows = rows[filled < replication]
            if not open_rows.size:
                break
            candidate = self._slots[(open_rows + step) % size]
            new = ~(table[open_rows] == candidate[:, None]).any(axis=1)
            table[open_rows[new], filled[open_rows[new]]] = candidate[new]
            filled[open_rows[new]] += 1
        return table

    def _lookup(self, keys: np.ndarray, table: np.ndarray, per_point: np.ndarray | None) -> np.ndarray:
        """``per_point`` (``None``: the point index itself) of every key's ring point, via the bucket ``table``.

        Hashes in chunks into two small reused buffers: no hash-sized temporaries,
        whose fresh pages cost more than the arithmetic.
        """
        keys = np.asarray(keys)
        flat = np.ascontiguousarray(keys.reshape(-1), dtype=np.uint64)
        slots = np.empty(flat.size, dtype=table.dtype)
        hashed = np.empty(min(flat.size, _CHUNK), dtype=np.uint64)
        scratch = np.empty_like(hashed)
        shift = np.uint64(64 - _BUCKET_BITS)
        for start in range(0, flat.size, _CHUNK):
            stop = min(start + _CHUNK, flat.size)
            h = hashed[: stop - start]
            _mix64_into(flat[start:stop], h, scratch[: stop - start])
            np.right_shift(h, shift, out=h)
            np.take(table, h.view(np.int64), out=slots[start:stop], mode="clip")  # indices < table.size
        shared = np.flatnonzero(slots < 0)
        if shared.size:
            index = np.searchsorted(self._points, mix64(flat[shared]), side="left")
            index[index == self._points.size] = 0
            slots[shared] = index if per_point is None else per_point[index]
        return slots.reshape(keys.shape)

    def shard_of(self, keys: np.ndarray) -> np.ndarray:
        """The owning shard id of every key (int64 array, same shape)."""
        keys = np.asarray(keys)
        if self.shard_ids.size == 1:
            return np.full(keys.shape, self.shard_ids[0], dtype=np.int64)
        slots = self._slot_of(keys)
        return slots if self._ids_are_slots else self.shard_ids[slots]

    def split(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group keys by shard, preserving their order inside each shard.

        Returns:
            ``(order, bounds)``: ``keys[order[bounds[i]:bounds[i+1]]]`` are the
            keys of ``shard_ids[i]``.
        """
        if self.shard_ids.size <= _SPLIT_BY_MASKS:
            parts = self.positions_by_shard(keys)
            order = np.concatenate(parts) if len(parts) > 1 else parts[0]
            counts = np.array([part.size for part in parts])
        else:  # a stable sort of small integers is a radix sort in numpy
            slot = self._slot_of(keys, small=True).reshape(-1)
            order = np.argsort(slot.astype(np.int16 if self.shard_ids.size < 1 << 15 else np.int64), kind="stable")
            counts = np.bincount(slot.astype(np.intp), minlength=self.num_shards)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return order, bounds

    def positions_by_shard(self, keys: np.ndarray) -> list[np.ndarray]:
        """For each of ``shard_ids`` in turn, the positions of its keys in (flattened) ``keys``, ascending."""
        count = np.asarray(keys).size
        if self.shard_ids.size == 1:
            return [np.arange(count)]
        slot = self._slot_of(keys, small=True).reshape(-1)
        if self.shard_ids.size <= _SPLIT_BY_MASKS:  # a pass per shard beats a stable sort of the slots
            return [np.flatnonzero(slot == index) for index in range(self.shard_ids.size)]
        order, bounds = self.split(keys)
        return [order[bounds[i] : bounds[i + 1]] for i in range(self.shard_ids.size)]

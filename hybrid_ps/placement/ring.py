"""Key -> shard mapping: a consistent-hash ring with virtual nodes, shared by client and server.

Each shard owns ``vnodes`` points on a 64-bit ring. A key is hashed onto the
ring (``mix64``, so sequential block ids spread as well as hashed feature ids)
and belongs to the first point at or after it, wrapping around. Adding or
removing a shard moves only the ranges next to its points: ~1/S of the keys.
With replication ``R`` a key's range also lives on the next ``R - 1`` distinct
shards met walking on from that point (its preference list: primary first).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import ConfigError
from ._ring_kernels import group_by_owner, points_of

__all__ = ["mix64", "HashRing"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_BUCKET_BITS = 16  # the point table covers the ring in 2**16 equal arcs (256 KiB as int32)


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
        self._bucket_points = self._bucket_table(np.arange(self._points.size)).astype(np.int32)
        self._point_owner = self._slots.astype(np.int32).reshape(-1, 1)  # for group_by_owner

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

    def _slot_of(self, keys: np.ndarray) -> np.ndarray:
        """The owner of every key as an index into ``shard_ids`` (same shape, int64)."""
        return self._slots[self.point_of(keys)]

    def point_of(self, keys: np.ndarray) -> np.ndarray:
        """The ring point (virtual node index, int32) each key belongs to (same shape; compiled)."""
        keys = np.asarray(keys)
        flat = np.ascontiguousarray(keys.reshape(-1), dtype=np.uint64)
        return points_of(flat, self._bucket_points, self._points).reshape(keys.shape)

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

    def shard_of(self, keys: np.ndarray) -> np.ndarray:
        """The owning shard id of every key (int64 array, same shape)."""
        keys = np.asarray(keys)
        if self.shard_ids.size == 1:
            return np.full(keys.shape, self.shard_ids[0], dtype=np.int64)
        slots = self._slot_of(keys)
        return slots if self._ids_are_slots else self.shard_ids[slots]

    def split(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group keys by shard, preserving their order inside each shard (one compiled counting sort).

        Returns:
            ``(order, bounds)``: ``keys[order[bounds[i]:bounds[i+1]]]`` are the
            keys of ``shard_ids[i]``.
        """
        if self.shard_ids.size == 1:
            count = np.asarray(keys).size
            return np.arange(count), np.array([0, count])
        return group_by_owner(self.point_of(np.asarray(keys).reshape(-1)), self._point_owner, self.num_shards)

    def positions_by_shard(self, keys: np.ndarray) -> list[np.ndarray]:
        """For each of ``shard_ids`` in turn, the positions of its keys in (flattened) ``keys``, ascending."""
        order, bounds = self.split(keys)
        return [order[bounds[i] : bounds[i + 1]] for i in range(self.shard_ids.size)]

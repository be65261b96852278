"""Key -> shard mapping: a consistent-hash ring with virtual nodes, shared by client and server.

Each shard owns ``vnodes`` points on a 64-bit ring. A key is hashed onto the
ring (``mix64``, so sequential block ids spread as well as hashed feature ids)
and belongs to the first point at or after it, wrapping around. Adding or
removing a shard moves only the ranges next to its points: ~1/S of the keys.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .errors import ConfigError

__all__ = ["mix64", "HashRing"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised: a bijective uint64 -> uint64 hash."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


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

    @property
    def num_shards(self) -> int:
        """How many shards are on the ring."""
        return int(self.shard_ids.size)

    def shard_of(self, keys: np.ndarray) -> np.ndarray:
        """The owning shard id of every key (int64 array, same shape)."""
        positions = mix64(keys)
        index = np.searchsorted(self._points, positions, side="left")
        index[index == self._points.size] = 0
        return self._owners[index]

    def split(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group keys by shard, preserving their order inside each shard.

        Returns:
            ``(order, bounds)``: ``keys[order[bounds[i]:bounds[i+1]]]`` are the
            keys of ``shard_ids[i]``.
        """
        owners = self.shard_of(keys)
        slot = np.searchsorted(self.shard_ids, owners)
        order = np.argsort(slot, kind="stable")
        counts = np.bincount(slot, minlength=self.num_shards)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return order, bounds

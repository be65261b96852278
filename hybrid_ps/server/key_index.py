"""A vectorised uint64 key -> slot index: open addressing with linear probing, in numpy.

``np.searchsorted`` over millions of sorted keys manages ~1 M random lookups/s;
this table resolves a whole batch of keys per probe round (a handful of rounds
at load <= 0.5), all numpy gathers. The table stores only int32 slots (-1 for
empty); the key of a slot lives in ``slot_keys``, which the shard needs anyway.
"""

from __future__ import annotations

import numpy as np

from ..partition import mix64

__all__ = ["KeyIndex"]

_SALT = np.uint64(0xD6E8FEB86659FD93)  # decorrelates from the ring, which also hashes keys
_EMPTY = -1
_REBUILD_CHUNK = 1 << 20  # keys placed per round when the table grows


class KeyIndex:
    """Maps keys to dense slots ``0..len-1`` in insertion order.

    Args:
        capacity: initial number of keys before the first resize.
        max_load: table fill ratio that triggers doubling.
    """

    def __init__(self, capacity: int = 1 << 16, max_load: float = 0.5) -> None:
        self.max_load = max_load
        self.slot_keys = np.zeros(max(capacity, 16), dtype=np.uint64)
        self._size = 0
        self._table = np.full(self._table_size_for(capacity), _EMPTY, dtype=np.int32)

    def __len__(self) -> int:
        return self._size

    @property
    def keys(self) -> np.ndarray:
        """The keys held, in slot order (a view)."""
        return self.slot_keys[: self._size]

    def _table_size_for(self, count: int) -> int:
        size = 16
        while size * self.max_load < count:
            size <<= 1
        return size

    def _home(self, keys: np.ndarray) -> np.ndarray:
        mask = np.uint64(self._table.size - 1)
        return (mix64(keys ^ _SALT) & mask).astype(np.int64)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Slots of ``keys`` (int64), -1 where a key is absent.

        The first probe handles the whole batch with plain gathers and no boolean
        indexing; only keys whose home position holds another key probe further.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        position = self._home(keys)
        slots = self._table[position].astype(np.int64)
        occupied = slots != _EMPTY
        found = self.slot_keys[slots] == keys  # an empty home (-1) reads the last slot key: masked next
        found &= occupied
        result = np.where(found, slots, -1)
        pending = np.flatnonzero(occupied & ~found)
        position = position[pending]
        mask = self._table.size - 1
        while pending.size:
            position = (position + 1) & mask
            slots = self._table[position]
            occupied = slots != _EMPTY
            hit = occupied & (self.slot_keys[slots] == keys[pending])
            result[pending[hit]] = slots[hit]
            again = occupied & ~hit
            pending = pending[again]
            position = position[again]
        return result

    def insert(self, keys: np.ndarray) -> np.ndarray:
        """Add keys that are absent and unique; returns their new slots."""
        keys = np.asarray(keys, dtype=np.uint64)
        count = keys.size
        if self._size + count > self._table.size * self.max_load:
            self._rebuild(self._table_size_for(self._size + count))
        if self._size + count > self.slot_keys.size:
            grown = np.zeros(max(self._size + count, 2 * self.slot_keys.size), dtype=np.uint64)
            grown[: self._size] = self.keys
            self.slot_keys = grown
        slots = np.arange(self._size, self._size + count, dtype=np.int64)
        self.slot_keys[slots] = keys
        self._size += count
        self._place(slots, self._home(keys))
        return slots

    def lookup_or_insert(self, keys: np.ndarray) -> np.ndarray:
        """Slots of unique ``keys``, inserting the absent ones."""
        slots = self.lookup(keys)
        missing = slots < 0
        if missing.any():
            slots[missing] = self.insert(np.asarray(keys)[missing])
        return slots

    def _place(self, slots: np.ndarray, position: np.ndarray) -> None:
        """Write ``slots`` into the table from their home positions, probing linearly."""
        mask = self._table.size - 1
        pending = np.arange(slots.size)
        while pending.size:
            free = self._table[position] == _EMPTY
            claim = position[free]
            self._table[claim] = slots[pending[free]]  # colliding claims: one write wins
            won = np.zeros(pending.size, dtype=bool)
            won[free] = self._table[claim] == slots[pending[free]]
            pending = pending[~won]
            position = (position[~won] + 1) & mask

    def _rebuild(self, table_size: int) -> None:
        """A new table of ``table_size`` holding every key, built from ``slot_keys``.

        The old table is dropped first and keys are placed in chunks, so a rebuild
        never holds two tables or full-size temporaries at once (benchmarks/memory.py).
        """
        self._table = None
        self._table = np.full(table_size, _EMPTY, dtype=np.int32)
        for start in range(0, self._size, _REBUILD_CHUNK):
            stop = min(start + _REBUILD_CHUNK, self._size)
            self._place(np.arange(start, stop, dtype=np.int64), self._home(self.slot_keys[start:stop]))

"""One PS shard's data: keys, a slot per key, values and optimizer state in contiguous arrays."""

from __future__ import annotations

import numpy as np

from ..errors import NonFiniteError
from ..numerics import all_finite
from .key_index import KeyIndex
from .optimizers import Optimizer

__all__ = ["Shard", "grow_rows"]


def grow_rows(rows: np.ndarray, count: int) -> np.ndarray:
    """``rows`` with room for at least ``count`` rows (doubling; new rows are zero), or ``rows`` if it has it."""
    if count <= rows.shape[0]:
        return rows
    grown = np.zeros((max(count, 2 * rows.shape[0]), *rows.shape[1:]), dtype=rows.dtype)
    grown[: rows.shape[0]] = rows
    return grown


class Shard:
    """Values of width ``width`` per key, updated by a server-side optimizer.

    A key that was never pushed reads as zeros; a push inserts its keys. A key's
    value and optimizer state sit side by side in one row of one array, so a push
    fetches both with one random memory access per key (the shard is bound by
    memory latency, not arithmetic: see benchmarks/shard_apply.py).

    Args:
        width: values per key (1 for logistic regression).
        optimizer: the update rule for pushes.
        capacity: initial number of keys before arrays grow.
    """

    def __init__(self, width: int, optimizer: Optimizer, capacity: int = 1 << 16) -> None:
        self.width = width
        self.optimizer = optimizer
        self.index = KeyIndex(capacity)
        self._rows = np.zeros((capacity, width * (1 + len(optimizer.state_names))), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def values(self) -> np.ndarray:
        """``[capacity, width]`` float32 values by slot (a view)."""
        return self._rows[:, : self.width]

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The optimizer's ``[capacity, width]`` state arrays by name (views)."""
        return self._split(self._rows)

    def pull(self, keys: np.ndarray) -> np.ndarray:
        """Values of ``keys`` as a new ``[n, width]`` float32 array (zeros if unseen)."""
        slots = self.index.lookup(keys)
        found = slots >= 0
        if found.all():
            return np.ascontiguousarray(np.take(self._rows, slots, axis=0)[:, : self.width])
        out = np.zeros((slots.size, self.width), dtype=np.float32)
        out[found] = np.take(self._rows, slots[found], axis=0)[:, : self.width]
        return out

    def push(self, keys: np.ndarray, grads: np.ndarray) -> None:
        """Apply the optimizer to unique ``keys`` with ``grads`` of shape ``[n, width]``.

        Raises:
            NonFiniteError: the update would store a NaN or an infinity (float32 overflow);
                nothing is changed then.
        """
        slots = self.index.lookup_or_insert(keys)
        self._rows = grow_rows(self._rows, len(self.index))
        rows = np.take(self._rows, slots, axis=0)  # values and state of every touched key: one gather
        with np.errstate(over="ignore", invalid="ignore"):
            self.optimizer.apply(rows[:, : self.width], np.asarray(grads, dtype=np.float32), self._split(rows))
        if not all_finite(rows):
            bad = int(np.count_nonzero(~np.isfinite(rows).all(axis=1)))
            raise NonFiniteError(f"the {self.optimizer.name} update of {bad} of {keys.size} keys overflows float32 "
                                 "(NaN or Inf): push refused, no value changed")
        self._as_records(self._rows)[slots] = self._as_records(rows)  # a 1-D scatter: ~4x faster than rows

    def load(self, keys: np.ndarray, values: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """Add absent ``keys`` with their values and optimizer state (restoring a checkpoint)."""
        slots = self.index.insert(keys)
        self._rows = grow_rows(self._rows, len(self.index))
        self._rows[slots, : self.width] = values
        for name, array in self.state.items():
            array[slots] = state[name]

    def retain(self, keep: np.ndarray) -> None:
        """Keep only the keys where ``keep`` (a mask over ``export``'s order) is true (a shard giving up ranges)."""
        keys, values, state = self.export()
        kept = Shard(self.width, self.optimizer, capacity=max(int(keep.sum()), 16))
        kept.load(keys[keep], values[keep], {name: array[keep] for name, array in state.items()})
        self.index, self._rows = kept.index, kept._rows

    def export(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Keys, values and optimizer state of every held key, in slot order (views)."""
        count = len(self.index)
        return self.index.keys, self.values[:count], {name: a[:count] for name, a in self.state.items()}

    @staticmethod
    def _as_records(rows: np.ndarray) -> np.ndarray:
        """A C-contiguous ``[n, k]`` float32 array as ``n`` opaque records of ``4k`` bytes (a view)."""
        return rows.view(f"V{rows.shape[1] * rows.itemsize}").reshape(-1)

    def _split(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The state columns of ``rows`` (``[n, width * (1 + states)]``) by name, as views."""
        w = self.width
        return {name: rows[:, w * (i + 1) : w * (i + 2)] for i, name in enumerate(self.optimizer.state_names)}

"""One PS shard's data: keys, a slot per key, values and optimizer state in contiguous arrays."""

from __future__ import annotations

import numpy as np

from .key_index import KeyIndex
from .optimizers import Optimizer

__all__ = ["Shard"]


class Shard:
    """Values of width ``width`` per key, updated by a server-side optimizer.

    A key that was never pushed reads as zeros; a push inserts its keys.

    Args:
        width: values per key (1 for logistic regression).
        optimizer: the update rule for pushes.
        capacity: initial number of keys before arrays grow.
    """

    def __init__(self, width: int, optimizer: Optimizer, capacity: int = 1 << 16) -> None:
        self.width = width
        self.optimizer = optimizer
        self.index = KeyIndex(capacity)
        self.values = np.zeros((capacity, width), dtype=np.float32)
        self.state = {name: np.zeros_like(self.values) for name in optimizer.state_names}

    def __len__(self) -> int:
        return len(self.index)

    def pull(self, keys: np.ndarray) -> np.ndarray:
        """Values of ``keys`` as a new ``[n, width]`` float32 array (zeros if unseen)."""
        slots = self.index.lookup(keys)
        found = slots >= 0
        if found.all():
            return self.values[slots]
        out = np.zeros((slots.size, self.width), dtype=np.float32)
        out[found] = self.values[slots[found]]
        return out

    def push(self, keys: np.ndarray, grads: np.ndarray) -> None:
        """Apply the optimizer to unique ``keys`` with ``grads`` of shape ``[n, width]``."""
        slots = self.index.lookup_or_insert(keys)
        self._ensure_capacity(len(self.index))
        weights = self.values[slots]
        state = {name: array[slots] for name, array in self.state.items()}
        self.optimizer.apply(weights, np.asarray(grads, dtype=np.float32), state)
        self.values[slots] = weights
        for name, rows in state.items():
            self.state[name][slots] = rows

    def load(self, keys: np.ndarray, values: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """Add absent ``keys`` with their values and optimizer state (restoring a checkpoint)."""
        slots = self.index.insert(keys)
        self._ensure_capacity(len(self.index))
        self.values[slots] = values
        for name, array in self.state.items():
            array[slots] = state[name]

    def export(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Keys, values and optimizer state of every held key, in slot order (views)."""
        count = len(self.index)
        return self.index.keys, self.values[:count], {name: a[:count] for name, a in self.state.items()}

    def _ensure_capacity(self, count: int) -> None:
        capacity = self.values.shape[0]
        if count <= capacity:
            return
        new_capacity = max(count, 2 * capacity)
        self.values = _grown(self.values, new_capacity)
        self.state = {name: _grown(array, new_capacity) for name, array in self.state.items()}


def _grown(array: np.ndarray, rows: int) -> np.ndarray:
    grown = np.zeros((rows,) + array.shape[1:], dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown

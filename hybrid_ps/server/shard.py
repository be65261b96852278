"""One PS shard's data: a compiled key table (key, values and optimizer state in one slot) and its update rule."""

from __future__ import annotations

import numpy as np

from ..errors import NonFiniteError
from ..tables import KeyTable
from ..tables.optimizers import Optimizer
from .changed_keys import ChangedKeys

__all__ = ["Shard"]


class Shard:
    """Values of width ``width`` per key, updated by a server-side optimizer.

    A key that was never pushed reads as zeros; a push inserts its keys. A key,
    its values and its optimizer state share one slot of the table, so a push
    or a pull makes one random memory access per key (the floor of
    benchmarks/shard_apply.py).

    Args:
        width: values per key (1 for logistic regression).
        optimizer: the update rule for pushes.
        capacity: keys to make room for at once (the table grows by itself).
        track_changes: note the keys each change touches (``changed``: delta checkpoints write only those).
    """

    def __init__(self, width: int, optimizer: Optimizer, capacity: int = 1 << 16, *,
                 track_changes: bool = False) -> None:
        self.width = width
        self.optimizer = optimizer
        self._rule = optimizer.rule
        self.table = KeyTable(width, self.columns, capacity)
        self.changed = ChangedKeys() if track_changes else None

    def __len__(self) -> int:
        return len(self.table)

    def pull(self, keys: np.ndarray) -> np.ndarray:
        """Values of ``keys`` as a new ``[n, width]`` float32 array (zeros if unseen)."""
        return self.table.pull(_keys(keys))

    def push(self, keys: np.ndarray, grads: np.ndarray) -> None:
        """Apply the optimizer to unique ``keys`` with ``grads`` of shape ``[n, width]``.

        Raises:
            NonFiniteError: the update would store a NaN or an infinity (float32 overflow);
                nothing is changed then.
        """
        keys = _keys(keys)
        grads = np.ascontiguousarray(grads, dtype=np.float32).reshape(keys.size, self.width)
        bad = self.table.push(keys, grads, self._rule)
        if self.changed is not None and not bad:
            self.changed.note(keys)
        if bad:
            raise NonFiniteError(f"the {self.optimizer.name} update of {bad} of {keys.size} keys overflows float32 "
                                 "(NaN or Inf): push refused, no value changed")

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of ``keys`` is held (bool array)."""
        return self.table.contains(_keys(keys))

    def load(self, keys: np.ndarray, values: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """Set ``keys``' values and optimizer state, inserting them (restoring a checkpoint, moving ranges)."""
        rows = [np.asarray(values, dtype=np.float32).reshape(-1, self.width)]
        rows += [np.asarray(state[name], dtype=np.float32).reshape(-1, self.width)
                 for name in self.optimizer.state_names]
        keys = _keys(keys)
        self.table.assign(keys, np.ascontiguousarray(np.concatenate(rows, axis=1)))
        if self.changed is not None:
            self.changed.note(keys)

    def load_rows(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Set ``keys``' whole rows (values, then each optimizer state: ``rows``' layout), inserting them."""
        keys = _keys(keys)
        self.table.assign(keys, np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, self.columns))
        if self.changed is not None:
            self.changed.note(keys)

    @property
    def columns(self) -> int:
        """Floats in a key's row: its values and optimizer state."""
        return self.width * (1 + len(self.optimizer.state_names))

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys and whole rows of every held key (``load_rows``' layout)."""
        return self.table.export()

    def retain(self, keep: np.ndarray) -> None:
        """Keep only the keys where ``keep`` (a mask over ``export``'s order) is true (a shard giving up ranges)."""
        self.table.retain(keep)

    def export(self, keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Keys, values and optimizer state of every held key, in the table's order (``retain``'s mask order); or
        of ``keys`` only (sorted; zeros for a key not held)."""
        if keys is None:
            keys, rows = self.table.export()
        else:
            keys = _keys(keys)
            rows = self.table.pull(keys, self.columns)
        w = self.width
        state = {name: rows[:, w * (i + 1) : w * (i + 2)] for i, name in enumerate(self.optimizer.state_names)}
        return keys, rows[:, :w], state


def _keys(keys: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1)

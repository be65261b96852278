"""One PS shard's data: a compiled key table (key, values and optimizer state in one slot) and its update rule."""

from __future__ import annotations

import numpy as np

from ..errors import NonFiniteError
from ..tables import KeyTable
from ..tables.optimizers import Optimizer
from .changed_keys import ChangedKeys

__all__ = ["Shard", "STAMP"]

STAMP = "updated"
"""The name (in ``export``'s state, and in a checkpoint's ``state`` group) of each row's stamp: the clock of the
push that last updated it (uint32 ``[n, 1]``; a ``stamped`` shard, for feature eviction)."""
_MAX_STAMP = (1 << 32) - 1


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
        stamped: keep, after its optimizer state, each row's stamp (``STAMP``): the clock of its last push
            (``stale`` finds the rows not updated since a clock: feature eviction).
    """

    def __init__(self, width: int, optimizer: Optimizer, capacity: int = 1 << 16, *,
                 track_changes: bool = False, stamped: bool = False) -> None:
        self.width = width
        self.optimizer = optimizer
        self._rule = optimizer.rule
        self.stamped = stamped
        self.columns = width * (1 + len(optimizer.state_names)) + stamped
        """Floats in a key's row: its values, its optimizer state, its stamp (if ``stamped``)."""
        self.table = KeyTable(width, self.columns, capacity, stamped=stamped)
        self.changed = ChangedKeys() if track_changes else None
        self.version = 0
        """Changes so far (pushes, loads, removals): a cut may tell whether anything changed since the last."""

    def __len__(self) -> int:
        return len(self.table)

    def pull(self, keys: np.ndarray) -> np.ndarray:
        """Values of ``keys`` as a new ``[n, width]`` float32 array (zeros if unseen)."""
        return self.table.pull(_keys(keys))

    def push(self, keys: np.ndarray, grads: np.ndarray, clock: int = 0) -> None:
        """Apply the optimizer to unique ``keys`` with ``grads`` of shape ``[n, width]`` (the push of the step
        at ``clock``: a ``stamped`` shard notes it as the rows' last update).

        Raises:
            NonFiniteError: the update would store a NaN or an infinity (float32 overflow);
                nothing is changed then.
        """
        keys = _keys(keys)
        grads = np.ascontiguousarray(grads, dtype=np.float32).reshape(keys.size, self.width)
        bad = self.table.push(keys, grads, self._rule, min(max(clock, 0), _MAX_STAMP))
        if self.changed is not None and not bad:
            self.changed.note(keys)
        self.version += not bad
        if bad:
            raise NonFiniteError(f"the {self.optimizer.name} update of {bad} of {keys.size} keys overflows float32 "
                                 "(NaN or Inf): push refused, no value changed")

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of ``keys`` is held (bool array)."""
        return self.table.contains(_keys(keys))

    def load(self, keys: np.ndarray, values: np.ndarray, state: dict[str, np.ndarray], since: int = 0) -> None:
        """Set ``keys``' values and optimizer state, inserting them (restoring a checkpoint, moving ranges); a
        ``stamped`` shard takes their stamps from ``state[STAMP]``, or (a checkpoint of a shard that kept none)
        counts them as updated at clock ``since``."""
        keys = _keys(keys)
        rows = [np.asarray(values, dtype=np.float32).reshape(-1, self.width)]
        rows += [np.asarray(state[name], dtype=np.float32).reshape(-1, self.width)
                 for name in self.optimizer.state_names]
        if self.stamped:
            stamps = state.get(STAMP)
            stamps = np.full(keys.size, since, np.uint32) if stamps is None else np.asarray(stamps, np.uint32)
            rows.append(stamps.reshape(-1, 1).view(np.float32))
        self.table.assign(keys, np.ascontiguousarray(np.concatenate(rows, axis=1)))
        self._note_changed(keys)

    def load_rows(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Set ``keys``' whole rows (values, then each optimizer state: ``rows``' layout), inserting them."""
        keys = _keys(keys)
        self.table.assign(keys, np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, self.columns))
        self._note_changed(keys)

    def _note_changed(self, keys: np.ndarray) -> None:
        if self.changed is not None:
            self.changed.note(keys)
        self.version += 1

    def keys(self) -> np.ndarray:
        """Every held key, in the table's order (``export``'s, ``retain``'s mask order), without their rows."""
        return self.table.keys()

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys and whole rows of every held key (``load_rows``' layout)."""
        return self.table.export()

    def stale(self, before: int, below: float = -1.0) -> np.ndarray:
        """The keys not pushed since clock ``before`` (a ``stamped`` shard; 0: none), and, with ``below >= 0``, those
        whose every value is within ``±below``: the rows feature eviction takes out."""
        return self.table.stale(min(max(before, 0), _MAX_STAMP), below)

    def remove(self, keys: np.ndarray) -> int:
        """Take ``keys`` out (evicted: a push or a load brings them back as new); returns how many were held."""
        self.version += 1
        return self.table.remove(_keys(keys))

    def retain(self, keep: np.ndarray) -> None:
        """Keep only the keys where ``keep`` (a mask over ``export``'s order) is true (a shard giving up ranges)."""
        self.version += 1
        self.table.retain(keep)

    def export(self, keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Keys, values and optimizer state of every held key, in the table's order (``retain``'s mask order); or
        of ``keys`` only (sorted; zeros for a key not held). A ``stamped`` shard adds the stamps (``STAMP``) to
        the state."""
        if keys is None:
            keys, rows = self.table.export()
        else:
            keys = _keys(keys)
            rows = self.table.pull(keys, self.columns)
        w = self.width
        state = {name: rows[:, w * (i + 1) : w * (i + 2)] for i, name in enumerate(self.optimizer.state_names)}
        if self.stamped:
            state[STAMP] = np.ascontiguousarray(rows[:, -1:]).view(np.uint32)
        return keys, rows[:, :w], state


def _keys(keys: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1)

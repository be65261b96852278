"""The keys a shard changed since its last checkpoint cut: what a delta checkpoint writes."""

from __future__ import annotations

import numpy as np

from ..tables import KeyTable

__all__ = ["ChangedKeys"]


class ChangedKeys:
    """Keys noted as changed (pushed, loaded, filled) since the last ``take``: a set in a compiled key table, so
    noting a key costs one hash insert (no sort, no growing list)."""

    def __init__(self) -> None:
        self._table = KeyTable(1, 1, 1 << 16)
        self._zeros = np.zeros((1 << 16, 1), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._table)

    def note(self, keys: np.ndarray) -> None:
        """``keys`` (uint64, contiguous) changed."""
        if keys.size > self._zeros.shape[0]:
            self._zeros = np.zeros((keys.size, 1), dtype=np.float32)
        self._table.assign(keys, self._zeros[: keys.size])

    def take(self) -> np.ndarray:
        """The distinct keys changed since the last ``take`` (sorted); starts afresh."""
        keys = np.sort(self._table.keys())
        self._table = KeyTable(1, 1, 1 << 16)
        return keys

"""What a leader pushes: filters that hold small updates back (error feedback) and lossy value encodings.

One push of sorted ``keys`` with mean gradients ``g`` and the weights ``w`` pulled for them:

1. ``owed = residual[keys] + g``: everything this leader has not sent yet for those keys;
2. significantly-modified filter (``comm.filter_threshold``): send an entry only if
   ``|owed| >= threshold`` (or, with ``comm.filter_relative``, ``>= threshold * |w|``);
3. KKT filter (``comm.kkt``, L1 regularisation): hold back an entry while ``w == 0`` and
   ``|owed| <= l1``, the band in which the proximal step keeps the weight at zero;
4. value encoding (``comm.value_encoding``): float16, bfloat16 or float8 on the wire;
5. ``residual[keys] = owed - sent``: held-back entries wait in full, sent ones keep their
   rounding error (error feedback), so nothing is lost for good: it goes with a later push
   of the same key, or with ``flush`` (before every checkpoint cut and at the end).

The sums telescope: gradients in = values pushed + residual left, exactly up to float addition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..protocol.wire import decode_values, encode_values
from ..tables import KeyTable

__all__ = ["ResidualStore", "PushFilter", "FilterStats"]


class ResidualStore:
    """Per key, what a leader still owes the PS: ``[width]`` float32 rows in a compiled key table."""

    def __init__(self, width: int, capacity: int = 1 << 14) -> None:
        self.width = width
        self.table = KeyTable(width, width, capacity)

    def __len__(self) -> int:
        return len(self.table)

    def take(self, keys: np.ndarray) -> np.ndarray:
        """The residual of ``keys`` (zeros where none), as a new ``[n, width]`` array."""
        return self.table.pull(np.ascontiguousarray(keys, dtype=np.uint64))

    def put(self, keys: np.ndarray, residual: np.ndarray) -> None:
        """Set the residual of ``keys`` (inserting new keys)."""
        self.table.assign(np.ascontiguousarray(keys, dtype=np.uint64),
                          np.ascontiguousarray(residual, dtype=np.float32).reshape(-1, self.width))

    def drain(self) -> tuple[np.ndarray, np.ndarray]:
        """Every key with a nonzero residual (sorted) and its residual; the store is empty afterwards."""
        keys, rows = self.table.export()
        owed = np.flatnonzero(np.any(rows != 0, axis=1))
        order = owed[np.argsort(keys[owed])]
        self.table.clear()
        return keys[order], rows[order]

    def total(self) -> np.ndarray:
        """The sum of every residual row (``[width]``, float64): what is owed in all."""
        return self.table.export()[1].sum(axis=0, dtype=np.float64)


@dataclass
class FilterStats:
    """Entries and logical bytes (keys + values, before replication) a filter saw and let through."""

    entries_in: int = 0
    entries_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class PushFilter:
    """The leader's push pipeline (see the module docstring); with every setting off it passes pushes through.

    Args:
        width: values per key.
        threshold: significantly-modified threshold (0 = off).
        relative: compare ``|owed|`` with ``threshold * |w|`` instead of ``threshold``.
        kkt_l1: the L1 strength for the KKT filter (0 = off).
        encoding: ``float32``, ``float16``, ``bfloat16`` or ``float8`` (see ``wire.encode_values``).
    """

    def __init__(self, width: int, threshold: float = 0.0, relative: bool = False, kkt_l1: float = 0.0,
                 encoding: str = "float32") -> None:
        self.width = width
        self.threshold = threshold
        self.relative = relative
        self.kkt_l1 = kkt_l1
        self.encoding = encoding
        self.stats = FilterStats()
        self.residual = ResidualStore(width) if self.active else None

    @property
    def active(self) -> bool:
        """Whether anything is held back or rounded (else pushes go through untouched)."""
        return self.threshold > 0 or self.kkt_l1 > 0 or self.encoding != "float32"

    def apply(self, keys: np.ndarray, grads: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys and wire-encoded values to push now for ``grads`` (``[n, width]``) of sorted ``keys``."""
        grads = np.asarray(grads, dtype=np.float32).reshape(keys.size, self.width)
        self._count_in(keys.size)
        if self.residual is None:  # not active (see __init__)
            self._count_out(keys.size, grads.dtype.itemsize)
            return keys, grads
        owed = self.residual.take(keys)
        owed += grads
        send = self._significant(owed, np.asarray(weights, dtype=np.float32).reshape(keys.size, self.width))
        sent_keys, encoded = keys[send], encode_values(owed[send], self.encoding)
        owed[send] -= decode_values(encoded)  # what rounding lost stays owed
        self.residual.put(keys, owed)
        self._count_out(sent_keys.size, encoded.dtype.itemsize)
        return sent_keys, encoded

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        """Everything still owed, as float32 keys and values to push (exact: no encoding)."""
        if self.residual is None:
            return np.zeros(0, dtype=np.uint64), np.zeros((0, self.width), dtype=np.float32)
        keys, values = self.residual.drain()
        self._count_out(keys.size, 4)
        return keys, values

    def _significant(self, owed: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Which rows to send: any of their values passes both filters."""
        size = np.abs(owed)
        send = np.ones(owed.shape, dtype=bool)
        if self.threshold > 0:
            send &= size >= (self.threshold * np.abs(weights) if self.relative else self.threshold)
        if self.kkt_l1 > 0:
            send &= ~((weights == 0) & (size <= self.kkt_l1))
        return np.any(send, axis=1)

    def _count_in(self, entries: int) -> None:
        self.stats.entries_in += entries
        self.stats.bytes_in += entries * (8 + 4 * self.width)

    def _count_out(self, entries: int, itemsize: int) -> None:
        self.stats.entries_out += entries
        self.stats.bytes_out += entries * (8 + itemsize * self.width)

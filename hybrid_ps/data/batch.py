"""A minibatch of sparse rows in CSR form, the unit every data source yields."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["Batch", "rebatch"]


@dataclass(frozen=True)
class Batch:
    """Rows ``i`` are ``keys[indptr[i]:indptr[i+1]]`` with ``values`` alongside.

    Attributes:
        labels: float32 ``[n]``, each 0.0 or 1.0.
        indptr: int64 ``[n + 1]``, row offsets into ``keys``/``values``.
        keys: uint64 ``[nnz]`` feature ids (hashed ids or libsvm indices);
            a key may repeat inside a row (its values then add up).
        values: float32 ``[nnz]`` feature values.
    """

    labels: np.ndarray
    indptr: np.ndarray
    keys: np.ndarray
    values: np.ndarray

    @property
    def num_rows(self) -> int:
        """Number of rows in the batch."""
        return int(self.labels.shape[0])

    @property
    def row_ids(self) -> np.ndarray:
        """int64 ``[nnz]``: the row each nonzero belongs to."""
        return np.repeat(np.arange(self.num_rows, dtype=np.int64), np.diff(self.indptr))

    def rows(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` as a new batch (views, no copy)."""
        lo, hi = self.indptr[start], self.indptr[stop]
        return Batch(
            labels=self.labels[start:stop],
            indptr=self.indptr[start : stop + 1] - lo,
            keys=self.keys[lo:hi],
            values=self.values[lo:hi],
        )

    @staticmethod
    def empty() -> Batch:
        """A batch with no rows (a rank whose data shard is exhausted)."""
        return Batch(
            labels=np.zeros(0, np.float32),
            indptr=np.zeros(1, np.int64),
            keys=np.zeros(0, np.uint64),
            values=np.zeros(0, np.float32),
        )

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        """Join batches row-wise into one batch."""
        if not batches:
            return Batch.empty()
        sizes = np.array([b.keys.shape[0] for b in batches], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        indptr = np.concatenate(
            [batches[0].indptr[:1]] + [b.indptr[1:] + off for b, off in zip(batches, offsets, strict=True)]
        )
        return Batch(
            labels=np.concatenate([b.labels for b in batches]).astype(np.float32, copy=False),
            indptr=indptr.astype(np.int64, copy=False),
            keys=np.concatenate([b.keys for b in batches]).astype(np.uint64, copy=False),
            values=np.concatenate([b.values for b in batches]).astype(np.float32, copy=False),
        )


def rebatch(pieces: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Re-cut a stream of row pieces (chunks, blocks) into batches of ``batch_size`` rows.

    Every batch has exactly ``batch_size`` rows except the last, which holds
    what is left; empty pieces are skipped. A batch inside one piece is a view
    of it; only a batch that spans pieces is copied, and only its own rows.
    """
    pending: list[Batch] = []  # the start of the next batch, from earlier pieces
    held = 0
    for piece in pieces:
        rows = piece.num_rows
        if rows == 0:
            continue
        start = 0
        if held:
            start = min(batch_size - held, rows)
            pending.append(piece.rows(0, start))
            held += start
            if held < batch_size:
                continue
            yield Batch.concat(pending)
            pending, held = [], 0
        whole = start + (rows - start) // batch_size * batch_size
        for first in range(start, whole, batch_size):
            yield piece.rows(first, first + batch_size)
        if whole < rows:
            pending, held = [piece.rows(whole, rows)], rows - whole
    if held:
        yield Batch.concat(pending) if len(pending) > 1 else pending[0]

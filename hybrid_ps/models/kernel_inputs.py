"""The arrays the compiled row loops (``_kernels``) take, from a prepared batch and the pulled rows (no copies when
the arrays already have the kernels' types, as a ``Batch`` and the PS's rows do)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .base import BIAS_KEY, PreparedBatch

__all__ = ["CsrArrays", "csr_arrays", "float_rows", "bias_index"]


class CsrArrays(NamedTuple):
    """A batch as the kernels read it (all C-contiguous)."""

    indptr: np.ndarray
    """int64 ``[rows + 1]``."""
    positions: np.ndarray
    """int32 or int64 ``[nnz]``: each nonzero's index in the key set."""
    values: np.ndarray
    """float32 ``[nnz]``."""
    labels: np.ndarray
    """float32 ``[rows]``."""


def csr_arrays(prepared: PreparedBatch, keys: np.ndarray) -> CsrArrays:
    """``prepared``'s rows, with each nonzero's position in ``keys`` (see ``PreparedBatch.positions_in``)."""
    rows = prepared.batch
    positions = prepared.positions_in(keys)
    if positions.dtype not in (np.int32, np.int64):
        positions = positions.astype(np.int64)
    return CsrArrays(np.ascontiguousarray(rows.indptr, dtype=np.int64), np.ascontiguousarray(positions),
                     np.ascontiguousarray(rows.values, dtype=np.float32),
                     np.ascontiguousarray(rows.labels, dtype=np.float32))


def float_rows(stored: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``stored`` as a C-contiguous float32 or float64 array of ``shape`` (float64 if it is neither)."""
    rows = np.asarray(stored)
    if rows.dtype not in (np.float32, np.float64):
        rows = rows.astype(np.float64)
    return np.ascontiguousarray(rows).reshape(shape)


def bias_index(keys: np.ndarray) -> int:
    """The bias row's index in ``keys`` (the last, if it is ``BIAS_KEY``), or -1."""
    return keys.size - 1 if keys.size and keys[-1] == BIAS_KEY else -1

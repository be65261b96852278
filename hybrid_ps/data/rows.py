"""Parsed rows of one chunk of text, and what every line parser shares: the bad-line error and its excerpt."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .batch import Batch

__all__ = ["Rows", "BadLine", "excerpt", "empty_rows", "concat_rows", "every_nth_row", "as_batch", "chunk_parser"]

_EXCERPT_CHARS = 60


class Rows(NamedTuple):
    """Parsed rows: like a ``Batch``, with per-row counts instead of offsets."""

    labels: np.ndarray  # float32 [n], 0.0 or 1.0
    counts: np.ndarray  # int64 [n], nonzeros per row
    keys: np.ndarray  # uint64 [nnz]
    values: np.ndarray  # float32 [nnz]


class BadLine(Exception):
    """A malformed line at ``line`` (0-based, counted within the parsed text)."""

    def __init__(self, line: int, what: str, excerpt: bytes) -> None:
        super().__init__(what)
        self.line = line
        self.what = what
        self.excerpt = excerpt


def chunk_parser(compiled: Callable[[bytes | memoryview], tuple | None],
                 reference: Callable[[bytes], Rows]) -> Callable[[bytes | memoryview], Rows]:
    """A parser of whole lines (ending with a newline): the compiled parser's rows, or where it declines the
    chunk, the reference's (which defines what is accepted and raises ``BadLine`` for the first bad line)."""

    def parse(text: bytes | memoryview) -> Rows:
        parsed = compiled(text)
        return Rows(*parsed) if parsed is not None else reference(bytes(text))

    return parse


def excerpt(text: bytes) -> str:
    """A short, printable, quoted excerpt of a token or line (bytes that are not UTF-8 shown as ``\\xff``)."""
    try:
        shown = text.decode("utf-8")
    except UnicodeDecodeError:
        cut = text[:_EXCERPT_CHARS] + (b"..." if len(text) > _EXCERPT_CHARS else b"")
        return repr(cut)[1:] + " (not UTF-8 text)"
    if len(shown) > _EXCERPT_CHARS:
        shown = shown[:_EXCERPT_CHARS] + "..."
    return repr(shown)


def empty_rows() -> Rows:
    return Rows(np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.float32))


def concat_rows(parts: list[Rows]) -> Rows:
    if not parts:
        return empty_rows()
    if len(parts) == 1:
        return parts[0]
    return Rows(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def every_nth_row(rows: Rows, first: int, stride: int) -> Rows:
    """Rows ``first, first + stride, ...`` of ``rows``."""
    if stride == 1 and first == 0:
        return rows
    indptr = np.zeros(rows.counts.size + 1, dtype=np.int64)
    np.cumsum(rows.counts, out=indptr[1:])
    picked = np.arange(first, rows.counts.size, stride)
    starts, counts = indptr[picked], rows.counts[picked]
    positions = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts) + np.arange(counts.sum())
    return Rows(rows.labels[picked], counts, rows.keys[positions], rows.values[positions])


def as_batch(rows: Rows) -> Batch:
    """The rows as a batch (the arrays themselves, and row offsets from the counts)."""
    indptr = np.zeros(rows.counts.size + 1, dtype=np.int64)
    np.cumsum(rows.counts, out=indptr[1:])
    return Batch(labels=rows.labels, indptr=indptr, keys=rows.keys, values=rows.values)

"""A libsvm/svmlight reader: each rank streams only its own byte range, parsed by compiled code per chunk.

Format: one row a line, ``label idx:value idx:value ... [# comment]``. Labels
are 0/1 or -1/+1 (-1 becomes 0); ``idx`` is a non-negative integer used as the
key as is (not hashed; ``2**64 - 1`` is reserved for the model's bias);
``qid:N`` tokens and comments are ignored, blank lines are skipped.

Sharding: rank ``r`` of ``R`` owns bytes ``[size * r // R, size * (r + 1) // R)``
and every line whose first byte lies there: a rank starting mid-line skips to
the next line, a rank reads past its end to finish its last line. The ranks'
rows, concatenated in rank order, are the file's rows in order.

Parsing, per chunk of whole lines (``chunk_bytes`` at a time, so memory stays
constant): the compiled parser (``_libsvm_parse``, one pass in C without the
GIL: exact decimal conversion, ``strtod`` for the rare long or far-out number)
takes a chunk it can parse exactly as the Python line parser does and declines
anything else. A declined chunk (anything unusual, or an error) is parsed again
line by line in Python: that parser defines what is accepted, and names the bad
line with its line number in the whole file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError, DataError
from ._libsvm_parse import parse_chunk
from .batch import Batch, rebatch

__all__ = ["LibsvmShard", "read_libsvm"]

_MAX_INDEX = 2**64 - 2  # 2**64 - 1 is the model's bias key
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_EXCERPT_CHARS = 60


class _Rows(NamedTuple):
    """Parsed rows of one chunk: like a ``Batch``, with per-row counts instead of offsets."""

    labels: np.ndarray  # float32 [n], 0.0 or 1.0
    counts: np.ndarray  # int64 [n], nonzeros per row
    keys: np.ndarray  # uint64 [nnz]
    values: np.ndarray  # float32 [nnz]


class _BadLine(Exception):
    """A malformed line at ``line`` (0-based, counted within the parsed text)."""

    def __init__(self, line: int, what: str, excerpt: bytes) -> None:
        super().__init__(what)
        self.line = line
        self.what = what
        self.excerpt = excerpt


def _empty_rows() -> _Rows:
    return _Rows(
        np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.float32)
    )


def _concat_rows(parts: list[_Rows]) -> _Rows:
    if len(parts) == 1:
        return parts[0]
    return _Rows(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def _excerpt(text: bytes) -> str:
    """A short, printable, quoted excerpt of a token or line (bytes that are not UTF-8 shown as ``\\xff``)."""
    try:
        shown = text.decode("utf-8")
    except UnicodeDecodeError:
        cut = text[:_EXCERPT_CHARS] + (b"..." if len(text) > _EXCERPT_CHARS else b"")
        return repr(cut)[1:] + " (not UTF-8 text)"
    if len(shown) > _EXCERPT_CHARS:
        shown = shown[:_EXCERPT_CHARS] + "..."
    return repr(shown)


def _parse_fast(text: bytes | memoryview) -> _Rows | None:
    """Parse whole lines with the compiled parser; ``None`` if any line is unusual (the caller then goes slow).

    Accepts exactly what ``_parse_slow`` accepts, with bit-identical rows.

    Args:
        text: whole lines, ending with a newline.
    """
    parsed = parse_chunk(text)
    return None if parsed is None else _Rows(*parsed)


def _parse_label(token: bytes) -> float:
    label = float(token.replace(b"_", b"x"))  # ValueError if not a number; float() would accept 1_0
    if label not in (-1.0, 0.0, 1.0):
        raise ValueError(token)
    return 1.0 if label > 0 else 0.0


def _parse_slow(text: bytes) -> _Rows:
    """Parse whole lines one by one in Python: the reference semantics, and the error finder.

    Args:
        text: whole lines, ending with a newline.

    Raises:
        _BadLine: the first malformed line, numbered from 0 within ``text``.
    """
    labels: list[float] = []
    counts: list[int] = []
    keys: list[int] = []
    values: list[float] = []
    for number, line in enumerate(text.split(b"\n")):
        tokens = line.split(b"#", 1)[0].split()
        if not tokens:
            continue
        try:
            labels.append(_parse_label(tokens[0]))
        except ValueError:
            raise _BadLine(number, "label must be 0/1 or -1/+1", tokens[0]) from None
        count = 0
        for token in tokens[1:]:
            index, colon, value = token.partition(b":")
            if not colon:
                raise _BadLine(number, "expected index:value", token)
            if index == b"qid":
                continue
            if not index.isdigit() or int(index) > _MAX_INDEX:
                raise _BadLine(number, "index must be an integer in [0, 2**64 - 2]", token)
            try:
                parsed = float(value.replace(b"_", b"x"))  # float() would accept 1_000
            except ValueError:
                raise _BadLine(number, "value is not a number", token) from None
            if not abs(parsed) <= _FLOAT32_MAX:
                raise _BadLine(number, "value is not a finite float32 number", token)
            keys.append(int(index))
            values.append(parsed)
            count += 1
        counts.append(count)
    return _Rows(
        labels=np.array(labels, dtype=np.float32),
        counts=np.array(counts, dtype=np.int64),
        keys=np.array(keys, dtype=np.uint64),
        values=np.array(values, dtype=np.float32),
    )


class LibsvmShard:
    """One rank's share of a libsvm/svmlight file, read chunk by chunk in constant memory.

    Args:
        path: the file.
        rank: this rank among the readers, in ``[0, num_ranks)``.
        num_ranks: how many ranks split the file.
        chunk_bytes: bytes read at a time (a line longer than that is still read whole).

    Raises:
        DataError: the file is missing, unreadable, not a regular file or empty.
        ConfigError: ``rank``, ``num_ranks`` or ``chunk_bytes`` is out of range.
    """

    def __init__(
        self, path: str | os.PathLike, rank: int = 0, num_ranks: int = 1, chunk_bytes: int = 4 << 20
    ) -> None:
        if not 0 <= rank < num_ranks:
            raise ConfigError(f"rank {rank} out of range for {num_ranks} data ranks")
        if chunk_bytes < 1:
            raise ConfigError(f"chunk_bytes must be > 0, got {chunk_bytes!r}")
        self.path = os.fspath(path)
        self.rank = rank
        self.num_ranks = num_ranks
        self.chunk_bytes = chunk_bytes
        try:
            info = os.stat(self.path)
            if stat.S_ISREG(info.st_mode):
                with open(self.path, "rb"):
                    pass
        except FileNotFoundError:
            raise DataError(f"{self.path}: no such file") from None
        except OSError as e:
            raise DataError(f"{self.path}: cannot read: {e.strerror or e}") from e
        if not stat.S_ISREG(info.st_mode):
            what = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, pipe or socket"
            raise DataError(f"{self.path}: not a regular file ({what})")
        if info.st_size == 0:
            raise DataError(f"{self.path}: file is empty")
        self.size = info.st_size
        self.start = self.size * rank // num_ranks
        self.end = self.size * (rank + 1) // num_ranks
        self._first_line: int | None = None

    def __repr__(self) -> str:
        return f"LibsvmShard({self.path!r}, rank={self.rank}, num_ranks={self.num_ranks})"

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """One pass over this rank's lines.

        Args:
            batch_size: rows per batch.

        Yields:
            Batches of exactly ``batch_size`` rows, the last one possibly shorter.

        Raises:
            DataError: a malformed line (the message gives ``path:line`` in the whole file).
            ConfigError: ``batch_size`` is not positive.
        """
        if batch_size < 1:
            raise ConfigError(f"train.batch_size must be > 0, got {batch_size!r}")
        return rebatch((_batch(rows) for rows in self._parsed()), batch_size)

    def read_all(self) -> Batch:
        """All of this rank's rows in one batch (one concatenation at the end).

        Raises:
            DataError: a malformed line.
        """
        return _batch(_concat_rows([r for r in self._parsed() if r.labels.size] or [_empty_rows()]))

    def _parsed(self) -> Iterator[_Rows]:
        """This rank's rows, one parsed chunk at a time."""
        offset = self._first_line_start()  # file offset of the current chunk
        for text in self._chunks():
            rows = _parse_fast(text)
            if rows is None:
                try:
                    rows = _parse_slow(bytes(text))
                except _BadLine as bad:
                    line = self._lines_before(offset) + bad.line + 1
                    raise DataError(f"{self.path}:{line}: {bad.what}: {_excerpt(bad.excerpt)}") from None
            offset += len(text)
            yield rows

    def _first_line_start(self) -> int:
        """File offset of the first line that starts in ``[start, end)`` (``end`` if none)."""
        if self._first_line is None:
            offset = self.start
            if offset > 0:
                with open(self.path, "rb") as f:
                    f.seek(offset - 1)
                    while True:  # skip the rest of the line that started before us
                        block = f.read(min(self.chunk_bytes, 1 << 16) + 1)
                        if not block:
                            offset = self.size
                            break
                        found = block.find(b"\n")
                        if found >= 0:
                            offset += found
                            break
                        offset += len(block)
            self._first_line = min(offset, self.end)
        return self._first_line

    def _lines_before(self, offset: int) -> int:
        """Newlines in the file before ``offset`` (only needed to number an error)."""
        count, remaining = 0, offset
        with open(self.path, "rb") as f:
            while remaining > 0:
                block = f.read(min(remaining, 8 << 20))
                if not block:
                    break
                count += block.count(b"\n")
                remaining -= len(block)
        return count

    def _chunks(self) -> Iterator[memoryview]:
        """This rank's lines in pieces of whole lines, each ending with a newline (a view of its own buffer).

        A piece is one read of ``chunk_bytes`` cut after its last newline, not copied; the next read
        starts again at the cut (the cut-off line comes from the page cache a second time).
        """
        position = self._first_line_start()  # file offset of the next piece
        with open(self.path, "rb", buffering=0) as f:
            while position < self.end:
                f.seek(position)
                text = f.read(self.chunk_bytes)
                if not text:  # the file shrank under us
                    return
                stop = text.rfind(b"\n") + 1
                if not stop:  # a line longer than a chunk, or the file's last line without its newline
                    blocks, length = [text], len(text)
                    while not stop:
                        block = f.read(self.chunk_bytes) or b"\n"  # the end of the file ends the line
                        found = block.rfind(b"\n")
                        stop = length + found + 1 if found >= 0 else 0
                        blocks.append(block)
                        length += len(block)
                    text = b"".join(blocks)
                limit = self.end - position  # our lines start before text[limit]
                if stop > limit:
                    stop = text.find(b"\n", limit - 1) + 1
                yield memoryview(text)[:stop]
                position += stop


def _batch(rows: _Rows) -> Batch:
    """The rows as a batch (the arrays themselves, and row offsets from the counts)."""
    indptr = np.zeros(rows.counts.size + 1, dtype=np.int64)
    np.cumsum(rows.counts, out=indptr[1:])
    return Batch(labels=rows.labels, indptr=indptr, keys=rows.keys, values=rows.values)


def read_libsvm(path: str | os.PathLike) -> Batch:
    """A whole libsvm/svmlight file as one batch (for tests and evaluation).

    Args:
        path: the file.

    Returns:
        Every row of the file, in order.

    Raises:
        DataError: the file is missing, unreadable or empty, or a line is malformed.
    """
    return LibsvmShard(path).read_all()

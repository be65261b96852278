"""A libsvm/svmlight reader: each rank streams only its own byte range, parsed vectorised per chunk.

Format: one row a line, ``label idx:value idx:value ... [# comment]``. Labels
are 0/1 or -1/+1 (-1 becomes 0); ``idx`` is a non-negative integer used as the
key as is (not hashed; ``2**64 - 1`` is reserved for the model's bias);
``qid:N`` tokens and comments are ignored, blank lines are skipped.

Sharding: rank ``r`` of ``R`` owns bytes ``[size * r // R, size * (r + 1) // R)``
and every line whose first byte lies there: a rank starting mid-line skips to
the next line, a rank reads past its end to finish its last line. The ranks'
rows, concatenated in rank order, are the file's rows in order.

Parsing, per chunk of whole lines (``chunk_bytes`` at a time, so memory stays
constant): numpy finds the words, colons and newlines in the raw bytes and
checks the layout; indices and plain decimals (``[+-]digits[.digits]``) are
converted digit by digit in numpy, the few other numbers (exponents, long
mantissas) by ``np.fromstring``, or the whole chunk by one ``np.fromstring``
call if there are many. A chunk with anything unusual (or an error) is parsed
again line by line in Python: that parser defines what is accepted, and names
the bad line with its line number in the whole file.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from typing import Iterator, NamedTuple

import numpy as np

from ..errors import ConfigError, DataError
from .batch import Batch, rebatch

__all__ = ["LibsvmShard", "read_libsvm"]

_MAX_INDEX = 2**64 - 2  # 2**64 - 1 is the model's bias key
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_COMMENT = re.compile(rb"#[^\n]*")  # keeps the newline, so line numbers stay right
_QID = re.compile(rb"(?<!\S)qid:\S*")
_COLON_TO_SPACE = bytes.maketrans(b":", b" ")
_EXCERPT_CHARS = 60
_POW10 = 10 ** np.arange(20, dtype=np.uint64)
_POW10_FLOAT = _POW10.astype(np.float64)  # exact (float64 holds powers of ten up to 10**22)
_MANTISSA_LIMIT = 2**53  # an integer mantissa up to here is exact in float64
_ODD_FRACTION = 0.02  # more odd numbers than this in a chunk: parse all with one np.fromstring


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
    return _Rows(*(np.concatenate(column) for column in zip(*parts)))


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


def _digits(raw: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The integers spelled by the digit strings ``raw[begin:end]`` (at most 19 digits; empty = 0)."""
    length = end - begin
    value = np.zeros(length.size, dtype=np.uint64)
    if length.size == 0:
        return value
    shortest, longest = int(length.min()), int(length.max())
    for k in range(longest):  # the k-th digit from the right
        digit = raw[end - 1 - k] - np.uint8(48)
        if k >= shortest:
            digit = np.where(length > k, digit, np.uint8(0))
        value += digit * _POW10[k]
    return value


def _parse_fast(text: bytes) -> _Rows | None:
    """Parse whole lines vectorised; ``None`` if anything is unusual (the caller then goes slow).

    Accepts only what the slow parser accepts, with the same result: every
    nonblank line is a label word followed by words with exactly one colon
    inside, indices are plain digit strings, labels are -1/0/1 and values
    finite float32 numbers. Plain decimals (``[+-]digits[.digits]``, the usual
    case) are converted digit by digit in numpy, correctly rounded; other
    numbers (exponents, long mantissas) by ``np.fromstring``.

    Args:
        text: whole lines, ending with a newline.
    """
    if b"#" in text:
        text = _COMMENT.sub(b"", text)
    if b"qid" in text:
        text = _QID.sub(b"", text)
    raw = np.frombuffer(text, dtype=np.uint8)
    space = (raw == 32) | (raw - np.uint8(9) < 5)  # what bytes.split() splits on: space, \t \n \v \f \r
    edges = np.flatnonzero(space[:-1] != space[1:]) + 1  # word starts and ends, alternating
    if space[0]:
        starts, ends = edges[0::2], edges[1::2]
    else:
        starts, ends = np.concatenate(([0], edges[1::2])), edges[0::2]
    if starts.size == 0:
        return _empty_rows()
    newlines = np.flatnonzero(raw == 10)
    colons = np.flatnonzero(raw == 58)

    # Layout: each nonblank line is a label word, then words holding one colon each.
    words_before = np.searchsorted(starts, newlines)  # words ending before each line's end
    colons_before = np.searchsorted(colons, newlines)
    words = np.diff(words_before, prepend=0)
    line_colons = np.diff(colons_before, prepend=0)
    row = words > 0
    if not np.array_equal(words[row], line_colons[row] + 1):
        return None
    word = np.arange(colons.size) + np.repeat(np.cumsum(row) - row + 1, line_colons)  # each colon's word
    if colons.size and not (np.all(starts[word] < colons) and np.all(ends[word] > colons + 1)):
        return None
    label_word = (words_before - words)[row]
    if colons.size and np.any(colons - starts[word] > 19):
        return None  # more digits than uint64 holds: let the slow parser judge
    index = _digits(raw, starts[word], colons)
    number = _parse_words(text, raw, space, starts, ends, colons, word)
    if number is None:
        return None
    labels, values = number[label_word], number[word]
    if not (
        np.all((labels == 1.0) | (labels == 0.0) | (labels == -1.0))
        and np.all(np.abs(values) <= _FLOAT32_MAX)  # also False for NaN
    ):
        return None
    return _Rows(
        labels=(labels > 0).astype(np.float32),
        counts=line_colons[row].astype(np.int64),
        keys=index,
        values=values.astype(np.float32),
    )


def _parse_words(
    text: bytes,
    raw: np.ndarray,
    space: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    colons: np.ndarray,
    word: np.ndarray,
) -> np.ndarray | None:
    """The number in each word (float64): a label word's whole text, else what follows its colon.

    ``None`` if an index holds a non-digit or a number does not parse.
    """
    begin = starts.copy()
    begin[word] = colons + 1
    # Bytes other than digits, spaces and colons: none may be in an index; a plain
    # decimal has at most a sign first and one dot.
    special = np.flatnonzero((raw - np.uint8(48) > 10) > space)
    special_word = np.searchsorted(starts, special, side="right") - 1
    if np.any(special < begin[special_word] - 1):
        return None
    byte = raw[special]
    sign = ((byte == 43) | (byte == 45)) & (special == begin[special_word])
    dot = byte == 46
    odd = np.zeros(starts.size, dtype=bool)
    odd[special_word[~(sign | dot)]] = True
    dot_word = special_word[dot]
    odd[dot_word[1:][np.diff(dot_word) == 0]] = True  # two dots
    negative = np.zeros(starts.size, dtype=bool)
    negative[special_word[sign & (byte == 45)]] = True
    first = begin.copy()
    first[special_word[sign]] += 1
    point = ends.copy()
    point[dot_word] = special[dot]
    fraction = np.minimum(point + 1, ends)
    digits = (point - first) + (ends - fraction)
    odd |= (digits < 1) | (digits > 19)
    if np.count_nonzero(odd) > _ODD_FRACTION * starts.size:
        return _parse_all(text, starts.size + colons.size, word)
    first[odd] = point[odd] = fraction[odd] = ends[odd]  # parsed below, one by one

    scale = ends - fraction
    mantissa = _digits(raw, first, point) * _POW10[scale] + _digits(raw, fraction, ends)
    odd |= mantissa > np.uint64(_MANTISSA_LIMIT)
    number = mantissa.astype(np.float64) / _POW10_FLOAT[scale]  # correctly rounded, like strtod
    np.negative(number, out=number, where=negative)

    strange = np.flatnonzero(odd)
    if strange.size > _ODD_FRACTION * starts.size:
        return _parse_all(text, starts.size + colons.size, word)
    if strange.size:
        pieces = b" ".join([text[b:e] for b, e in zip(begin[strange].tolist(), ends[strange].tolist())])
        parsed = _fromstring(pieces, strange.size)
        if parsed is None:
            return None
        number[strange] = parsed
    return number


def _parse_all(text: bytes, expected: int, word: np.ndarray) -> np.ndarray | None:
    """The number in each word, all parsed by one ``np.fromstring`` call."""
    parsed = _fromstring(text.translate(_COLON_TO_SPACE), expected)
    if parsed is None:
        return None
    return np.delete(parsed, word + np.arange(word.size))  # drop the indices (parsed exactly already)


def _fromstring(text: bytes, expected: int) -> np.ndarray | None:
    """The ``expected`` whitespace-separated numbers in ``text``, or ``None``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            numbers = np.fromstring(text, dtype=np.float64, sep=" ")
        except ValueError:  # what recent numpy does on unparsable text
            return None
    # Older numpy only warns on unparsable text (and returns what it read so far);
    # a warning about fromstring itself (a future deprecation) is no parse error.
    if any("fromstring" not in str(w.message) for w in caught):
        return None
    return numbers if numbers.size == expected else None


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
        self, path: str | os.PathLike, rank: int = 0, num_ranks: int = 1, chunk_bytes: int = 1 << 20
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
        pieces = (_slice(rows, _offsets(rows.counts), 0, rows.labels.size) for rows in self._parsed())
        return rebatch(pieces, batch_size)

    def read_all(self) -> Batch:
        """All of this rank's rows in one batch (one concatenation at the end).

        Raises:
            DataError: a malformed line.
        """
        rows = _concat_rows([r for r in self._parsed() if r.labels.size] or [_empty_rows()])
        return _slice(rows, _offsets(rows.counts), 0, rows.labels.size)

    def _parsed(self) -> Iterator[_Rows]:
        """This rank's rows, one parsed chunk at a time."""
        lines_before = 0  # lines of this rank before the current chunk
        for text in self._chunks():
            rows = _parse_fast(text)
            if rows is None:
                try:
                    rows = _parse_slow(text)
                except _BadLine as bad:
                    line = self._lines_before_start() + lines_before + bad.line + 1
                    raise DataError(f"{self.path}:{line}: {bad.what}: {_excerpt(bad.excerpt)}") from None
            lines_before += text.count(b"\n")
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

    def _lines_before_start(self) -> int:
        """Newlines before this rank's first line (only needed to number an error)."""
        count, remaining = 0, self._first_line_start()
        with open(self.path, "rb") as f:
            while remaining > 0:
                block = f.read(min(remaining, 8 << 20))
                if not block:
                    break
                count += block.count(b"\n")
                remaining -= len(block)
        return count

    def _chunks(self) -> Iterator[bytes]:
        """This rank's lines in pieces of whole lines, each ending with a newline."""
        position = self._first_line_start()  # file offset of carry[0]
        if position >= self.end:
            return
        carry = b""
        with open(self.path, "rb") as f:
            f.seek(position)
            while True:
                chunk = f.read(self.chunk_bytes)
                if not chunk:  # end of file inside our last line
                    if carry:
                        yield carry + b"\n"
                    return
                text = carry + chunk if carry else chunk
                last = text.rfind(b"\n")
                if last < 0:
                    carry = text
                    continue
                limit = self.end - position  # our lines start before text[limit]
                if last + 1 >= limit:
                    yield text[: text.find(b"\n", limit - 1) + 1]
                    return
                yield text[: last + 1]
                carry = text[last + 1 :]
                position += last + 1


def _offsets(counts: np.ndarray) -> np.ndarray:
    """Row offsets (CSR ``indptr``) from per-row counts."""
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _slice(rows: _Rows, offsets: np.ndarray, first: int, stop: int) -> Batch:
    lo, hi = offsets[first], offsets[stop]
    return Batch(
        labels=rows.labels[first:stop],
        indptr=offsets[first : stop + 1] - lo,
        keys=rows.keys[lo:hi],
        values=rows.values[lo:hi],
    )


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

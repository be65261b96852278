"""Criteo-style click logs: tab-separated lines of a label, 13 integer columns and 26 categorical columns.

The format of the Criteo Display Advertising Challenge (``train.txt``) and of the
Criteo 1TB logs (``day_N``): ``label I1 ... I13 C1 ... C26``, tab separated, any
field but the label may be empty. Features become keys by hashing, so the key space
needs no dictionary and any rank parses any line alone:

- integer column ``Ij`` (column number ``c = j``) is one key per column, with the
  value ``sign(x) * log(1 + |x|)`` (the counts span 0 .. 10^6 and more; the log keeps a
  linear model's updates in scale);
- categorical column ``Cj`` (``c = 13 + j``) gives one key per column and value, with
  the value 1: ``mix64(fnv1a64(value) ^ c * 0x9E3779B97F4A7C15)``, so the same hex
  string in two columns gives two keys;
- an empty field gives no key; one ``\\r`` before the newline is dropped; an empty line
  is skipped; 2**64 - 1 (the model's bias key) becomes 2**64 - 2.

The compiled parser (``_criteo_parse``) takes the common lines; ``parse_slow`` is the
reference it agrees with bit for bit, and words the error of a bad line.
"""

from __future__ import annotations

import math

import numpy as np

from ._criteo_parse import FIELDS
from ._criteo_parse import parse_chunk as _parse_fast
from .rows import BadLine, Rows, chunk_parser

__all__ = ["parse_criteo", "parse_slow", "column_key", "INTEGER_COLUMNS", "FIELDS"]

INTEGER_COLUMNS = 13
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1
_INT64_MAX = (1 << 63) - 1


def _mix64(x: int) -> int:
    z = (x + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & _MASK
    return h


def column_key(column: int, value: bytes | None = None) -> int:
    """The key of integer column ``column`` (``value`` None) or of categorical ``value`` in ``column``."""
    key = _mix64((_fnv1a64(value) if value is not None else 0) ^ ((column * _GOLDEN) & _MASK))
    return key - 1 if key == _MASK else key


def parse_slow(text: bytes) -> Rows:
    """Parse whole lines one by one in Python: the reference semantics, and the error finder.

    Raises:
        BadLine: the first malformed line, numbered from 0 within ``text``.
    """
    labels: list[float] = []
    counts: list[int] = []
    keys: list[int] = []
    values: list[float] = []
    for number, line in enumerate(text.split(b"\n")[:-1] if text.endswith(b"\n") else text.split(b"\n")):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue
        fields = line.split(b"\t")
        if len(fields) != FIELDS:
            raise BadLine(number, f"expected {FIELDS} tab-separated fields (a label, {INTEGER_COLUMNS} integers, "
                                  f"{FIELDS - 1 - INTEGER_COLUMNS} categories), got {len(fields)}", line)
        if fields[0] not in (b"0", b"1"):
            raise BadLine(number, "label must be 0 or 1", fields[0])
        labels.append(float(fields[0] == b"1"))
        count = 0
        for column, field in enumerate(fields[1:], start=1):
            if not field:
                continue
            if column <= INTEGER_COLUMNS:
                digits = field[1:] if field.startswith(b"-") else field
                if not (digits.isdigit() and digits.isascii()) or int(digits) > _INT64_MAX:
                    raise BadLine(number, f"column I{column} must be an integer (int64) or empty", field)
                magnitude = math.log1p(float(int(digits)))
                keys.append(column_key(column))
                values.append(-magnitude if field.startswith(b"-") else magnitude)
            else:
                keys.append(column_key(column, field))
                values.append(1.0)
            count += 1
        counts.append(count)
    return Rows(np.array(labels, dtype=np.float32), np.array(counts, dtype=np.int64),
                np.array(keys, dtype=np.uint64), np.array(values, dtype=np.float32))


parse_criteo = chunk_parser(_parse_fast, parse_slow)
"""Parse whole Criteo lines: compiled, or line by line where the compiled parser declines (``BadLine``)."""

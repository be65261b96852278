"""The libsvm/svmlight line format, parsed by compiled code per chunk.

Format: one row a line, ``label idx:value idx:value ... [# comment]``. Labels
are 0/1 or -1/+1 (-1 becomes 0); ``idx`` is a non-negative integer used as the
key as is (not hashed; ``2**64 - 1`` is reserved for the model's bias);
``qid:N`` tokens and comments are ignored, blank lines are skipped.

Parsing, per chunk of whole lines: the compiled parser (``_libsvm_parse``, one pass
in C without the GIL: exact decimal conversion, ``strtod`` for the rare long or
far-out number) takes a chunk it can parse exactly as the Python line parser does
and declines anything else. A declined chunk (anything unusual, or an error) is
parsed again line by line in Python: that parser defines what is accepted, and
names the bad line. Files, parts and ranks are ``reader.py``'s.
"""

from __future__ import annotations

import numpy as np

from ._libsvm_parse import parse_chunk
from .rows import BadLine, Rows, chunk_parser

__all__ = ["parse_libsvm", "parse_slow"]

_MAX_INDEX = 2**64 - 2  # 2**64 - 1 is the model's bias key
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _parse_label(token: bytes) -> float:
    label = float(token.replace(b"_", b"x"))  # ValueError if not a number; float() would accept 1_0
    if label not in (-1.0, 0.0, 1.0):
        raise ValueError(token)
    return 1.0 if label > 0 else 0.0


def parse_slow(text: bytes) -> Rows:
    """Parse whole lines one by one in Python: the reference semantics, and the error finder.

    Args:
        text: whole lines, ending with a newline.

    Raises:
        BadLine: the first malformed line, numbered from 0 within ``text``.
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
            raise BadLine(number, "label must be 0/1 or -1/+1", tokens[0]) from None
        count = 0
        for token in tokens[1:]:
            index, colon, value = token.partition(b":")
            if not colon:
                raise BadLine(number, "expected index:value", token)
            if index == b"qid":
                continue
            if not index.isdigit() or int(index) > _MAX_INDEX:
                raise BadLine(number, "index must be an integer in [0, 2**64 - 2]", token)
            try:
                parsed = float(value.replace(b"_", b"x"))  # float() would accept 1_000
            except ValueError:
                raise BadLine(number, "value is not a number", token) from None
            if not abs(parsed) <= _FLOAT32_MAX:
                raise BadLine(number, "value is not a finite float32 number", token)
            keys.append(int(index))
            values.append(parsed)
            count += 1
        counts.append(count)
    return Rows(
        labels=np.array(labels, dtype=np.float32),
        counts=np.array(counts, dtype=np.int64),
        keys=np.array(keys, dtype=np.uint64),
        values=np.array(values, dtype=np.float32),
    )


parse_libsvm = chunk_parser(parse_chunk, parse_slow)
"""Parse whole libsvm lines: compiled, or line by line where the compiled parser declines (``BadLine``)."""

"""The part files of a data path, and which of them (or which bytes or rows of them) each rank reads.

A data path is a file, a directory (its regular files whose names do not start with
``.`` or ``_``, as Hadoop and Spark write ``_SUCCESS`` beside their parts) or a glob
(``day_*.gz``), in name order. Each part may be compressed (``compression.py``).

Dividing the parts among ``R`` ranks:
- an uncompressed part is cut into ``R`` byte ranges, one per rank (a line belongs to the
  rank its first byte falls in), so every rank reads ``1/R`` of it;
- compressed parts cannot be cut, so with at least ``R`` of them each goes whole to one
  rank, largest first to the rank with the fewest compressed bytes so far;
- with fewer compressed parts than ranks, every rank decompresses every compressed part
  and keeps rows ``r, r + R, r + 2R, ...`` of it: correct, but each rank pays the whole
  decompression (a warning says to split the file into at least ``R`` parts).
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .compression import codec_of

__all__ = ["Part", "Share", "find_parts", "shares_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """One data file: its path, size in bytes and compression (``None``: plain text)."""

    path: str
    size: int
    codec: str | None


@dataclass(frozen=True)
class Share:
    """What one rank reads of one part: bytes ``[start, end)`` of a plain part, or every ``stride``-th row
    from row ``first_row`` of a compressed part (``stride`` 1: the whole part)."""

    part: Part
    start: int = 0
    end: int = 0
    first_row: int = 0
    stride: int = 1


def find_parts(path: str | os.PathLike) -> list[Part]:
    """The part files of a data path (a file, a directory or a glob), in name order.

    Raises:
        DataError: nothing to read there (the message names the path), or a part cannot be read.
    """
    spec = os.fspath(path)
    if glob.has_magic(spec) and not os.path.exists(spec):  # a file named data[1].svm is that file
        names = sorted(name for name in glob.glob(spec) if os.path.isfile(name) and _is_data_name(name))
        if not names:
            raise DataError(f"{spec}: no file matches")
    elif os.path.isdir(spec):
        names = sorted(str(p) for p in Path(spec).iterdir() if p.is_file() and _is_data_name(p.name))
        if not names:
            raise DataError(f"{spec}: a directory without data files")
    else:
        names = [spec]
    parts = [_part(name) for name in names]
    if all(part.size == 0 for part in parts):
        raise DataError(f"{spec}: file is empty" if names == [spec] else f"{spec}: every file is empty")
    return parts


def _is_data_name(name: str) -> bool:
    """Not a hidden or bookkeeping file (``.crc``, ``_SUCCESS``, ``_metadata``)."""
    return not os.path.basename(name).startswith((".", "_"))


def _part(name: str) -> Part:
    try:
        info = os.stat(name)
        if stat.S_ISREG(info.st_mode):
            with open(name, "rb"):
                pass
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except OSError as e:
        raise DataError(f"{name}: cannot read: {e.strerror or e}") from e
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{name}: not a regular file (a device, pipe or socket)")
    return Part(name, info.st_size, codec_of(name) if info.st_size else None)


def shares_of(parts: list[Part], rank: int, num_ranks: int) -> list[Share]:
    """What ``rank`` of ``num_ranks`` reads, in the order it reads it (the parts' order)."""
    compressed = [part for part in parts if part.codec is not None]
    whole = len(compressed) >= num_ranks
    mine = _balanced(compressed, num_ranks)[rank] if whole else set()
    if compressed and not whole and rank == 0:
        log.warning("%d compressed data file(s) for %d reading ranks: every rank decompresses all of them; split "
                    "them into at least %d parts to divide the work", len(compressed), num_ranks, num_ranks)
    shares = []
    for part in parts:
        if part.codec is None:
            if part.size:
                shares.append(Share(part, part.size * rank // num_ranks, part.size * (rank + 1) // num_ranks))
        elif not whole:
            shares.append(Share(part, first_row=rank, stride=num_ranks))
        elif part.path in mine:
            shares.append(Share(part))
    return shares


def _balanced(parts: list[Part], num_ranks: int) -> list[set[str]]:
    """Whole parts to ranks, largest first to the least loaded rank (ties: the lower rank)."""
    load = [0] * num_ranks
    owned: list[set[str]] = [set() for _ in range(num_ranks)]
    for part in sorted(parts, key=lambda p: (-p.size, p.path)):
        rank = min(range(num_ranks), key=lambda r: (load[r], r))
        load[rank] += part.size
        owned[rank].add(part.path)
    return owned

"""One rank's share of a data path (a file, a directory or a glob of part files, any of them compressed),
parsed chunk by chunk in one line format, in constant memory."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import PurePath

from ..errors import ConfigError, DataError
from .batch import Batch, rebatch
from .criteo import parse_criteo
from .libsvm import parse_libsvm
from .parts import Part, Share, find_parts, shares_of
from .rows import BadLine, Rows, as_batch, concat_rows, every_nth_row, excerpt
from .text_chunks import chunks_of, line_number

__all__ = ["DataShard", "read_data", "FORMATS", "format_of"]

FORMATS: dict[str, Callable[[bytes | memoryview], Rows]] = {"libsvm": parse_libsvm, "criteo": parse_criteo}
"""The line formats, by name: a function from whole lines to rows that raises ``BadLine``."""

_CRITEO_NAMES = (".tsv", ".criteo")
_SHARED_ERROR_DELAY_S = 3.0
"""A bad line in a part every rank reads: the ranks but the first wait this long before raising, so that the
first one's error ends the job and the line is reported once."""
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd")


def format_of(path: str, requested: str) -> str:
    """The format to read ``path`` in: ``requested``, or with ``auto`` the one its name says (``.tsv``,
    ``.criteo`` or a name with ``criteo`` or ``day_`` in it: criteo; anything else: libsvm)."""
    if requested != "auto":
        return requested
    name = PurePath(path).name.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    criteo = name.endswith(_CRITEO_NAMES) or "criteo" in name or name.startswith("day_")
    return "criteo" if criteo else "libsvm"


class DataShard:
    """One rank's rows of a data path (see ``parts.py`` for how the parts are divided).

    Args:
        path: a file, a directory of part files, or a glob.
        rank: this rank among the readers, in ``[0, num_ranks)``.
        num_ranks: how many ranks split the data.
        format: ``libsvm``, ``criteo`` or ``auto`` (by each part's name).
        chunk_bytes: bytes read at a time (a line longer than that is still read whole).

    Raises:
        DataError: nothing to read (missing, unreadable, not a regular file, empty).
        ConfigError: ``rank``, ``num_ranks``, ``format`` or ``chunk_bytes`` is out of range.
    """

    def __init__(self, path: str | os.PathLike, rank: int = 0, num_ranks: int = 1, *, format: str = "libsvm",
                 chunk_bytes: int = 4 << 20) -> None:
        if not 0 <= rank < num_ranks:
            raise ConfigError(f"rank {rank} out of range for {num_ranks} data ranks")
        if chunk_bytes < 1:
            raise ConfigError(f"chunk_bytes must be > 0, got {chunk_bytes!r}")
        if format != "auto" and format not in FORMATS:
            raise ConfigError(f"data.format must be one of auto, {', '.join(FORMATS)}; got {format!r}")
        self.path = os.fspath(path)
        self.rank = rank
        self.num_ranks = num_ranks
        self.format = format
        self.chunk_bytes = chunk_bytes
        self.parts: list[Part] = find_parts(self.path)
        self.shares: list[Share] = shares_of(self.parts, rank, num_ranks)

    def __repr__(self) -> str:
        return f"DataShard({self.path!r}, rank={self.rank}, num_ranks={self.num_ranks}, format={self.format!r})"

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """One pass over this rank's rows, in batches of exactly ``batch_size`` (the last one possibly shorter).

        Raises:
            DataError: a malformed line (``path:line: ...``, the line number in its whole file) or corrupt data.
            ConfigError: ``batch_size`` is not positive.
        """
        if batch_size < 1:
            raise ConfigError(f"train.batch_size must be > 0, got {batch_size!r}")
        return rebatch((as_batch(rows) for rows in self._parsed()), batch_size)

    def read_all(self) -> Batch:
        """All of this rank's rows in one batch (one concatenation at the end).

        Raises:
            DataError: a malformed line or corrupt data.
        """
        return as_batch(concat_rows([rows for rows in self._parsed() if rows.labels.size]))

    def _parsed(self) -> Iterator[Rows]:
        for share in self.shares:
            yield from self._parsed_share(share)

    def _parsed_share(self, share: Share) -> Iterator[Rows]:
        parse = FORMATS[format_of(share.part.path, self.format)]
        rows_before = 0  # rows of the part before the chunk (a compressed part read by every rank)
        for chunk in chunks_of(share, self.chunk_bytes):
            try:
                rows = parse(chunk.text)
            except BadLine as bad:
                line = line_number(share, chunk, bad.line)
                if share.stride > 1 and share.first_row:
                    time.sleep(_SHARED_ERROR_DELAY_S)
                raise DataError(f"{share.part.path}:{line}: {bad.what}: {excerpt(bad.excerpt)}") from None
            if share.stride > 1:
                first = (share.first_row - rows_before) % share.stride
                rows_before += rows.labels.size
                rows = every_nth_row(rows, first, share.stride)
            yield rows


def read_data(path: str | os.PathLike, format: str = "libsvm") -> Batch:
    """Every row of a data path as one batch (for tests and evaluation)."""
    return DataShard(path, format=format).read_all()


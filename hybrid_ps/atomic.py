"""Atomic file writes: a temporary name next to the target, fsynced, renamed over it, its directory fsynced.

A reader sees the old file or the new one, never a part of it, and after a
crash the new one survives only if it is complete. The temporary is
``<name>.tmp`` in the same directory (a rename within one file system is
atomic) and is removed if writing fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_write", "fsync_dir"]


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDWR)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Context: the temporary path to write ``path``'s new content at (for writers that open files themselves).

    The caller writes and closes the temporary inside the ``with``; on leaving
    it the temporary is fsynced and renamed to ``path``, then the directory is
    fsynced. On an error the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        yield temporary
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_write(path: str | Path, *, mode: str = "w", permissions: int = 0o666,
                 encoding: str | None = None) -> Iterator[IO]:
    """Context: an open file whose content replaces ``path`` atomically when the ``with`` ends without an error.

    Args:
        path: the file to write.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        permissions: the mode the temporary is created with (before the umask), e.g. ``0o600`` for secrets:
            the file is never readable by others, not even for a moment.
        encoding: text mode: the encoding (None: the locale's, as ``open``).
    """
    with atomic_path(path) as temporary:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, permissions)
        with os.fdopen(descriptor, mode, encoding=encoding) as handle:
            yield handle

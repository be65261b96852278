"""Compressed inputs: the codec of a file from its first bytes, and a stream of its decompressed bytes."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zlib
from typing import BinaryIO

import zstandard

from ..errors import DataError

__all__ = ["CODECS", "DECOMPRESSION_ERRORS", "codec_of", "open_decompressed"]

DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)
"""What reading a corrupt or truncated compressed file raises (gzip's and bz2's errors are OSError and EOFError)."""

_MAGIC = {
    "gzip": b"\x1f\x8b",
    "bz2": b"BZh",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
}
CODECS = tuple(_MAGIC)
"""The compressions a data file may have (found by magic bytes, whatever the file is called)."""


def codec_of(path: str | os.PathLike) -> str | None:
    """The compression of ``path`` by its magic bytes (``None``: not compressed).

    Raises:
        DataError: the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"{os.fspath(path)}: cannot read: {e.strerror or e}") from e
    return next((codec for codec, magic in _MAGIC.items() if head.startswith(magic)), None)


def open_decompressed(path: str | os.PathLike, codec: str) -> BinaryIO:
    """A binary stream of the decompressed bytes of ``path`` (read in pieces: nothing is unpacked to disk).

    Concatenated members (``cat a.gz b.gz``) and zstd frames are read one after the other.
    """
    if codec == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if codec == "bz2":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if codec == "xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    if codec == "zstd":
        return _ZstdFrames(path)  # type: ignore[return-value]
    raise ValueError(f"unknown codec {codec!r}")


class _ZstdFrames(io.RawIOBase):
    """The frames of a zstd file one after the other, as ``gzip.open`` reads members; a frame cut off
    raises ``EOFError`` (zstandard's ``stream_reader`` ends quietly there)."""

    def __init__(self, path: str | os.PathLike, block: int = 1 << 20) -> None:
        self._raw = open(path, "rb")  # noqa: SIM115 (closed in close())
        self._block = block
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False  # bytes of the current frame were fed and its end not seen yet

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to about ``size`` decompressed bytes (empty at the end of the file)."""
        while True:
            compressed = self._raw.read(self._block)
            if not compressed:
                if self._in_frame:
                    raise EOFError("the file ends inside a zstd frame (truncated)")
                return b""
            out = self._feed(compressed)
            if out:
                return out

    def _feed(self, compressed: bytes) -> bytes:
        pieces = []
        while compressed:
            self._in_frame = True
            pieces.append(self._frame.decompress(compressed))
            if not self._frame.eof:
                break
            self._in_frame = False
            compressed = self._frame.unused_data
            self._frame = zstandard.ZstdDecompressor().decompressobj()
        return b"".join(pieces)

    def close(self) -> None:
        self._raw.close()
        super().close()

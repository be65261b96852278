"""A rank's share of a part file as chunks of whole lines, in constant memory.

Plain parts are read in byte ranges: rank ``r`` of ``R`` owns the lines whose first
byte lies in ``[size * r // R, size * (r + 1) // R)``: a rank starting mid-line skips
to the next line, a rank reads past its end to finish its last line, so the ranks'
lines, in rank order, are the file's lines in order. Compressed parts are streamed
through their decompressor from the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from ..errors import DataError
from .compression import DECOMPRESSION_ERRORS, open_decompressed
from .parts import Share

__all__ = ["Chunk", "chunks_of", "line_number"]


class Chunk(NamedTuple):
    """Whole lines, the last one ending with a newline, and where they are in their (decompressed) file."""

    text: memoryview
    offset: int  # where ``text`` starts
    lines_before: int | None  # newlines before it; None: counted from the file when an error needs it


def chunks_of(share: Share, chunk_bytes: int) -> Iterator[Chunk]:
    """The lines of ``share`` (every line of a compressed part: its rows are picked after parsing).

    Raises:
        DataError: the part cannot be read, or its compressed data is corrupt or truncated (naming the file).
    """
    codec = share.part.codec
    chunks = _byte_range_chunks(share, chunk_bytes) if codec is None else _stream_chunks(share, chunk_bytes)
    try:
        yield from chunks
    except DECOMPRESSION_ERRORS as e:
        what = f"corrupt or truncated {codec} data" if codec else "cannot read"
        raise DataError(f"{share.part.path}: {what}: {e}") from None


def line_number(share: Share, chunk: Chunk, line_in_chunk: int) -> int:
    """The 1-based line number in its file of line ``line_in_chunk`` (0-based) of ``chunk``."""
    before = chunk.lines_before
    if before is None:
        before, remaining = 0, chunk.offset
        with open(share.part.path, "rb") as f:
            while remaining > 0:
                block = f.read(min(remaining, 8 << 20))
                if not block:
                    break
                before += block.count(b"\n")
                remaining -= len(block)
    return before + line_in_chunk + 1


def _first_line_start(share: Share, chunk_bytes: int) -> int:
    """File offset of the first line that starts in ``[start, end)`` (``end`` if none)."""
    offset, size = share.start, share.part.size
    if offset > 0:
        with open(share.part.path, "rb") as f:
            f.seek(offset - 1)
            while True:  # skip the rest of the line that started before us
                block = f.read(min(chunk_bytes, 1 << 16) + 1)
                if not block:
                    offset = size
                    break
                found = block.find(b"\n")
                if found >= 0:
                    offset += found
                    break
                offset += len(block)
    return min(offset, share.end)


def _byte_range_chunks(share: Share, chunk_bytes: int) -> Iterator[Chunk]:
    """Pieces of whole lines, each a view of its own read buffer.

    A piece is one read of ``chunk_bytes`` cut after its last newline, not copied; the next read
    starts again at the cut (the cut-off line comes from the page cache a second time).
    """
    position = _first_line_start(share, chunk_bytes)
    with open(share.part.path, "rb", buffering=0) as f:
        while position < share.end:
            f.seek(position)
            text = f.read(chunk_bytes)
            if not text:  # the file shrank under us
                return
            stop = text.rfind(b"\n") + 1
            if not stop:  # a line longer than a chunk, or the file's last line without its newline
                blocks, length = [text], len(text)
                while not stop:
                    block = f.read(chunk_bytes) or b"\n"  # the end of the file ends the line
                    found = block.rfind(b"\n")
                    stop = length + found + 1 if found >= 0 else 0
                    blocks.append(block)
                    length += len(block)
                text = b"".join(blocks)
            limit = share.end - position  # our lines start before text[limit]
            if stop > limit:
                stop = text.find(b"\n", limit - 1) + 1
            yield Chunk(memoryview(text)[:stop], position, None)
            position += stop


def _stream_chunks(share: Share, chunk_bytes: int) -> Iterator[Chunk]:
    """The decompressed lines, ``chunk_bytes`` at a time (the cut-off line goes with the next chunk)."""
    offset, lines, carry = 0, 0, b""
    with open_decompressed(share.part.path, share.part.codec or "") as stream:
        while True:
            block = stream.read(chunk_bytes)
            if not block:
                break
            text = carry + block if carry else block
            stop = text.rfind(b"\n") + 1
            if not stop:
                carry = text
                continue
            view = memoryview(text)
            yield Chunk(view[:stop], offset, lines)
            lines += text.count(b"\n", 0, stop)
            offset += stop
            carry = bytes(view[stop:])
    if carry:
        yield Chunk(memoryview(carry + b"\n"), offset, lines)

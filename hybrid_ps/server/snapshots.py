"""A checkpoint written from a snapshot: a forked copy of the shard process writes the file while the shard serves.

``fork`` gives the child the shard's memory as it is at the cut, copy-on-write: the
parent goes on applying pushes to its own pages, the child exports and writes the
untouched ones. The child never touches ZeroMQ (its sockets belong to the parent)
and leaves with ``os._exit``; it reports through a pipe, whose read end the shard's
poller watches, so the shard learns that the file is written without polling for it.
Memory: the pages the parent changes meanwhile are copied once (at most the table
again).
"""

from __future__ import annotations

import gc
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import zmq

__all__ = ["ForkedWrite", "SnapshotWriter"]

log = logging.getLogger(__name__)


@dataclass
class ForkedWrite:
    """A write under way in a child process (or done: ``ok`` set)."""

    pid: int
    pipe: int  # read end: one byte, 0 when the child wrote the file
    cut: int
    started: float
    ok: bool | None = None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class SnapshotWriter:
    """Runs one write at a time in a forked child.

    Args:
        poller: the shard loop's poller: woken up when a child is done.
    """

    def __init__(self, *, poller: zmq.Poller) -> None:
        self._poller = poller
        self.writing: ForkedWrite | None = None

    def start(self, cut: int, write: Callable[[], None]) -> ForkedWrite:
        """Fork a child that calls ``write()`` on the snapshot and exits; waits for the write before, if any."""
        if self.writing is not None:
            self.wait()
        read, written = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: write, report, leave without running the parent's cleanup
            os.close(read)
            code = 1
            try:
                gc.disable()  # a collection could finalize the parent's sockets
                write()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os.write(written, bytes([code]))
                os._exit(code)
        os.close(written)
        self._poller.register(read, zmq.POLLIN)
        self.writing = ForkedWrite(pid, read, cut, time.monotonic())
        return self.writing

    def done(self) -> ForkedWrite | None:
        """The write that just ended (reaped), if it did; ``None`` while it runs (never blocks)."""
        if self.writing is None or not zmq.select([self.writing.pipe], [], [], 0)[0]:
            return None  # the child writes its byte (or, killed, closes the pipe) as it ends
        return self.wait()

    def wait(self) -> ForkedWrite | None:
        """Block until the write under way ended; that write (``None`` if there was none)."""
        writing, self.writing = self.writing, None
        if writing is None:
            return None
        report = os.read(writing.pipe, 1)
        _, status = os.waitpid(writing.pid, 0)
        self._poller.unregister(writing.pipe)
        os.close(writing.pipe)
        writing.ok = report == b"\x00" and os.waitstatus_to_exitcode(status) == 0
        return writing

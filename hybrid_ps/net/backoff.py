"""Exponential backoff for every polling loop, so waiting ranks yield the core instead of spinning."""

from __future__ import annotations

import time

__all__ = ["Backoff"]


class Backoff:
    """Sleep a little longer on each call, from ``start`` up to ``limit`` seconds.

    Args:
        start: first sleep (10 us: small collectives still return fast).
        limit: longest sleep (1 ms: a waiting rank costs ~nothing).
        factor: growth per call.
    """

    def __init__(self, start: float = 1e-5, limit: float = 1e-3, factor: float = 2.0) -> None:
        self.start = start
        self.limit = limit
        self.factor = factor
        self._delay = start

    def reset(self) -> None:
        """Start again from the shortest sleep."""
        self._delay = self.start

    def sleep(self) -> None:
        """Sleep for the current delay, then grow it."""
        time.sleep(self._delay)
        self._delay = min(self._delay * self.factor, self.limit)

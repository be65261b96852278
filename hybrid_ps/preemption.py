"""Preemption: SIGTERM/SIGUSR1 (sent by batch schedulers before walltime) become a stop request.

The handler only sets a flag; the training loop turns it into a consistent
checkpoint of every shard at one clock, then a clean exit (see worker/trainer.py).
"""

from __future__ import annotations

import logging
import signal

__all__ = ["StopRequest", "PREEMPTION_SIGNALS"]

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """A flag set by a preemption signal (or by ``request`` in tests)."""

    def __init__(self) -> None:
        self.signal_name = ""

    @property
    def requested(self) -> bool:
        """Whether a stop was requested."""
        return bool(self.signal_name)

    def request(self, reason: str = "request") -> None:
        """Ask for a stop (what a signal handler does)."""
        if not self.signal_name:
            self.signal_name = reason

    def install(self) -> StopRequest:
        """Turn SIGTERM and SIGUSR1 into a stop request (main thread only); returns self."""
        for number in PREEMPTION_SIGNALS:
            signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: object) -> None:
        self.request(signal.Signals(number).name)

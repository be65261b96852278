"""Vector clocks and the SSP rule (stale synchronous parallel), shared by shards and tests.

Group ``g`` at clock ``c`` has finished ``c`` steps. A pull for step ``c``
may be answered once the slowest group has finished ``c - s`` steps, with
``s`` the staleness bound: ``s = 0`` is BSP (lock-step), ``s = inf`` is ASP.
A group that finished training counts as infinitely far ahead.
"""

from __future__ import annotations

import math

import numpy as np

from .wire import FINAL_CLOCK

__all__ = ["VectorClock", "parse_staleness"]


def parse_staleness(value: object) -> float:
    """Turn ``0``, ``3``, ``"inf"`` or ``math.inf`` into a staleness bound.

    Raises:
        ValueError: negative, fractional or unparseable values.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "infinity", "asp"):
            return math.inf
        if text == "bsp":
            return 0
        value = float(text)
    number = float(value)  # type: ignore[arg-type]
    if math.isinf(number) and number > 0:
        return math.inf
    if number < 0 or number != int(number):
        raise ValueError(f"staleness must be a whole number >= 0 or 'inf', got {value!r}")
    return int(number)


class VectorClock:
    """The last clock each group finished, plus which groups finished training.

    Args:
        num_groups: how many worker groups train against this shard.
    """

    def __init__(self, num_groups: int) -> None:
        self.clocks = np.zeros(num_groups, dtype=np.int64)
        self.finished = np.zeros(num_groups, dtype=bool)

    @property
    def num_groups(self) -> int:
        """How many groups the clock tracks."""
        return int(self.clocks.size)

    def advance(self, group: int, clock: int) -> None:
        """Record that ``group`` finished ``clock`` steps (clocks never go back)."""
        self.clocks[group] = max(int(self.clocks[group]), clock)

    def finish(self, group: int) -> None:
        """Record that ``group`` finished training."""
        self.finished[group] = True

    def min_clock(self) -> int:
        """The slowest unfinished group's clock (``FINAL_CLOCK`` when all finished)."""
        running = self.clocks[~self.finished]
        return int(running.min()) if running.size else FINAL_CLOCK

    def effective(self) -> np.ndarray:
        """Each group's clock for the SSP rule: ``FINAL_CLOCK`` for groups that finished."""
        return np.where(self.finished, FINAL_CLOCK, self.clocks)

    def gap(self) -> int:
        """Fastest minus slowest clock over all groups."""
        return int(self.clocks.max() - self.clocks.min()) if self.clocks.size else 0

    def ready(self, clock: int, staleness: float) -> bool:
        """Whether a pull for step ``clock`` may be answered under ``staleness``."""
        if clock == FINAL_CLOCK:
            return bool(self.finished.all())
        if math.isinf(staleness):
            return True
        return self.min_clock() >= clock - staleness

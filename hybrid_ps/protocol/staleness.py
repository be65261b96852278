"""Vector clocks and the SSP rule (stale synchronous parallel), shared by shards and tests.

Group ``g`` at clock ``c`` has finished ``c`` steps. A pull for step ``c``
may be answered once the slowest group has finished ``c - s`` steps, with
``s`` the staleness bound: ``s = 0`` is BSP (lock-step), ``s = inf`` is ASP.
A group that finished training, or that a shard dropped after it fell
silent, counts as infinitely far ahead; a dropped group may rejoin.
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
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"staleness must be a whole number >= 0 or 'inf', got {value!r}") from None
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
        self.dropped = np.zeros(num_groups, dtype=bool)

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

    def drop(self, group: int) -> None:
        """Stop waiting for ``group`` (it fell silent): it no longer holds the others back."""
        self.dropped[group] = True

    def rejoin(self, group: int) -> int:
        """Take a dropped ``group`` back at the slowest running group's clock (or its own, if later).

        Returns:
            The clock it rejoins at.
        """
        running = self.clocks[~self.done]  # the others: this group is still dropped here
        self.dropped[group] = False
        if running.size:
            self.clocks[group] = max(int(self.clocks[group]), int(running.min()))
        return int(self.clocks[group])

    def join(self, group: int) -> int:
        """Take ``group`` in as running: a group that was dropped, absent or finished (a restarted job)
        rejoins as ``rejoin`` does; a running group keeps its clock.

        Returns:
            The clock it continues at.
        """
        if self.dropped[group] or self.finished[group]:
            self.finished[group] = False
            self.dropped[group] = True  # so that ``rejoin`` looks at the others only
            return self.rejoin(group)
        return int(self.clocks[group])

    @property
    def done(self) -> np.ndarray:
        """Groups the SSP rule no longer waits for: finished or dropped."""
        return self.finished | self.dropped

    def min_clock(self) -> int:
        """The slowest running group's clock (``FINAL_CLOCK`` when all finished or dropped)."""
        running = self.clocks[~self.done]
        return int(running.min()) if running.size else FINAL_CLOCK

    def effective(self) -> np.ndarray:
        """Each group's clock for the SSP rule: ``FINAL_CLOCK`` for groups finished or dropped."""
        return np.where(self.done, FINAL_CLOCK, self.clocks)

    def gap(self) -> int:
        """Fastest minus slowest clock over all groups."""
        return int(self.clocks.max() - self.clocks.min()) if self.clocks.size else 0

    def ready(self, clock: int, staleness: float) -> bool:
        """Whether a pull for step ``clock`` may be answered under ``staleness``."""
        if clock == FINAL_CLOCK:
            return bool(self.done.all())
        if math.isinf(staleness):
            return True
        return self.min_clock() >= clock - staleness

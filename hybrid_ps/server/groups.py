"""Who a shard serves: each group's clock (the SSP vector clock), and whether it runs, finished, left,
fell silent (dropped) or never came, with when it was last heard from."""

from __future__ import annotations

import time

import numpy as np

from ..protocol.staleness import VectorClock

__all__ = ["GroupTable"]


class GroupTable:
    """The groups of a shard: their clocks, who is present, and silence past ``group_timeout``.

    Args:
        num_groups: group slots of the job (or of the tier).
        present: every group trains from the start (an MPI job's own shards); ``False`` (a PS tier of
            its own): slots are absent (dropped) until their group sends JOIN.
        group_timeout: seconds without any message before a running group is dropped (0: never).
    """

    def __init__(self, *, num_groups: int, present: bool = True, group_timeout: float = 0.0) -> None:
        self.clock = VectorClock(num_groups)
        self.clock.dropped[:] = not present
        self.left = np.zeros(num_groups, dtype=bool)  # said BYE
        self.joined_any = present  # some group joined (or spoke) at least once
        self.group_timeout = group_timeout
        self.stop_at: int | None = None  # the clock every group stops at (a preemption), once chosen
        self._last_heard = np.full(num_groups, time.monotonic())

    @property
    def num_groups(self) -> int:
        return self.clock.num_groups

    def start(self) -> None:
        """Serving starts: silence counts from now."""
        self._last_heard[:] = time.monotonic()

    def heard_from(self, group: int, rejoin: bool = True) -> int | None:
        """A message from ``group``; a dropped group rejoins (unless not ``rejoin``): its clock then, else None."""
        self._last_heard[group] = time.monotonic()
        self.joined_any = True
        if rejoin and self.clock.dropped[group]:
            return self.clock.rejoin(group)
        return None

    def join(self, group: int) -> int:
        """``group`` starts or restarts (JOIN): the clock it continues at (``VectorClock.join``)."""
        self._last_heard[group] = time.monotonic()
        self.joined_any = True
        self.left[group] = False
        return self.clock.join(group)

    def leave(self, group: int) -> None:
        """``group`` finished and leaves (BYE)."""
        self.clock.finish(group)
        self.left[group] = True

    def gone(self, group: int) -> bool:
        """Whether ``group`` left or was dropped (no cut or reshard waits for it)."""
        return bool(self.left[group] or self.clock.dropped[group])

    def waiting(self) -> np.ndarray:
        """Groups still training (a cut or a reshard waits for them): not finished, dropped or left."""
        return ~self.clock.done & ~self.left

    def choose_stop_clock(self) -> bool:
        """Pick the clock every group stops at, once: two past the fastest group. Whether it was picked now.

        Leaders read the stop clock from the acknowledgement of the clock before their
        last one (they do not wait for the newest), so one clock of margin keeps every
        group from passing the stop clock before it learns it.
        """
        if self.stop_at is not None:
            return False
        self.stop_at = int(self.clock.clocks.max()) + 2
        return True

    def drop_silent(self) -> list[int]:
        """Drop the running groups silent longer than ``group_timeout`` (crashed, or cut off): their ids."""
        if not self.group_timeout:
            return []
        silent = ~self.clock.done & (time.monotonic() - self._last_heard > self.group_timeout)  # left = finished
        dropped = np.flatnonzero(silent).tolist()
        for group in dropped:
            self.clock.drop(group)
        return dropped

    def all_gone(self) -> bool:
        """Every group that joined has left or was dropped (and some group joined)."""
        return self.joined_any and bool((self.left | self.clock.dropped).all())

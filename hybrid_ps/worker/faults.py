"""Fault injection for tests and benchmarks: a group whose pulls come late, and stragglers that stretch their steps."""

from __future__ import annotations

import time

import numpy as np

from ..config import Config

__all__ = ["FaultInjector"]


class FaultInjector:
    """A leader's injected slowness (``train.delay_*``, ``train.straggle_probability``); none by default.

    Args:
        delay_seconds: this group's pulls are answered this much later (the members wait in a quiet
            broadcast meanwhile).
        delay_factor: a straggling step's own work (not its PS waits) takes this many times as long.
        always_straggles: this group is the delayed one (``train.delay_group``).
        straggle_probability: instead, any step of any group straggles with this probability.
        seed: the draws of ``straggle_probability``.
    """

    def __init__(self, *, delay_seconds: float = 0.0, delay_factor: float = 1.0, always_straggles: bool = False,
                 straggle_probability: float = 0.0, seed: list[int] | int = 0) -> None:
        self.delay_seconds = delay_seconds
        self.delay_factor = delay_factor
        self.always_straggles = always_straggles
        self.straggle_probability = straggle_probability
        self._draws = np.random.default_rng(seed)
        self._step_mark = (time.monotonic(), 0.0)  # (time, PS seconds) when the last step ended

    @classmethod
    def from_config(cls, config: Config, group_id: int) -> FaultInjector:
        train = config.train
        delayed = train.delay_group == group_id
        return cls(delay_seconds=train.delay_seconds if delayed else 0.0, delay_factor=train.delay_factor,
                   always_straggles=delayed, straggle_probability=train.straggle_probability,
                   seed=[config.data.seed, group_id])

    def delay_pull(self) -> None:
        """Before the leader waits for a pull: sleep ``delay_seconds``."""
        if self.delay_seconds:
            time.sleep(self.delay_seconds)

    def end_step(self, ps_seconds: float) -> None:
        """At the end of a step: a straggling step sleeps until its own work took ``delay_factor`` times as long.

        Args:
            ps_seconds: the leader's time blocked on the PS tier so far (not counted as the step's work).
        """
        now = time.monotonic()
        mark, ps_seconds_then = self._step_mark
        if self.delay_factor > 1 and self._straggles():
            work = (now - mark) - (ps_seconds - ps_seconds_then)
            time.sleep((self.delay_factor - 1) * max(work, 0.0))
        self._step_mark = (time.monotonic(), ps_seconds)

    def _straggles(self) -> bool:
        if self.straggle_probability > 0:
            return bool(self._draws.random() < self.straggle_probability)
        return self.always_straggles

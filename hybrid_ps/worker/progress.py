"""A leader's progress line and metrics record, every ``train.log_interval`` seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from ..metrics import MetricsWriter, RateMeter
from ..protocol.wire import FINAL_CLOCK
from .result import TRAFFIC_FIELDS

__all__ = ["ProgressReport"]

log = logging.getLogger(__name__)


class ProgressReport:
    """Logs the group's rate, loss, clock gap and PS traffic per step since the last report.

    Args:
        metrics: where the ``progress`` records go.
        interval: seconds between two reports.
        group_id: the reporting group.
        meter: the group's samples and loss.
        traffic: the leader's traffic counters so far (``TRAFFIC_FIELDS`` order).
        shard_clocks: every group's clock as the shards last told it.
    """

    def __init__(self, *, metrics: MetricsWriter, interval: float, group_id: int, meter: RateMeter,
                 traffic: Callable[[], np.ndarray], shard_clocks: Callable[[], np.ndarray]) -> None:
        self.metrics = metrics
        self.interval = interval
        self.group_id = group_id
        self.meter = meter
        self._traffic = traffic
        self._shard_clocks = shard_clocks
        self._next = time.monotonic() + interval
        self._mark = (0, np.zeros(len(TRAFFIC_FIELDS)))  # (clock, traffic) at the last report

    def maybe_report(self, clock: int) -> None:
        """Report if ``interval`` passed since the last report; ``clock`` is the group's step."""
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        rate, loss = self.meter.window()
        clocks = self._shard_clocks()
        running = clocks[clocks != FINAL_CLOCK]
        gap = int(running.max() - running.min()) if running.size else 0
        then, before = self._mark
        now = self._traffic()
        self._mark = (clock, now)
        window = dict(zip(TRAFFIC_FIELDS, ((now - before) / max(clock - then, 1)).tolist(), strict=True))
        share = lambda part, whole: 100 * part / whole if whole else 100.0  # noqa: E731
        log.info("step %d | %.0f samples/s (group %d) | train logloss %.4f | clock gap %d | PS out %.0f kB/step, "
                 "in %.0f (pushes %.0f%% after filters, keys %.0f%% after cache and compression)", clock, rate,
                 self.group_id, loss, gap, window["sent"] / 1e3, window["received"] / 1e3,
                 share(window["push_filtered"], window["push_raw"]), share(window["keys_out"], window["keys_in"]))
        self.metrics.write("progress", step=clock, group=self.group_id, samples_per_s=rate,
                           train_logloss=loss, clock_gap=gap, elapsed=self.meter.elapsed, traffic_per_step=window)

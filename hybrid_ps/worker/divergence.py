"""A training run that diverges stops with a line saying why, instead of ending as a useless model.

Two checks on every step's Allreduced numbers (``StepChecks``): a NaN or infinite
gradient stops the job or skips the step (``train.on_nonfinite``); a loss running
far above a constant prediction's stops it (``DivergenceGuard``, below).

After every step each member of a group has the group's summed loss, rows and positive
labels (the step's Allreduce). They are collected in windows of at least
``window_rows`` rows; a window is bad when its logloss exceeds twice (and by at least
0.5 nats) what a constant prediction of the window's positive rate scores. After
``patience`` bad windows in a row every member raises the same error at the same step,
so the job ends at once with exit 1 rather than with a model worse than a constant.
The usual causes are named: features of large magnitude (the largest value rank 0 of
the group saw is in the message) and a learning rate too high for them.
"""

from __future__ import annotations

import logging
import math

from ..config import Config
from ..errors import DivergenceError, NonFiniteError
from .group import WorkerGroup

__all__ = ["StepChecks", "DivergenceGuard", "constant_logloss"]

log = logging.getLogger(__name__)


class StepChecks:
    """The checks every member runs on a step's sums (the same sums: every member decides alike).

    Args:
        config: the job's settings (``train.on_nonfinite``, ``train.stop_on_divergence``, the learning rate).
        group: the group's collectives (to name the ranks of a non-finite gradient).
        group_id: for the messages.
    """

    def __init__(self, config: Config, *, group: WorkerGroup, group_id: int) -> None:
        self.group = group
        self.group_id = group_id
        self.skip_nonfinite = config.train.on_nonfinite == "skip"
        self.learning_rate = config.optimizer.learning_rate
        self.divergence = (DivergenceGuard(group_id=group_id, learning_rate=self.learning_rate)
                           if config.train.stop_on_divergence else None)

    def finite(self, clock: int, *, summed_finite: bool, local_finite: bool) -> bool:
        """Whether the step's summed gradient is finite; if not, the step is skipped (``False``) or the job stops.

        Raises:
            NonFiniteError: with ``train.on_nonfinite = "stop"``, on every member.
        """
        if summed_finite:
            return True
        ranks = self.group.ranks_where(not local_finite)
        where = (f"from group rank(s) {', '.join(map(str, ranks))}" if ranks
                 else "in the sum over the group (float32 overflow)")
        message = f"group {self.group_id}, step {clock}: NaN or Inf gradient {where}"
        if not self.skip_nonfinite:
            raise NonFiniteError(f"{message}; stopped: usually feature values of large magnitude "
                                 f"(--feature-scaling maxabs) or too high a learning rate (--lr "
                                 f"{self.learning_rate:g}); train.on_nonfinite = \"skip\" skips such steps")
        if self.group.is_leader:
            log.warning("%s; step skipped (nothing pushed)", message)
        return False

    def loss(self, clock: int, *, loss_sum: float, rows: int, positives: float, largest_value: float) -> None:
        """Count the step's loss towards the divergence check.

        Raises:
            DivergenceError: see ``DivergenceGuard``.
        """
        if self.divergence is not None:
            self.divergence.add(clock=clock, loss_sum=loss_sum, rows=rows, positives=positives,
                                largest_value=largest_value)


def constant_logloss(positive_rate: float) -> float:
    """The logloss of always predicting ``positive_rate`` on rows with that rate of positives."""
    p = min(max(positive_rate, 1e-7), 1 - 1e-7)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


class DivergenceGuard:
    """Windows of the group's training loss, checked against a constant prediction's.

    Args:
        group_id: for the message.
        learning_rate: for the message.
        window_rows: rows per window (at least; a window closes at a step boundary).
        patience: bad windows in a row before the run stops.
    """

    def __init__(self, *, group_id: int, learning_rate: float, window_rows: int = 20_000, patience: int = 3) -> None:
        self.group_id = group_id
        self.learning_rate = learning_rate
        self.window_rows = window_rows
        self.patience = patience
        self._loss = 0.0
        self._rows = 0
        self._positives = 0.0
        self._bad = 0
        self.largest_value = 0.0

    def add(self, *, clock: int, loss_sum: float, rows: int, positives: float, largest_value: float) -> None:
        """One step's sums over the group.

        Raises:
            DivergenceError: the last ``patience`` windows were all bad.
        """
        self._loss += loss_sum
        self._rows += rows
        self._positives += positives
        self.largest_value = max(self.largest_value, largest_value)
        if self._rows < self.window_rows:
            return
        logloss, constant = self._loss / self._rows, constant_logloss(self._positives / self._rows)
        window = self._rows
        self._loss, self._rows, self._positives = 0.0, 0, 0.0
        bad = not logloss <= max(2 * constant, constant + 0.5)  # NaN is bad too
        self._bad = self._bad + 1 if bad else 0
        if self._bad >= self.patience:
            raise DivergenceError(self._message(clock, logloss, constant, window))

    def _message(self, clock: int, logloss: float, constant: float, window: int) -> str:
        cause = (f"feature values reach {self.largest_value:.3g}: scale them to about [-1, 1] "
                 f"(--feature-scaling maxabs does) or lower the learning rate (--lr {self.learning_rate:g} now)"
                 if self.largest_value > 10 else
                 f"the learning rate may be too high (--lr {self.learning_rate:g} now): lower it")
        return (f"group {self.group_id}, clock {clock}: training diverged: logloss {logloss:.4g} over the last "
                f"{window} rows, {self.patience} windows in a row far above the {constant:.4f} of a constant "
                f"prediction; {cause}")

"""The step loop of one worker group: union keys, leader pull, broadcast, gradient, Allreduce, async push.

One step of group ``g`` at clock ``c`` (see DESIGN.md):
1. every rank takes its next minibatch;
2. the leader gathers the union of touched keys;
3. the leader pulls them (answered once SSP allows clock ``c``) and broadcasts them;
4. every rank computes its gradient on the union; one ``Allreduce`` sums them;
5. the leader pushes the mean gradient without waiting and sends ``clock(c + 1)``.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from ..config import Config
from ..data.batch import Batch
from ..metrics import MetricsWriter, RateMeter
from ..preemption import StopRequest
from ..wire import FINAL_CLOCK
from .client import PSClient
from .group import WorkerGroup

__all__ = ["GroupTrainer", "GroupResult"]

log = logging.getLogger(__name__)

_STATS = 4  # extra slots at the end of the Allreduce buffer: loss sum, rows, correct predictions, stop signals


@dataclass
class GroupResult:
    """What a group reports at the end (sums over the group; leader's copy is authoritative)."""

    steps: int = 0
    samples: int = 0
    train_loss_sum: float = 0.0
    eval_loss_sum: float = 0.0
    eval_correct: float = 0.0
    eval_rows: int = 0
    seconds: float = 0.0
    preempted: bool = False

    def as_array(self) -> np.ndarray:
        """The numbers as a float64 vector (for a world-level sum)."""
        return np.array(
            [self.steps, self.samples, self.train_loss_sum, self.eval_loss_sum, self.eval_correct, self.eval_rows,
             self.seconds, self.preempted],
            dtype=np.float64,
        )


class GroupTrainer:
    """Runs training (and the final evaluation pass) for this rank's group.

    Args:
        config: the job configuration.
        group: the group's collectives.
        group_id: this group's id.
        model: the model (``touched_keys``, ``loss_and_gradient``, ``width``).
        batches: returns an iterator over this rank's minibatches for one pass.
        client: the PS client (leader only, ``None`` elsewhere).
        metrics: the metrics file (the first leader only).
        publish: leaders only; called with (cut clock, results so far) after every
            shard wrote its part of a checkpoint, to publish it.
        start_clock: steps already done (resuming): training continues at this
            clock, and every rank skips that many of its minibatches.
        stop_request: this process's preemption flag; any rank's flag stops the
            whole job at one clock, with a checkpoint.
    """

    def __init__(
        self,
        config: Config,
        group: WorkerGroup,
        group_id: int,
        model,
        batches: Callable[[], Iterable[Batch]],
        client: PSClient | None = None,
        metrics: MetricsWriter | None = None,
        publish: Callable[[int, "GroupResult"], None] | None = None,
        start_clock: int = 0,
        stop_request: StopRequest | None = None,
    ) -> None:
        self.config = config
        self.group = group
        self.group_id = group_id
        self.model = model
        self.batches = batches
        self.client = client
        self.metrics = metrics
        self.publish = publish
        self.clock = start_clock
        self.start_clock = start_clock
        self.stop_request = stop_request or StopRequest()
        self._stopping = False  # leader: the stop clock is reached
        self._stop_sent = False
        self._clock_ticket = None
        self.meter = RateMeter()
        self._next_report = time.monotonic() + config.train.log_interval
        self._delay = config.train.delay_seconds if config.train.delay_group == group_id else 0.0

    def run(self) -> GroupResult:
        """Train, evaluate if configured, and leave the PS tier; returns the group's sums."""
        result = GroupResult()
        self._train(result)
        result.preempted = self.group.broadcast_flag(self._stopping)
        if result.preempted:
            if self.client is not None:
                self._checkpoint(self.clock, result)
                log.warning("preempted: stopped at clock %d%s", self.clock,
                            "; resume with --resume latest" if self.publish else "")
        else:
            if self.client is not None:
                self.client.finish()
                self._checkpoint(FINAL_CLOCK, result)
            if self.config.train.final_eval:
                self._evaluate(result)
        if self.client is not None:
            self.client.bye()
        result.seconds = self.meter.elapsed
        return result

    def _epochs(self) -> Iterator[Batch]:
        for _ in range(self.config.train.epochs):
            yield from self.batches()

    def _exchange(self, batch: Batch | None, clock: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Steps 2-3: union of keys, leader pull at ``clock``, broadcast; ``None`` = all exhausted."""
        keys = self.model.touched_keys(batch) if batch is not None else None
        union = self.group.gather_keys(keys)
        if self._stopping:
            union = None  # the leader ends the loop for everybody
        values = None
        if self.group.is_leader and union is not None:
            if self._delay:
                time.sleep(self._delay)
            values = self.client.wait(self.client.pull(union, clock))
        return self.group.broadcast_pulled(union, values, self.model.width)

    def _train(self, result: GroupResult) -> None:
        max_steps = self.config.train.max_steps
        batches = itertools.islice(self._epochs(), self.start_clock, None)  # resume where the cut was
        while not max_steps or self.clock < max_steps:
            if self.group.is_leader:
                self._stopping = self._stop_clock_reached()
            batch = next(batches, None)
            pulled = self._exchange(batch, self.clock)
            if pulled is None:
                break
            keys, values = pulled
            totals = np.zeros(keys.size + _STATS, dtype=np.float32)
            if batch is not None and batch.num_rows:
                loss, grad, _ = self.model.loss_and_gradient(batch, keys, values)
                totals[: keys.size] = grad
                totals[keys.size : keys.size + 2] = (loss, batch.num_rows)
            totals[-1] = self.stop_request.requested
            self.group.allreduce_sum(totals)
            loss_sum, rows = float(totals[-4]), int(totals[-3])
            if self.group.is_leader and totals[-1] and not self._stop_sent:
                self.client.request_stop()
                self._stop_sent = True
            if self.group.is_leader and rows:
                gradient = totals[: keys.size] / rows
                self.client.push(keys, gradient.reshape(-1, self.model.width), self.clock)
            self.clock += 1
            self.meter.add(rows, loss_sum)
            result.steps, result.samples = self.clock, result.samples + rows
            result.train_loss_sum += loss_sum
            if self.group.is_leader:
                self._clock_ticket = self.client.clock(self.clock)
                every = self.config.train.checkpoint_every
                if every and self.clock % every == 0:
                    self._checkpoint(self.clock, result)
            self._maybe_report()

    def _stop_clock_reached(self) -> bool:
        """Leader: whether shard 0 announced a stop clock that this group has reached.

        Shard 0 answers every CLOCK at once; waiting for that answer before each
        step guarantees the group learns the stop clock before passing it.
        """
        if self._clock_ticket is not None:
            self.client.wait(self._clock_ticket)
        return self.client.stop_at is not None and self.clock >= self.client.stop_at

    def _checkpoint(self, clock: int, result: GroupResult) -> None:
        """Leader: stop at ``clock`` until every shard wrote the cut, then publish it."""
        if self.publish is None:
            return
        cut = self.client.checkpoint(clock)
        self.publish(cut, result)

    def _evaluate(self, result: GroupResult) -> None:
        """One pass over the data with the final model (pulls wait until every group finished)."""
        for batch in self.batches():
            pulled = self._exchange(batch, FINAL_CLOCK)
            self._accumulate_eval(batch, pulled, result)
        while (pulled := self._exchange(None, FINAL_CLOCK)) is not None:
            self._accumulate_eval(None, pulled, result)  # other members still have rows

    def _accumulate_eval(self, batch: Batch | None, pulled: tuple[np.ndarray, np.ndarray] | None, result: GroupResult) -> None:
        totals = np.zeros(_STATS, dtype=np.float64)
        if batch is not None and batch.num_rows:
            keys, values = pulled
            loss, _, probability = self.model.loss_and_gradient(batch, keys, values)
            correct = np.sum((probability > 0.5) == (batch.labels > 0.5))
            totals[:3] = (loss, batch.num_rows, correct)
        self.group.allreduce_sum(totals)
        result.eval_loss_sum += totals[0]
        result.eval_rows += int(totals[1])
        result.eval_correct += totals[2]

    def _maybe_report(self) -> None:
        if self.metrics is None or time.monotonic() < self._next_report:
            return
        self._next_report = time.monotonic() + self.config.train.log_interval
        rate, loss = self.meter.window()
        running = self.client.shard_clocks[self.client.shard_clocks != FINAL_CLOCK]
        gap = int(running.max() - running.min()) if running.size else 0
        log.info("step %d | %.0f samples/s (group %d) | train logloss %.4f | clock gap %d",
                 self.clock, rate, self.group_id, loss, gap)
        self.metrics.write("progress", step=self.clock, group=self.group_id, samples_per_s=rate,
                           train_logloss=loss, clock_gap=gap, elapsed=self.meter.elapsed)

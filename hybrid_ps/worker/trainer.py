"""The step loop of one worker group: union keys, leader pull, broadcast, gradient, Allreduce, async push.

One step of group ``g`` at clock ``c`` (docs/architecture.md, "How a step works"):
1. every rank takes its next minibatch;
2. the leader gathers the union of touched keys;
3. the leader pulls them (answered once SSP allows clock ``c``) and broadcasts them;
4. every rank computes its gradient on the union; one ``Allreduce`` sums them;
5. the leader pushes the mean gradient without waiting and sends ``clock(c + 1)``.

Steps 2-3 are ``exchange.py``; what only the leader does is ``leader.py``; the evaluation pass
``eval_pass.py``; fault injection ``faults.py``; the progress line ``progress.py``; the result ``result.py``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..config import Config
from ..data.batch import Batch
from ..metrics import MetricsWriter, RateMeter
from ..models.base import Model
from ..preemption import StopRequest
from ..protocol.numerics import all_finite
from ..protocol.wire import FINAL_CLOCK
from ..tables.optimizers import optimizer_from_config
from ..tier import TierView
from .client import PSClient
from .divergence import StepChecks
from .eval_pass import evaluate_pass
from .exchange import KeyExchange, PendingExchange, StepStats
from .faults import FaultInjector
from .group import WorkerGroup
from .group_rows import GroupRows
from .leader import Leader
from .progress import ProgressReport
from .result import TRAFFIC_FIELDS, GroupResult
from .validation import Validation, ValidationSchedule

__all__ = ["GroupTrainer", "GroupResult", "StepStats", "TRAFFIC_FIELDS"]

log = logging.getLogger(__name__)


class GroupTrainer:
    """Runs training (and the final evaluation pass) for this rank's group.

    Args:
        config: the job configuration.
        group: the group's collectives.
        group_id: this group's id.
        model: the model (``hybrid_ps.models.base.Model``).
        batches: returns an iterator over this rank's minibatches for one pass.
        client: the PS client: given on the group's leader only (this rank leads iff it has one).
        metrics: the metrics file (the first leader only).
        publish: leaders only; called with (cut clock, results so far) after every
            shard wrote its part of a checkpoint, to publish it.
        start_clock: the clock training continues at (resuming, or joining a running tier).
        skip_batches: minibatches every rank skips first (those trained before a resumed
            cut; ``None``: as many as ``start_clock``).
        tier_view: reads the tier's current shards (when the tier announces a change).
        stop_request: this process's preemption flag; any rank's flag stops the
            whole job at one clock, with a checkpoint.
        validation_data: on the evaluating group's members: one pass over this member's share of the
            held-out rows (``validation.py``).
        mark_best: the evaluating group's leader: points checkpoint ``best`` at a cut's clock.
    """

    def __init__(
        self,
        *,
        config: Config,
        group: WorkerGroup,
        group_id: int,
        model: Model,
        batches: Callable[[], Iterable[Batch]],
        client: PSClient | None = None,
        metrics: MetricsWriter | None = None,
        publish: Callable[[int, GroupResult], None] | None = None,
        start_clock: int = 0,
        stop_request: StopRequest | None = None,
        skip_batches: int | None = None,
        tier_view: Callable[[], TierView] | None = None,
        validation_data: Callable[[], Iterable[Batch]] | None = None,
        mark_best: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.group = group
        self.group_id = group_id
        self.model = model
        self.batches = batches
        self.clock = start_clock
        self.skip_batches = start_clock if skip_batches is None else skip_batches
        self.stop_request = stop_request or StopRequest()
        self.meter = RateMeter()
        # at s = 0 a prefetched pull waits for this group's own next clock anyway: nothing to overlap
        self._prefetch = config.train.prefetch and config.cluster.staleness >= 1
        self._stopping = False  # the stop clock is reached (the leader knows it first, then broadcasts it)
        self.group_rows = None  # model.dense_in_group: the dense blocks kept on every member (group_rows.py)
        if config.model.dense_in_group and model.dense_keys().size:
            self.group_rows = GroupRows(model.dense_keys(), model.width, optimizer_from_config(config.optimizer),
                                        config.model.dense_sync_every)
        self.leader: Leader | None = None  # this rank leads the group
        self.progress: ProgressReport | None = None
        self.faults = FaultInjector.from_config(config, group_id)
        if client is not None:
            self.leader = Leader.for_job(config, client=client, width=model.width, group_rows=self.group_rows,
                                         publish=publish, tier_view=tier_view)
            if metrics is not None:
                self.progress = ProgressReport(metrics=metrics, interval=config.train.log_interval,
                                               group_id=group_id, meter=self.meter, traffic=self.leader.traffic,
                                               shard_clocks=lambda: client.shard_clocks)
        self.exchange = KeyExchange(group=group, model=model, leader=self.leader, faults=self.faults,
                                    group_rows=self.group_rows, preload=config.data.preload)
        self.checks = StepChecks(config, group=group, group_id=group_id)
        self.schedule = ValidationSchedule(every=config.train.eval_every, early_stopping=config.train.early_stopping)
        self.validation = None
        if validation_data is not None:
            self.validation = Validation(schedule=self.schedule, batches=validation_data, exchange=self.exchange,
                                         group=group, model=model, metrics=metrics, mark_best=mark_best)

    def run(self) -> GroupResult:
        """Train, evaluate if configured, and leave the PS tier; returns the group's sums."""
        result = GroupResult()
        self._train(result)
        result.preempted = self.group.broadcast_flag(self._stopping)
        if result.preempted:
            if self.leader is not None:
                self.leader.checkpoint(self.clock, result, self.clock)
                if self.config.train.early_stopping:
                    log.warning("early stopping (or preempted): stopped at clock %d", self.clock)
                else:
                    log.warning("preempted: stopped at clock %d%s", self.clock,
                                "; resume with --resume latest" if self.leader.publish else "")
        else:
            if self.leader is not None:
                self.leader.finish(self.clock)
                self.leader.checkpoint(FINAL_CLOCK, result, self.clock)
            if self.config.train.final_eval:
                self._evaluate(result)
        if self.leader is not None:
            self.leader.publish_written(wait=True)  # every cut whose file is still being written
            self.leader.client.bye()
        result.seconds = self.meter.elapsed
        return result

    # -- the step loop ------------------------------------------------------------------------------

    def _train(self, result: GroupResult) -> None:
        """The step loop. With ``train.prefetch`` (and staleness >= 1) the pull for step ``c + 1`` goes
        out before step ``c``'s gradient is computed, so its round trip overlaps the compute and the Allreduce.

        The prefetched pull reaches the shards before this group's push of step ``c``, so it may miss
        the group's own last update. SSP still holds: a read at clock ``c + 1`` must see the updates
        of clocks ``< c + 1 - s`` only, and ``c < c + 1 - s`` is false for ``s >= 1``.
        """
        max_steps = self.config.train.max_steps
        batches = itertools.islice(self._epochs(), self.skip_batches, None)  # resume where the cut was
        more_steps = lambda clock: not max_steps or clock < max_steps  # noqa: E731
        upcoming = self._start(batches, self.clock) if more_steps(self.clock) else None
        while upcoming is not None:
            current = upcoming
            pulled = self._finish_exchange(current, result)
            if pulled is None:
                break
            upcoming = None
            if self._prefetch and more_steps(self.clock + 1):
                upcoming = self._start(batches, self.clock + 1)
            self._step(current, *pulled, result)
            if not self._prefetch and more_steps(self.clock):
                upcoming = self._start(batches, self.clock)
        result.train_seconds = self.meter.elapsed
        if self.leader is not None:
            result.ps_seconds, result.traffic = self.leader.ps_seconds, self.leader.traffic()

    def _epochs(self) -> Iterator[tuple[Batch, bool]]:
        """Every epoch's batches, each with whether it is the last of its epoch (read one batch ahead)."""
        for _ in range(self.config.train.epochs):
            previous = None
            for batch in self.batches():
                if previous is not None:
                    yield previous, False
                previous = batch
            if previous is not None:
                yield previous, True

    def _start(self, batches: Iterator[tuple[Batch, bool]], clock: int) -> PendingExchange:
        """Steps 1-3a for ``clock``: this rank's next batch (if any) into the key exchange."""
        batch, ends_epoch = next(batches, (None, False))
        pending = self.exchange.start(batch, clock)
        pending.ends_epoch = ends_epoch
        return pending

    def _finish_exchange(self, pending: PendingExchange, result: GroupResult) -> tuple[np.ndarray, np.ndarray] | None:
        """Step 3b; ``None`` = stop (everybody). The leader first checks whether the group reached the
        announced stop clock (and moves the tier's ranges if a reshard is due now)."""
        if self.leader is not None:
            self._stopping = self.leader.must_stop(self.clock, result)
        return self.exchange.finish(pending, stopping=self._stopping)

    def _step(self, pending: PendingExchange, keys: np.ndarray, values: np.ndarray, result: GroupResult) -> None:
        """Steps 4-5: gradient, one Allreduce (gradient + stats), the leader's push and clock; then a cut, a
        validation and a progress line if due."""
        batch = pending.batch
        size = keys.size * self.model.width
        totals = self.group.reduce_buffer(size + StepStats.SIZE)  # [gradient rows..., StepStats]
        loss = 0.0
        if batch is not None and batch.batch.num_rows:
            loss, grad, _ = self.model.loss_and_gradient(batch, keys, values)
            with np.errstate(over="ignore"):  # beyond float32 it becomes Inf, handled below
                totals[:size] = grad.reshape(-1)
        else:
            totals[:size] = 0.0
        StepStats.of_batch(batch, loss, stop=self.stop_request.requested, epoch_end=pending.ends_epoch,
                           first_rank=self.group.rank == 0).write(totals[size:])
        local_finite = all_finite(totals)
        self.group.allreduce_sum(totals)
        summed = StepStats.read(totals[size:])
        loss_sum, rows = summed.loss, int(summed.rows)
        if not self.checks.finite(self.clock, summed_finite=all_finite(totals), local_finite=local_finite):
            loss_sum, rows = 0.0, 0  # the step is skipped: no push, no samples counted
        self.checks.loss(self.clock, loss_sum=loss_sum, rows=rows, positives=summed.positives,
                         largest_value=summed.largest_value)
        kept = None  # positions of the rows the group keeps itself (model.dense_in_group), not pushed every step
        if rows and self.group_rows is not None:  # every member updates its copy of them
            kept = np.searchsorted(keys, self.group_rows.keys)
            self.group_rows.apply(totals[:size].reshape(-1, self.model.width)[kept] / rows, self.leader is not None)
        if self.leader is not None:
            self._lead_step(keys, values, totals[:size], rows, kept, summed.stop > 0)
        self.clock += 1
        self.meter.add(rows, loss_sum)
        result.steps, result.samples = self.clock, result.samples + rows
        result.train_loss_sum += loss_sum
        self._after_step(result, epoch_ended=summed.epoch_end > 0)

    def _after_step(self, result: GroupResult, epoch_ended: bool) -> None:
        """A checkpoint cut, a validation and a progress line, each if due now."""
        if self.leader is not None:
            every = self.config.train.checkpoint_every
            if (every and self.clock % every == 0) or self.schedule.cut_due(self.clock):
                self.leader.checkpoint(self.clock, result, self.clock)
        if self.validation is not None and self.validation.due(self.clock, epoch_ended):
            self._validate(result, epoch_ended)
        if self.progress is not None:
            self.progress.maybe_report(self.clock)

    def _validate(self, result: GroupResult, epoch_ended: bool) -> None:
        """Evaluate the held-out rows now (every member); the leader asks for the stop early stopping calls for."""
        assert self.validation is not None
        stop = self.validation.run(self.clock, epoch_ended)
        result.validation_logloss = self.validation.last.logloss if self.validation.last else math.nan
        if self.validation.best_clock >= 0:
            result.best_clock, result.best_logloss = self.validation.best_clock, self.validation.best_logloss
        if stop and self.leader is not None:
            result.early_stopped = True
            self.leader.request_stop()

    def _lead_step(self, keys: np.ndarray, values: np.ndarray, gradient_sum: np.ndarray, rows: int,
                   kept: np.ndarray | None, stop_asked: bool) -> None:
        """The leader's end of a step: a stop request, injected slowness, the push and the clock."""
        assert self.leader is not None
        if stop_asked:
            self.leader.request_stop()
        self.faults.end_step(self.leader.ps_seconds)
        gradient = None
        on_ps: np.ndarray | slice = slice(None)  # every row (views, no copies), unless the group keeps some itself
        if rows:
            gradient = (gradient_sum / rows).reshape(-1, self.model.width)  # a new array (sent zero-copy)
            if kept is not None:
                on_ps = np.ones(keys.size, dtype=bool)
                on_ps[kept] = False
        self.leader.push_step(keys, gradient, values, on_ps, self.clock)

    # -- the final evaluation -----------------------------------------------------------------------

    def _evaluate(self, result: GroupResult) -> None:
        """One pass over the data with the final model (pulls wait until every group finished)."""
        sums = evaluate_pass(exchange=self.exchange, group=self.group, model=self.model, batches=self.batches(),
                             clock=FINAL_CLOCK)
        result.eval_loss_sum += sums.loss
        result.eval_rows += sums.rows
        result.eval_correct += sums.correct

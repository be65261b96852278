"""The step loop of one worker group: union keys, leader pull, broadcast, gradient, Allreduce, async push.

One step of group ``g`` at clock ``c`` (see DESIGN.md):
1. every rank takes its next minibatch;
2. the leader gathers the union of touched keys;
3. the leader pulls them (answered once SSP allows clock ``c``) and broadcasts them;
4. every rank computes its gradient on the union; one ``Allreduce`` sums them;
5. the leader pushes the mean gradient without waiting and sends ``clock(c + 1)``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ..config import Config
from ..data.batch import Batch
from ..errors import NonFiniteError
from ..metrics import MetricsWriter, RateMeter
from ..models.base import Model, PreparedBatch
from ..preemption import StopRequest
from ..protocol.numerics import all_finite
from ..protocol.wire import FINAL_CLOCK
from ..tables.optimizers import optimizer_from_config
from ..tier import TierView
from .client import PSClient
from .filters import PushFilter
from .group import WorkerGroup
from .group_rows import GroupRows

__all__ = ["GroupTrainer", "GroupResult", "TRAFFIC_FIELDS"]

TRAFFIC_FIELDS = ("sent", "received", "push_raw", "push_filtered", "keys_in", "keys_after_cache", "keys_out",
                  "values_in", "values_out")
"""A leader's PS traffic in bytes: on the wire both ways; pushes before and after the filters and encoding
(float32 keys + values, one replica); key frames before the key cache, after it and after compression;
pushed value frames before and after compression."""

log = logging.getLogger(__name__)

_STATS = 4  # extra slots at the end of the Allreduce buffer: loss sum, rows, correct predictions, stop signals


@dataclass
class _Exchange:
    """A step's input on its way: the rank's prepared batch, the leader's key union and its pull in flight."""

    batch: PreparedBatch | None
    union: np.ndarray | None
    ticket: object | None


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
    train_seconds: float = 0.0
    ps_seconds: float = 0.0  # the leader's time blocked on the PS tier during training
    traffic: np.ndarray = field(default_factory=lambda: np.zeros(len(TRAFFIC_FIELDS)))  # bytes, TRAFFIC_FIELDS

    def as_array(self) -> np.ndarray:
        """The numbers as a float64 vector (for a world-level sum); the traffic counters come last."""
        return np.concatenate([np.array(
            [self.steps, self.samples, self.train_loss_sum, self.eval_loss_sum, self.eval_correct, self.eval_rows,
             self.seconds, self.preempted, self.train_seconds, self.ps_seconds],
            dtype=np.float64,
        ), self.traffic])


class GroupTrainer:
    """Runs training (and the final evaluation pass) for this rank's group.

    Args:
        config: the job configuration.
        group: the group's collectives.
        group_id: this group's id.
        model: the model (``hybrid_ps.models.base.Model``).
        batches: returns an iterator over this rank's minibatches for one pass.
        client: the PS client (leader only, ``None`` elsewhere).
        metrics: the metrics file (the first leader only).
        publish: leaders only; called with (cut clock, results so far) after every
            shard wrote its part of a checkpoint, to publish it.
        start_clock: the clock training continues at (resuming, or joining a running tier).
        skip_batches: minibatches every rank skips first (those trained before a resumed
            cut; ``None``: as many as ``start_clock``).
        tier_view: reads the tier's current shards (when the tier announces a change).
        stop_request: this process's preemption flag; any rank's flag stops the
            whole job at one clock, with a checkpoint.
    """

    def __init__(
        self,
        config: Config,
        group: WorkerGroup,
        group_id: int,
        model: Model,
        batches: Callable[[], Iterable[Batch]],
        client: PSClient | None = None,
        metrics: MetricsWriter | None = None,
        publish: Callable[[int, "GroupResult"], None] | None = None,
        start_clock: int = 0,
        stop_request: StopRequest | None = None,
        skip_batches: int | None = None,
        tier_view: Callable[[], TierView] | None = None,
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
        self.skip_batches = start_clock if skip_batches is None else skip_batches
        self.tier_view = tier_view  # where the tier's shards are now (a PS tier of its own; see tier.py)
        self.stop_request = stop_request or StopRequest()
        self._stopping = False  # leader: the stop clock is reached
        self._stop_sent = False
        self._clock_tickets: collections.deque = collections.deque(maxlen=2)  # the last two CLOCK messages
        self.meter = RateMeter()
        self._next_report = time.monotonic() + config.train.log_interval
        # at s = 0 a prefetched pull waits for this group's own next clock anyway: nothing to overlap
        self._prefetch = config.train.prefetch and config.cluster.staleness >= 1
        self._delay_group = config.train.delay_group == group_id
        self._delay = config.train.delay_seconds if self._delay_group else 0.0
        self._ps_seconds = 0.0  # leader: time blocked on the PS tier (pull and clock waits, push sends)
        self._prepared: dict[int, PreparedBatch] = {}  # preloaded data: id(batch) -> its prepared form
        self._straggle_draws = np.random.default_rng([config.data.seed, group_id])
        self._cycle_mark = (time.monotonic(), 0.0)  # leader: (time, PS seconds) when the last step ended
        comm = config.comm
        self.push_filter = PushFilter(model.width, comm.filter_threshold, comm.filter_relative,
                                      config.optimizer.l1 if comm.kkt else 0.0, comm.value_encoding)
        self.group_rows = None  # model.dense_in_group: the dense blocks kept on every member (group_rows.py)
        if config.model.dense_in_group and model.dense_keys().size:
            self.group_rows = GroupRows(model.dense_keys(), model.width, optimizer_from_config(config.optimizer),
                                        config.model.dense_sync_every)
        self._report_mark = (0, np.zeros(len(TRAFFIC_FIELDS)))  # leader: (clock, traffic) at the last progress line

    def run(self) -> GroupResult:
        """Train, evaluate if configured, and leave the PS tier; returns the group's sums."""
        result = self._result = GroupResult()
        self._train(result)
        result.preempted = self.group.broadcast_flag(self._stopping)
        if result.preempted:
            if self.client is not None:
                self._checkpoint(self.clock, result)
                log.warning("preempted: stopped at clock %d%s", self.clock,
                            "; resume with --resume latest" if self.publish else "")
        else:
            if self.client is not None:
                self._flush_filter()
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

    def _start_exchange(self, batch: Batch | None, clock: int) -> "_Exchange":
        """Steps 2-3a: union of the members' keys; the leader sends the pull for ``clock`` (not waited for)."""
        prepared = self._prepare(batch) if batch is not None else None
        union = self.group.gather_keys(prepared.keys if prepared is not None else None)
        ticket = None
        if self.group.is_leader and union is not None:
            if self.group_rows is not None:
                union = self.group_rows.pull_keys(union, clock)
            ticket = self.client.pull(union, clock)
        return _Exchange(prepared, union, ticket)

    def _prepare(self, batch: Batch) -> PreparedBatch:
        """The model's view of ``batch``; with preloaded data (the same batches every pass) worked out once."""
        if not self.config.data.preload:
            return self.model.prepare(batch)
        prepared = self._prepared.get(id(batch))
        if prepared is None or prepared.batch is not batch:
            prepared = self._prepared[id(batch)] = self.model.prepare(batch)
        return prepared

    def _finish_exchange(self, exchange: "_Exchange", can_stop: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """Step 3b: the leader waits for the pulled values and broadcasts them; ``None`` = stop (everybody).

        With ``can_stop`` the leader first checks whether shard 0 announced a stop clock this group reached.
        """
        values = None
        if self.group.is_leader:
            if self._delay and exchange.union is not None:
                time.sleep(self._delay)  # here the members wait in a quiet broadcast, not a spinning Allreduce
            if can_stop:
                self._stopping = self._stop_clock_reached()
                if not self._stopping and self.client.reshard_at == self.clock:
                    self._reshard()
            if exchange.ticket is not None and not self._stopping:
                values = self._wait_on_ps(exchange.ticket)
        union = None if self._stopping else exchange.union
        pulled = self.group.broadcast_pulled(union, values, self.model.width)
        if pulled is not None and self.group_rows is not None:
            pulled = self.group_rows.merged(*pulled)
        return pulled

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
        upcoming = self._start_exchange(next(batches, None), self.clock) if more_steps(self.clock) else None
        while upcoming is not None:
            current = upcoming
            pulled = self._finish_exchange(current, can_stop=True)
            if pulled is None:
                break
            upcoming = None
            if self._prefetch and more_steps(self.clock + 1):
                upcoming = self._start_exchange(next(batches, None), self.clock + 1)
            self._step(current.batch, *pulled, result)
            if not self._prefetch and more_steps(self.clock):
                upcoming = self._start_exchange(next(batches, None), self.clock)
        result.train_seconds, result.ps_seconds = self.meter.elapsed, self._ps_seconds
        if self.client is not None:
            result.traffic = self._traffic()

    def _step(self, batch: PreparedBatch | None, keys: np.ndarray, values: np.ndarray, result: GroupResult) -> None:
        """Steps 4-5: gradient, one Allreduce (gradient + stats), the leader's push and clock."""
        size = keys.size * self.model.width
        totals = self.group.reduce_buffer(size + _STATS)  # [gradient rows..., loss, rows, (unused), stop]
        loss, rows = 0.0, 0
        if batch is not None and batch.batch.num_rows:
            loss, grad, _ = self.model.loss_and_gradient(batch, keys, values)
            with np.errstate(over="ignore"):  # beyond float32 it becomes Inf, handled below
                totals[:size] = grad.reshape(-1)
            rows = batch.batch.num_rows
        else:
            totals[:size] = 0.0
        totals[size:] = (loss, rows, 0.0, self.stop_request.requested)
        local_finite = all_finite(totals)
        self.group.allreduce_sum(totals)
        loss_sum, rows = float(totals[-4]), int(totals[-3])
        if not all_finite(totals):  # the same sum on every member: they all take this branch
            self._non_finite_gradient(local_finite)
            loss_sum, rows = 0.0, 0  # the step is skipped: no push, no samples counted
        kept = None  # positions of the rows the group keeps itself (model.dense_in_group), not pushed every step
        if rows and self.group_rows is not None:  # every member updates its copy of them
            kept = np.searchsorted(keys, self.group_rows.keys)
            self.group_rows.apply(totals[:size].reshape(-1, self.model.width)[kept] / rows, self.group.is_leader)
        pushes: list[tuple[np.ndarray, np.ndarray]] = []  # the leader's pushes of this step
        if self.group.is_leader:
            if totals[-1] and not self._stop_sent:
                self.client.request_stop()
                self._stop_sent = True
            self._slow_down()
            if rows:
                gradient = (totals[:size] / rows).reshape(-1, self.model.width)  # a new array (sent zero-copy)
                on_ps = slice(None)  # every row (views, no copies), unless the group keeps some itself
                if kept is not None:
                    on_ps = np.ones(keys.size, dtype=bool)
                    on_ps[kept] = False
                sent_keys, sent = self.push_filter.apply(keys[on_ps], gradient[on_ps], values[on_ps])
                if sent_keys.size:
                    pushes.append((sent_keys, sent))
            if self.group_rows is not None and self.group_rows.due(self.clock):
                pushes.append(self.group_rows.drain())
            self._clock_tickets.append(self._push_and_clock(pushes))
        self.clock += 1
        self.meter.add(rows, loss_sum)
        result.steps, result.samples = self.clock, result.samples + rows
        result.train_loss_sum += loss_sum
        if self.group.is_leader:
            every = self.config.train.checkpoint_every
            if every and self.clock % every == 0:
                self._checkpoint(self.clock, result)
        self._maybe_report()

    def _push_and_clock(self, pushes: list[tuple[np.ndarray, np.ndarray]]):
        """Leader: send this step's pushes, the last one also telling the shards the group finished the step
        (``clock(c + 1)`` rides on the push: one message and one reply fewer a step); the ticket to wait on."""
        if not pushes:
            return self.client.clock(self.clock + 1)
        for keys, values in pushes[:-1]:
            self._timed_on_ps(self.client.push, keys, values, self.clock)
        return self._timed_on_ps(self.client.push, *pushes[-1], self.clock, True)

    def _non_finite_gradient(self, local_finite: bool) -> None:
        """The group's gradient has a NaN or Inf: name the ranks, then stop or skip (``train.on_nonfinite``).

        Raises:
            NonFiniteError: with ``stop``, on every member.
        """
        ranks = self.group.ranks_where(not local_finite)
        where = (f"from group rank(s) {', '.join(map(str, ranks))}" if ranks
                 else "in the sum over the group (float32 overflow)")
        message = f"group {self.group_id}, step {self.clock}: NaN or Inf gradient {where}"
        if self.config.train.on_nonfinite == "stop":
            raise NonFiniteError(f"{message}; stopped (train.on_nonfinite = \"skip\" skips such steps)")
        if self.group.is_leader:
            log.warning("%s; step skipped (nothing pushed)", message)

    def _slow_down(self) -> None:
        """Fault injection: stretch this step's own work (not its PS waits) by ``train.delay_factor``
        in ``delay_group``, or in any group at random with ``straggle_probability``."""
        now = time.monotonic()
        mark, ps_seconds_then = self._cycle_mark
        factor = self.config.train.delay_factor
        if factor > 1 and self._is_straggling():
            work = (now - mark) - (self._ps_seconds - ps_seconds_then)
            time.sleep((factor - 1) * max(work, 0.0))
        self._cycle_mark = (time.monotonic(), self._ps_seconds)

    def _is_straggling(self) -> bool:
        probability = self.config.train.straggle_probability
        if probability > 0:
            return bool(self._straggle_draws.random() < probability)
        return self._delay_group

    def _wait_on_ps(self, ticket) -> np.ndarray | None:
        """Leader: ``client.wait(ticket)``, counting the time blocked on the PS tier."""
        return self._timed_on_ps(self.client.wait, ticket)

    def _timed_on_ps(self, call: Callable, *args):
        started = time.monotonic()
        try:
            return call(*args)
        finally:
            self._ps_seconds += time.monotonic() - started

    def _stop_clock_reached(self) -> bool:
        """Leader: whether shard 0 announced a stop clock that this group has reached.

        Shard 0 answers every CLOCK at once, with the stop clock once there is one.
        Before step ``c + 1`` the leader waits for the answer to ``clock(c)``, not to
        the ``clock(c + 1)`` it just sent: that answer queues behind the shard's work
        on this step's push. Shard 0 picks the stop clock two past the fastest
        group, so reading it one answer late still stops the group in time.
        """
        if len(self._clock_tickets) == 2:
            self._wait_on_ps(self._clock_tickets[0])
        return self.client.stop_at is not None and self.clock >= self.client.stop_at

    def _reshard(self) -> None:
        """Leader: the tier's shards change at this clock: write the cut, move the ranges, publish the cut."""
        clock = self.client.reshard_at
        self._flush_filter()
        cut = self.client.checkpoint(clock)  # the cut every shard moves ranges through
        self.client.reshard(clock, self.tier_view())
        if cut is not None and self.publish is not None:
            self.publish(cut, self._result)

    def _checkpoint(self, clock: int, result: GroupResult) -> None:
        """Leader: stop at ``clock`` until every shard wrote the cut, then publish it."""
        if self.publish is None:
            return
        self._flush_filter()
        cut = self.client.checkpoint(clock)
        if cut is None:
            log.warning("checkpoint at clock %s not published: a shard died while writing it", clock)
            return
        self.publish(cut, result)

    def _flush_filter(self) -> None:
        """Leader: push whatever the filters still hold back (before a cut, and at the end): nothing is lost."""
        keys, values = self.push_filter.flush()
        if keys.size:
            self.client.push(keys, values, self.clock)
        if self.group_rows is not None:
            self.client.push(*self.group_rows.drain(), self.clock)

    def _traffic(self) -> np.ndarray:
        """Leader: the traffic counters so far, in ``TRAFFIC_FIELDS`` order."""
        t, f = self.client.traffic, self.push_filter.stats
        return np.array([t.sent, t.received, f.bytes_in, f.bytes_out, t.keys_in, t.keys_after_cache, t.keys_out,
                         t.values_in, t.values_out], dtype=np.float64)

    def _evaluate(self, result: GroupResult) -> None:
        """One pass over the data with the final model (pulls wait until every group finished)."""
        for batch in self.batches():
            exchange = self._start_exchange(batch, FINAL_CLOCK)
            self._accumulate_eval(exchange.batch, self._finish_exchange(exchange), result)
        while (pulled := self._finish_exchange(self._start_exchange(None, FINAL_CLOCK))) is not None:
            self._accumulate_eval(None, pulled, result)  # other members still have rows

    def _accumulate_eval(self, batch: PreparedBatch | None, pulled: tuple[np.ndarray, np.ndarray] | None,
                         result: GroupResult) -> None:
        totals = np.zeros(_STATS, dtype=np.float64)
        if batch is not None and batch.batch.num_rows:
            keys, values = pulled
            loss, _, probability = self.model.loss_and_gradient(batch, keys, values)
            correct = np.sum((probability > 0.5) == (batch.batch.labels > 0.5))
            totals[:3] = (loss, batch.batch.num_rows, correct)
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
        clock, before = self._report_mark
        now = self._traffic()
        self._report_mark = (self.clock, now)
        window = dict(zip(TRAFFIC_FIELDS, ((now - before) / max(self.clock - clock, 1)).tolist()))
        share = lambda part, whole: 100 * part / whole if whole else 100.0  # noqa: E731
        log.info("step %d | %.0f samples/s (group %d) | train logloss %.4f | clock gap %d | PS out %.0f kB/step, "
                 "in %.0f (pushes %.0f%% after filters, keys %.0f%% after cache and compression)", self.clock, rate,
                 self.group_id, loss, gap, window["sent"] / 1e3, window["received"] / 1e3,
                 share(window["push_filtered"], window["push_raw"]), share(window["keys_out"], window["keys_in"]))
        self.metrics.write("progress", step=self.clock, group=self.group_id, samples_per_s=rate,
                           train_logloss=loss, clock_gap=gap, elapsed=self.meter.elapsed, traffic_per_step=window)

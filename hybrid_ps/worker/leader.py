"""A group leader's side of the PS tier: pulls and pushes (through the filters and the group-kept rows),
the clock, the stop and reshard clocks the shards announce, checkpoints, and the time spent waiting."""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from ..config import Config
from ..errors import CheckpointError
from ..protocol.wire import FINAL_CLOCK
from ..tier import TierView
from .client import Announcement, PSClient, Ticket
from .filters import PushFilter
from .group_rows import GroupRows
from .result import GroupResult

__all__ = ["Leader"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Leader:
    """What only the group's leader does, over its ``PSClient``.

    Args:
        client: the leader's PS client.
        push_filter: drops or encodes what a push sends (``comm.filter_*``, ``comm.kkt``).
        group_rows: rows the group keeps itself (``model.dense_in_group``), pushed every few steps.
        publish: called with (cut clock, results so far) once every shard wrote a checkpoint's part.
        tier_view: reads where the tier's shards are now (a PS tier of its own).
    """

    def __init__(self, *, client: PSClient, push_filter: PushFilter, group_rows: GroupRows | None = None,
                 publish: Callable[[int, GroupResult], None] | None = None,
                 tier_view: Callable[[], TierView] | None = None) -> None:
        self.client = client
        self.push_filter = push_filter
        self.group_rows = group_rows
        self.publish = publish
        self.tier_view = tier_view
        self.ps_seconds = 0.0  # time blocked on the PS tier (pull and clock waits, push sends)
        self._clock_tickets: collections.deque = collections.deque(maxlen=2)  # the last two clock messages
        self._stop_sent = False
        self._unpublished: list[tuple[int, GroupResult]] = []  # cuts taken whose files are being written

    @classmethod
    def for_job(cls, config: Config, *, client: PSClient, width: int, group_rows: GroupRows | None,
                publish: Callable[[int, GroupResult], None] | None,
                tier_view: Callable[[], TierView] | None) -> Leader:
        """A leader with the push filter the job's ``comm`` settings ask for."""
        comm = config.comm
        push_filter = PushFilter(width, comm.filter_threshold, comm.filter_relative,
                                 config.optimizer.l1 if comm.kkt else 0.0, comm.value_encoding)
        return cls(client=client, push_filter=push_filter, group_rows=group_rows, publish=publish,
                   tier_view=tier_view)

    def timed(self, call: Callable[..., _T], *args: object) -> _T:
        """``call(*args)``, counting its time as time blocked on the PS tier."""
        started = time.monotonic()
        try:
            return call(*args)
        finally:
            self.ps_seconds += time.monotonic() - started

    def pull(self, union: np.ndarray, clock: int) -> tuple[np.ndarray, Ticket]:
        """Send the pull of the group's key union for ``clock`` (not waited for): the keys pulled (the
        group-kept rows are left out between their syncs) and the ticket."""
        if self.group_rows is not None:
            union = self.group_rows.pull_keys(union, clock)
        return union, self.client.pull(union, clock)

    def wait(self, ticket: Ticket) -> np.ndarray | None:
        """The pulled values of ``ticket`` (timed)."""
        return self.timed(self.client.wait, ticket)

    def push_step(self, keys: np.ndarray, gradient: np.ndarray | None, values: np.ndarray,
                  on_ps: np.ndarray | slice, clock: int) -> None:
        """Push step ``clock``'s mean gradient (``None``: a step that pushes nothing) and end the step.

        The rows ``on_ps`` go through the push filter; the group-kept rows go when due. The last push
        also tells the shards the group finished the step (``clock + 1`` rides on it), else a CLOCK does.
        """
        pushes: list[tuple[np.ndarray, np.ndarray]] = []
        if gradient is not None:
            sent_keys, sent = self.push_filter.apply(keys[on_ps], gradient[on_ps], values[on_ps])
            if sent_keys.size:
                pushes.append((sent_keys, sent))
        if self.group_rows is not None and self.group_rows.due(clock):
            pushes.append(self.group_rows.drain())
        if not pushes:
            self._clock_tickets.append(self.client.clock(clock + 1))
            return
        for push_keys, push_values in pushes[:-1]:
            self.timed(self.client.push, push_keys, push_values, clock)
        self._clock_tickets.append(self.timed(self.client.push, *pushes[-1], clock, True))

    def request_stop(self) -> None:
        """Ask the coordinating shard for a stop clock (once)."""
        if not self._stop_sent:
            self.client.request_stop()
            self._stop_sent = True

    def must_stop(self, clock: int, result: GroupResult) -> bool:
        """Before step ``clock``: whether the group reached the announced stop clock; moves the tier's
        ranges first if a reshard is announced for this clock.

        Shard 0 answers every CLOCK at once, with the stop clock once there is one. Before step
        ``c + 1`` the leader waits for the answer to ``clock(c)``, not to the ``clock(c + 1)`` it just
        sent: that answer queues behind the shard's work on this step's push. Shard 0 picks the stop
        clock two past the fastest group, so reading it one answer late still stops the group in time.
        """
        if len(self._clock_tickets) == 2:
            self.wait(self._clock_tickets[0])
        if self._unpublished:
            self.publish_written()
        announced = self.client.announced(clock)
        if announced is Announcement.RESHARD:
            self._reshard(clock, result)
        return announced is Announcement.STOP

    def _reshard(self, clock: int, result: GroupResult) -> None:
        """The tier's shards change at ``clock``: write the cut, move the ranges, publish the cut."""
        assert self.tier_view is not None, "only a PS tier of its own announces reshards"
        self.flush(clock)
        cut = self.client.checkpoint(clock)  # the cut every shard moves ranges through (from its .partial files)
        self.client.reshard(clock, self.tier_view())  # once the files are written
        if cut is not None:
            self._unpublished.append((cut, dataclasses.replace(result)))
            self.publish_written(wait=True)

    def checkpoint(self, cut_clock: int, result: GroupResult, clock: int) -> None:
        """At the group's ``clock``: take the cut at ``cut_clock`` (every shard snapshots it and writes its file
        meanwhile), to publish once the files are written (``publish_written``; without ``publish``: nothing).
        The cut after training (``FINAL_CLOCK``) is waited for."""
        if self.publish is None:
            return
        self.flush(clock)
        cut = self.client.checkpoint(cut_clock)
        if cut is None:
            log.warning("checkpoint at clock %s not published: a shard died while taking it", cut_clock)
        else:
            self._unpublished.append((cut, dataclasses.replace(result)))
        self.publish_written(wait=cut_clock == FINAL_CLOCK)

    def publish_written(self, wait: bool = False) -> None:
        """Publish, in order, the cuts whose files every shard wrote (``wait``: all of them, blocking)."""
        while self._unpublished:
            cut, result = self._unpublished[0]
            state = self.timed(self.client.cut_written, cut, wait)
            if state is None:
                return
            self._unpublished.pop(0)
            if state is not True:
                log.warning("checkpoint at clock %d not published: %s", cut, state)
            elif self.publish is not None:
                try:
                    self.publish(cut, result)
                except CheckpointError as e:  # a delta whose base is gone: the next full checkpoint is fine
                    log.warning("checkpoint at clock %d not published: %s", cut, e)

    def flush(self, clock: int) -> None:
        """Push whatever the filters and the group-kept rows still hold back (before a cut, at the end)."""
        keys, values = self.push_filter.flush()
        if keys.size:
            self.client.push(keys, values, clock)
        if self.group_rows is not None:
            self.client.push(*self.group_rows.drain(), clock)

    def finish(self, clock: int) -> None:
        """Training is over: push what is held back and tell the shards this group finished."""
        self.flush(clock)
        self.client.finish()

    def traffic(self) -> np.ndarray:
        """The traffic counters so far, in ``TRAFFIC_FIELDS`` order."""
        t, f = self.client.traffic, self.push_filter.stats
        return np.array([t.sent, t.received, f.bytes_in, f.bytes_out, t.keys_in, t.keys_after_cache, t.keys_out,
                         t.values_in, t.values_out], dtype=np.float64)

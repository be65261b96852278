"""hybrid_ps.worker.exchange (KeyExchange, StepStats) and eval_pass.evaluate_pass with a fake group of one and a
fake leader: no MPI, no sockets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hybrid_ps.data.batch import Batch
from hybrid_ps.models.base import hashed_uniform
from hybrid_ps.models.logistic import LogisticRegression
from hybrid_ps.protocol.wire import FINAL_CLOCK
from hybrid_ps.worker.eval_pass import EvalSums, evaluate_pass
from hybrid_ps.worker.exchange import KeyExchange, StepStats
from hybrid_ps.worker.faults import FaultInjector


class OneRankGroup:
    """A group of one rank, its leader: every collective returns its input; sums are counted."""

    is_leader = True

    def __init__(self) -> None:
        self.allreduces = 0

    def gather_keys(self, keys):
        return None if keys is None else np.array(keys, dtype=np.uint64)

    def broadcast_pulled(self, keys, values, width):
        return None if keys is None else (keys, values)

    def allreduce_sum(self, buffer: np.ndarray) -> np.ndarray:
        self.allreduces += 1
        return buffer


class FakeLeader:
    """Pulls answered from a fixed function of the key; records the pulls and the waits."""

    def __init__(self) -> None:
        self.pulls: list[tuple[list[int], int]] = []
        self.waits: list[int] = []

    @staticmethod
    def values_of(keys: np.ndarray) -> np.ndarray:
        return hashed_uniform(keys, 1, salt=7).astype(np.float32)

    def pull(self, union: np.ndarray, clock: int):
        self.pulls.append((union.tolist(), clock))
        return union, len(self.pulls)  # the ticket: the pull's number

    def wait(self, ticket: int) -> np.ndarray:
        self.waits.append(ticket)
        return self.values_of(np.array(self.pulls[ticket - 1][0], dtype=np.uint64))


class CountingModel(LogisticRegression):
    """Logistic regression counting its ``prepare`` calls."""

    def __init__(self) -> None:
        self.prepared_count = 0

    def prepare(self, batch):
        self.prepared_count += 1
        return super().prepare(batch)


def _batch(rows: int, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    nnz = 3
    return Batch(labels=rng.integers(0, 2, rows).astype(np.float32),
                 indptr=np.arange(0, rows * nnz + 1, nnz, dtype=np.int64),
                 keys=rng.integers(0, 40, rows * nnz).astype(np.uint64),
                 values=rng.uniform(0.5, 2.0, rows * nnz).astype(np.float32))


def _exchange(model=None, leader=None, preload=False):
    model = model or CountingModel()
    leader = leader or FakeLeader()
    group = OneRankGroup()
    exchange = KeyExchange(group=group, model=model, leader=leader, faults=FaultInjector(), group_rows=None,
                           preload=preload)
    return exchange, model, leader, group


def test_start_sends_the_pull_of_the_batch_keys_and_finish_returns_them_with_the_values():
    exchange, model, leader, _ = _exchange()
    batch = _batch(16, seed=1)
    pending = exchange.start(batch, 4)
    expected_keys = model.prepare(batch).keys
    assert leader.pulls == [(expected_keys.tolist(), 4)] and leader.waits == []  # sent, not waited for
    assert pending.batch.batch is batch and pending.ticket == 1
    keys, values = exchange.finish(pending)
    np.testing.assert_array_equal(keys, expected_keys)
    np.testing.assert_array_equal(values, FakeLeader.values_of(expected_keys))
    assert leader.waits == [1]


def test_finish_when_stopping_returns_none_without_waiting_on_the_pull():
    exchange, _, leader, _ = _exchange()
    pending = exchange.start(_batch(8, seed=2), 3)
    assert exchange.finish(pending, stopping=True) is None
    assert len(leader.pulls) == 1 and leader.waits == []


def test_with_no_batch_left_nothing_is_pulled_and_finish_returns_none():
    exchange, _, leader, _ = _exchange()
    pending = exchange.start(None, 5)
    assert pending.batch is None and pending.union is None and pending.ticket is None
    assert exchange.finish(pending) is None
    assert leader.pulls == [] and leader.waits == []


def test_preloaded_batches_are_prepared_once_across_passes():
    exchange, model, _, _ = _exchange(preload=True)
    batches = [_batch(8, seed=3), _batch(8, seed=4)]
    first = [exchange.start(batch, 0).batch for batch in batches]
    second = [exchange.start(batch, 1).batch for batch in batches]
    assert model.prepared_count == 2
    assert all(a is b for a, b in zip(first, second, strict=True))
    exchange.start(_batch(8, seed=3), 2)  # another batch object, however alike: prepared anew
    assert model.prepared_count == 3


def test_without_preload_every_pass_prepares_again():
    exchange, model, _, _ = _exchange(preload=False)
    batch = _batch(8, seed=5)
    exchange.start(batch, 0)
    exchange.start(batch, 1)
    assert model.prepared_count == 2


def test_step_stats_round_trip_through_their_slots_of_a_float64_buffer():
    buffer = np.full(3 + StepStats.SIZE + 2, -1.0)
    stats = StepStats(loss=12.345678901234, rows=128, correct=97, stop=2, epoch_end=1, positives=40, largest_value=7.5)
    stats.write(buffer[3:3 + StepStats.SIZE])
    assert buffer[:3].tolist() == [-1.0] * 3 and buffer[-2:].tolist() == [-1.0] * 2
    assert buffer[3:3 + StepStats.SIZE].tolist() == [12.345678901234, 128.0, 97.0, 2.0, 1.0, 40.0, 7.5]
    assert StepStats.read(buffer[3:3 + StepStats.SIZE]) == stats
    assert StepStats.read(np.zeros(StepStats.SIZE)) == StepStats()
    with pytest.raises(ValueError):
        StepStats.read(np.zeros(StepStats.SIZE + 1))


def test_an_evaluation_pass_sums_what_the_model_computes_on_the_pulled_values():
    exchange, model, leader, group = _exchange()
    batches = [_batch(20, seed=6), Batch.empty(), _batch(13, seed=7)]
    sums = evaluate_pass(exchange=exchange, group=group, model=model, batches=batches, clock=FINAL_CLOCK)
    expected = EvalSums()
    for batch in batches:
        if not batch.num_rows:
            continue
        prepared = model.prepare(batch)
        loss, _, probability = model.loss_and_gradient(prepared, prepared.keys, FakeLeader.values_of(prepared.keys))
        expected.loss += loss
        expected.rows += batch.num_rows
        expected.correct += float(np.sum((probability > 0.5) == (batch.labels > 0.5)))
    assert sums.rows == expected.rows == 33 and isinstance(sums.rows, int)
    assert sums.loss == pytest.approx(expected.loss, rel=1e-12) and sums.loss > 0
    assert sums.correct == expected.correct and 0 < sums.correct < 33
    assert [clock for _, clock in leader.pulls] == [FINAL_CLOCK] * 3  # the empty batch still takes part
    assert leader.waits == [1, 2, 3]
    assert group.allreduces == 3


def test_an_evaluation_pass_over_no_batches_sums_nothing():
    exchange, model, leader, group = _exchange()
    sums = evaluate_pass(exchange=exchange, group=group, model=model, batches=[], clock=FINAL_CLOCK)
    assert (sums.loss, sums.rows, sums.correct) == (0.0, 0, 0.0) and math.isnan(sums.logloss)
    assert leader.pulls == [] and group.allreduces == 0


def test_an_evaluation_pass_counts_the_probabilities_for_the_auc_in_one_more_allreduce():
    exchange, model, leader, group = _exchange()
    batches = [_batch(40, seed=8), _batch(25, seed=9)]
    sums = evaluate_pass(exchange=exchange, group=group, model=model, batches=batches, clock=3, auc_bins=1 << 16)
    labels, scores = [], []
    for batch in batches:
        prepared = model.prepare(batch)
        scores.append(model.loss_and_gradient(prepared, prepared.keys, FakeLeader.values_of(prepared.keys))[2])
        labels.append(batch.labels)
    assert sums.positive_bins.sum() + sums.negative_bins.sum() == 65 == sums.rows
    assert sums.auc == pytest.approx(roc_auc_score(np.concatenate(labels), np.concatenate(scores)), abs=1e-4)
    assert group.allreduces == 3  # two batches and the histograms

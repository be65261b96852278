"""hybrid_ps.worker.validation: ValidationSchedule (counted clocks, cuts for early stopping) and Validation.run
(best tracking, mark_best, early stopping, the ``eval`` metrics records) with a fake group of one rank and a fake
leader: no MPI, no sockets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hybrid_ps.data.batch import Batch
from hybrid_ps.errors import DataError
from hybrid_ps.metrics import MetricsWriter
from hybrid_ps.models.base import hashed_uniform
from hybrid_ps.models.logistic import LogisticRegression
from hybrid_ps.worker import validation as validation_module
from hybrid_ps.worker.eval_pass import EvalSums
from hybrid_ps.worker.exchange import KeyExchange
from hybrid_ps.worker.faults import FaultInjector
from hybrid_ps.worker.validation import AUC_BINS, Validation, ValidationSchedule


class OneRankGroup:
    """A group of one rank (the leader, unless told otherwise): every collective returns its input."""

    def __init__(self, is_leader: bool = True) -> None:
        self.is_leader = is_leader

    def gather_keys(self, keys):
        return None if keys is None else np.array(keys, dtype=np.uint64)

    def broadcast_pulled(self, keys, values, width):
        return None if keys is None else (keys, values)

    def allreduce_sum(self, buffer: np.ndarray) -> np.ndarray:
        return buffer


class FakeLeader:
    """Pulls answered from a fixed function of the key; records the clocks pulled at."""

    def __init__(self) -> None:
        self.pulls: list[tuple[np.ndarray, int]] = []

    def pull(self, union: np.ndarray, clock: int):
        self.pulls.append((union, clock))
        return union, len(self.pulls) - 1  # the ticket: the pull's place

    def wait(self, ticket: int) -> np.ndarray:
        return hashed_uniform(self.pulls[ticket][0], 1, salt=7).astype(np.float32)


def _sums(logloss: float, rows: int = 100) -> EvalSums:
    """Sums of ``rows`` rows with mean loss ``logloss``, 80 correct and a perfect AUC."""
    return EvalSums(loss=logloss * rows, rows=rows, correct=0.8 * rows, positive_bins=np.array([0.0, 3.0]),
                    negative_bins=np.array([2.0, 0.0]))


class ScriptedPass:
    """Stands in for ``evaluate_pass``: each call returns the next logloss's sums; records the calls."""

    def __init__(self, loglosses: list[float]) -> None:
        self.loglosses = list(loglosses)
        self.calls: list[dict] = []

    def __call__(self, **kwargs) -> EvalSums:
        kwargs["batches"] = list(kwargs["batches"])
        self.calls.append(kwargs)
        return _sums(self.loglosses.pop(0))


def _validation(monkeypatch, loglosses, *, every=10, early_stopping=2, metrics=None, is_leader=True):
    scripted = ScriptedPass(loglosses)
    monkeypatch.setattr(validation_module, "evaluate_pass", scripted)
    marked: list[int] = []
    model = LogisticRegression()
    group = OneRankGroup(is_leader)
    exchange = KeyExchange(group=group, model=model, leader=FakeLeader(), faults=FaultInjector(), group_rows=None,
                           preload=False)
    validation = Validation(schedule=ValidationSchedule(every=every, early_stopping=early_stopping),
                            batches=lambda: iter([Batch.empty()]), exchange=exchange, group=group, model=model,
                            metrics=metrics, mark_best=marked.append)
    return validation, scripted, marked


def test_counted_clocks_are_the_multiples_of_every():
    schedule = ValidationSchedule(every=5, early_stopping=0)
    assert [c for c in range(0, 21) if schedule.counted(c)] == [0, 5, 10, 15, 20]
    assert not ValidationSchedule(every=0, early_stopping=3).counted(10)  # after every epoch only


def test_cuts_fall_on_counted_clocks_only_with_early_stopping():
    assert [c for c in range(1, 21) if ValidationSchedule(every=5, early_stopping=2).cut_due(c)] == [5, 10, 15, 20]
    assert not any(ValidationSchedule(every=5, early_stopping=0).cut_due(c) for c in range(1, 21))
    assert not any(ValidationSchedule(every=0, early_stopping=2).cut_due(c) for c in range(1, 21))


def test_due_at_counted_clocks_and_at_the_end_of_an_epoch(monkeypatch):
    validation, _, _ = _validation(monkeypatch, [])
    assert validation.due(10, False) and validation.due(7, True) and not validation.due(7, False)


def test_run_evaluates_the_held_out_batches_at_the_clock(monkeypatch):
    validation, scripted, _ = _validation(monkeypatch, [0.5])
    validation.run(10, False)
    (call,) = scripted.calls
    assert call["clock"] == 10 and call["auc_bins"] == AUC_BINS
    assert call["exchange"] is validation.exchange and call["group"] is validation.group
    assert call["model"] is validation.model and [b.num_rows for b in call["batches"]] == [0]
    assert validation.last.logloss == pytest.approx(0.5)


def test_the_best_is_the_lowest_logloss_at_counted_clocks(monkeypatch):
    validation, _, marked = _validation(monkeypatch, [0.6, 0.5, 0.55, 0.4], early_stopping=5)
    for clock in (10, 20, 30, 40):
        validation.run(clock, False)
        if clock == 20:
            assert (validation.best_clock, validation.best_logloss) == (20, pytest.approx(0.5))
    assert (validation.best_clock, validation.best_logloss) == (40, pytest.approx(0.4))
    assert marked == [10, 20, 40]  # on each improvement, with its clock


def test_an_evaluation_only_at_an_epoch_end_is_reported_but_does_not_count(monkeypatch, tmp_path):
    with MetricsWriter(tmp_path / "metrics.jsonl") as metrics:
        validation, _, marked = _validation(monkeypatch, [0.6, 0.1, 0.1, 0.7], early_stopping=1, metrics=metrics)
        assert validation.run(10, False) is False
        assert validation.run(13, True) is False  # lower, but at no cut: not the best, no patience used
        assert validation.run(17, True) is False
        assert (validation.best_clock, validation.best_logloss, marked) == (10, pytest.approx(0.6), [10])
        assert validation.last.logloss == pytest.approx(0.1)
        assert validation.run(20, True) is True  # counted (20 % 10 == 0) though at an epoch end: no improvement
    records = _records(tmp_path / "metrics.jsonl")
    assert [(r["clock"], r["epoch_end"], r["best"]) for r in records] == [
        (10, False, True), (13, True, False), (17, True, False), (20, True, False)]


def test_mark_best_is_not_called_without_early_stopping(monkeypatch):
    validation, _, marked = _validation(monkeypatch, [0.6, 0.5, 0.4], early_stopping=0)
    for clock in (10, 20, 30):
        assert validation.run(clock, False) is False
    assert marked == [] and validation.best_clock == 30  # the best is still tracked


def test_early_stopping_after_that_many_counted_evaluations_without_improvement(monkeypatch):
    validation, _, marked = _validation(monkeypatch, [0.5, 0.6, 0.5, 0.45, 0.5, 0.46, 0.7], early_stopping=3)
    stops = [validation.run(clock, False) for clock in (10, 20, 30, 40, 50, 60, 70)]
    assert stops == [False, False, False, False, False, False, True]
    assert marked == [10, 40]  # an equal logloss (clock 30) is no improvement
    assert (validation.best_clock, validation.best_logloss) == (40, pytest.approx(0.45))


def test_an_improvement_resets_the_patience(monkeypatch):
    validation, _, _ = _validation(monkeypatch, [0.5, 0.6, 0.4, 0.6, 0.6], early_stopping=2)
    assert [validation.run(clock, False) for clock in (10, 20, 30, 40, 50)] == [False, False, False, False, True]


def test_never_stops_without_early_stopping(monkeypatch):
    validation, _, _ = _validation(monkeypatch, [0.1] + [0.9] * 9, early_stopping=0)
    assert not any(validation.run(clock, False) for clock in range(10, 110, 10))


def test_held_out_data_without_rows_is_a_data_error(monkeypatch):
    validation, scripted, marked = _validation(monkeypatch, [], early_stopping=1)
    monkeypatch.setattr(validation_module, "evaluate_pass", lambda **kwargs: EvalSums())
    with pytest.raises(DataError, match="data.eval_path: the held-out data has no rows"):
        validation.run(10, False)
    assert marked == [] and validation.best_clock == -1 and math.isinf(validation.best_logloss)


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_metrics_file_gets_an_eval_record_per_evaluation(monkeypatch, tmp_path):
    with MetricsWriter(tmp_path / "metrics.jsonl") as metrics:
        validation, _, _ = _validation(monkeypatch, [0.6, 0.5, 0.7], early_stopping=2, metrics=metrics)
        validation.run(10, False)
        validation.run(15, True)
        validation.run(20, False)
    records = _records(tmp_path / "metrics.jsonl")
    assert [r["kind"] for r in records] == ["eval"] * 3
    first = records[0]
    assert set(first) == {"kind", "time", "clock", "epoch_end", "logloss", "auc", "accuracy", "rows", "best"}
    assert (first["clock"], first["epoch_end"], first["rows"], first["best"]) == (10, False, 100, True)
    assert first["logloss"] == pytest.approx(0.6) and first["auc"] == 1.0 and first["accuracy"] == pytest.approx(0.8)
    assert [(r["clock"], r["epoch_end"], r["best"]) for r in records] == [(10, False, True), (15, True, False),
                                                                        (20, False, False)]


def test_a_member_other_than_the_leader_writes_and_marks_nothing_but_stops_alike(monkeypatch, tmp_path):
    with MetricsWriter(tmp_path / "metrics.jsonl") as metrics:
        validation, _, marked = _validation(monkeypatch, [0.5, 0.6], early_stopping=1, metrics=metrics,
                                            is_leader=False)
        assert [validation.run(clock, False) for clock in (10, 20)] == [False, True]
    assert marked == [] and _records(tmp_path / "metrics.jsonl") == []
    assert validation.best_clock == 10


def test_run_with_the_real_evaluation_pass_records_its_figures(tmp_path):
    rng = np.random.default_rng(1)
    batch = Batch(labels=rng.integers(0, 2, 30).astype(np.float32), indptr=np.arange(0, 91, 3, dtype=np.int64),
                  keys=rng.integers(0, 20, 90).astype(np.uint64), values=np.ones(90, np.float32))
    model = LogisticRegression()
    group, leader = OneRankGroup(), FakeLeader()
    exchange = KeyExchange(group=group, model=model, leader=leader, faults=FaultInjector(), group_rows=None,
                           preload=False)
    marked: list[int] = []
    with MetricsWriter(tmp_path / "metrics.jsonl") as metrics:
        validation = Validation(schedule=ValidationSchedule(every=4, early_stopping=1), batches=lambda: [batch],
                                exchange=exchange, group=group, model=model, metrics=metrics,
                                mark_best=marked.append)
        assert validation.run(8, False) is False
    prepared = model.prepare(batch)
    weights = hashed_uniform(prepared.keys, 1, salt=7).astype(np.float32)
    loss, _, probability = model.loss_and_gradient(prepared, prepared.keys, weights)
    (record,) = _records(tmp_path / "metrics.jsonl")
    assert record["rows"] == 30 and record["logloss"] == pytest.approx(loss / 30, rel=1e-9)
    assert record["accuracy"] == pytest.approx(np.mean((probability > 0.5) == (batch.labels > 0.5)))
    assert 0 <= record["auc"] <= 1 and record["best"] is True
    assert [clock for _, clock in leader.pulls] == [8] and marked == [8]

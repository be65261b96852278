"""Metrics against scikit-learn, and the JSONL writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from hybrid_ps.metrics import MetricsWriter, RateMeter, accuracy, auc, logloss

RNG = np.random.default_rng(5)
LABELS = RNG.integers(0, 2, 2000).astype(np.float32)
SCORES = np.clip(0.3 * LABELS + RNG.random(2000) * 0.7, 0, 1)


def test_logloss_matches_sklearn():
    assert logloss(LABELS, SCORES) == pytest.approx(log_loss(LABELS, SCORES), rel=1e-9)


@pytest.mark.parametrize("scores", [SCORES, np.round(SCORES, 1)], ids=["distinct", "ties"])
def test_auc_matches_sklearn(scores):
    assert auc(LABELS, scores) == pytest.approx(roc_auc_score(LABELS, scores), rel=1e-12)


def test_auc_of_one_class_is_nan_and_accuracy():
    assert math.isnan(auc(np.ones(3), np.array([0.1, 0.2, 0.3])))
    assert accuracy(np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.4, 0.6])) == 0.5


def test_metrics_writer_writes_jsonl(tmp_path):
    path = tmp_path / "out" / "metrics.jsonl"
    with MetricsWriter(path) as writer:
        writer.write("progress", step=np.int64(3), loss=np.float32(0.5), staleness=math.inf)
        writer.write("summary", samples=10)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["progress", "summary"]
    assert records[0]["step"] == 3 and records[0]["loss"] == 0.5


def test_rate_meter_windows():
    meter = RateMeter()
    meter.add(100, 50.0)
    rate, loss = meter.window()
    assert rate > 0 and loss == 0.5
    assert meter.window()[1] == 0.0 and meter.samples == 100

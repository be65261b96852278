"""hybrid_ps.metrics: logloss, AUC and accuracy against scikit-learn; the metrics JSONL writer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from hybrid_ps.metrics import (
    MetricsWriter,
    RateMeter,
    StreamingAUC,
    accuracy,
    auc,
    logloss,
)

RNG = np.random.default_rng(5)
LABELS = RNG.integers(0, 2, 3000).astype(np.float32)
PROBABILITIES = np.clip(0.3 * LABELS + RNG.random(3000) * 0.7, 1e-3, 1 - 1e-3)


def _strict_json(line: str) -> dict:
    """Parse one line as RFC 8259 JSON: NaN and Infinity are not JSON."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not valid JSON")

    return json.loads(line, parse_constant=refuse)


# -- logloss ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_logloss_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    probabilities = rng.uniform(0.01, 0.99, 500)
    assert logloss(labels, probabilities) == pytest.approx(log_loss(labels, probabilities, labels=[0, 1]), rel=1e-10)
    assert logloss(LABELS, PROBABILITIES) == pytest.approx(log_loss(LABELS, PROBABILITIES), rel=1e-10)


def test_logloss_of_float32_inputs_is_computed_in_float64():
    probabilities = PROBABILITIES.astype(np.float32)
    expected = log_loss(LABELS, probabilities.astype(np.float64))
    assert logloss(LABELS, probabilities) == pytest.approx(expected, rel=1e-10)


def test_logloss_by_hand_and_clipping():
    assert logloss(np.array([1.0]), np.array([0.5])) == pytest.approx(math.log(2))
    assert logloss(np.array([1, 0]), np.array([0.8, 0.1])) == pytest.approx(-(math.log(0.8) + math.log(0.9)) / 2)
    assert logloss(np.array([1, 0]), np.array([1.0, 0.0])) == pytest.approx(0.0, abs=1e-9)
    wrong = logloss(np.array([1, 0]), np.array([0.0, 1.0]))  # clipped at eps: large but finite
    assert math.isfinite(wrong) and wrong == pytest.approx(-math.log(1e-12), rel=1e-6)


# -- AUC -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 2, 1], ids=["distinct", "ties", "many-ties"])
def test_auc_matches_sklearn(decimals):
    scores = PROBABILITIES if decimals is None else np.round(PROBABILITIES, decimals)
    if decimals is not None:
        assert np.unique(scores).size < scores.size / 10
    assert auc(LABELS, scores) == pytest.approx(roc_auc_score(LABELS, scores), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_on_small_tied_samples(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    labels[:2] = [0, 1]
    scores = rng.integers(0, 4, 40).astype(np.float64)  # heavy ties across both classes
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


def test_auc_by_hand():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert auc(np.array([0, 1, 0, 1]), np.full(4, 0.7)) == 0.5  # all tied
    assert auc(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9])) == 0.75


def test_auc_accepts_any_scores_and_label_types():
    margins = RNG.normal(size=1000) + LABELS[:1000]  # unbounded scores, negative ones included
    expected = roc_auc_score(LABELS[:1000], margins)
    assert auc(LABELS[:1000], margins) == pytest.approx(expected, rel=1e-12)
    assert auc(LABELS[:1000].astype(bool), margins) == pytest.approx(expected, rel=1e-12)
    assert auc(list(LABELS[:1000]), list(margins)) == pytest.approx(expected, rel=1e-12)


def test_auc_is_invariant_to_monotone_transforms_and_row_order():
    base = auc(LABELS, PROBABILITIES)
    assert auc(LABELS, np.log(PROBABILITIES)) == pytest.approx(base, rel=1e-12)
    order = RNG.permutation(LABELS.size)
    assert auc(LABELS[order], PROBABILITIES[order]) == pytest.approx(base, rel=1e-12)


def test_auc_of_one_class_is_nan():
    assert math.isnan(auc(np.ones(3), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(auc(np.zeros(3), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(auc(np.zeros(0), np.zeros(0)))


def test_streaming_auc_is_close_to_the_exact_auc():
    streaming = StreamingAUC()
    for start in range(0, LABELS.size, 700):
        streaming.add(LABELS[start : start + 700], PROBABILITIES[start : start + 700])
    assert streaming.value() == pytest.approx(roc_auc_score(LABELS, PROBABILITIES), abs=1e-5)
    assert math.isnan(StreamingAUC(16).value())


# -- accuracy --------------------------------------------------------------------------------------


def test_accuracy_matches_sklearn():
    expected = accuracy_score(LABELS > 0.5, PROBABILITIES > 0.5)
    assert accuracy(LABELS, PROBABILITIES) == pytest.approx(expected, rel=1e-12)


def test_accuracy_by_hand():
    assert accuracy(np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.4, 0.6])) == 0.5
    assert accuracy(np.array([0, 0]), np.array([0.5, 0.5])) == 1.0  # p = 0.5 predicts the negative class
    assert accuracy(np.array([1]), np.array([0.5])) == 0.0
    assert accuracy(np.array([1.0, 0.0, 1.0]), np.array([0.51, 0.49, 1.0])) == 1.0


# -- RateMeter -------------------------------------------------------------------------------------


def test_rate_meter_windows():
    meter = RateMeter()
    meter.add(100, 50.0)
    meter.add(100, 30.0)
    rate, loss = meter.window()
    assert rate > 0 and loss == pytest.approx(0.4)
    assert meter.window() == (0.0, 0.0)
    assert meter.samples == 200 and meter.loss_sum == 80.0 and meter.elapsed >= 0


# -- MetricsWriter ---------------------------------------------------------------------------------


def test_metrics_writer_writes_one_json_object_a_line(tmp_path):
    path = tmp_path / "out" / "nested" / "metrics.jsonl"  # parent directories are created
    with MetricsWriter(path) as writer:
        writer.write("config", layout="8 ranks", config={"cluster": {"staleness": "inf"}})
        writer.write("progress", step=np.int64(3), group=np.int32(1), loss=np.float32(0.5),
                     rate=np.float64(12.5), clocks=np.array([1, 2, 3]), path=Path("/x/y"), flag=True, nothing=None)
        assert len(path.read_text().splitlines()) == 2  # flushed after every record
        writer.write("summary", samples=10)
    lines = path.read_text().splitlines()
    records = [_strict_json(line) for line in lines]
    assert [r["kind"] for r in records] == ["config", "progress", "summary"]
    assert all(isinstance(r["time"], float) and r["time"] > 1e9 for r in records)
    progress = records[1]
    assert progress["step"] == 3 and isinstance(progress["step"], int)
    assert progress["group"] == 1 and progress["loss"] == 0.5 and progress["rate"] == 12.5
    assert progress["clocks"] == [1, 2, 3] and progress["path"] == "/x/y"
    assert progress["flag"] is True and progress["nothing"] is None
    assert records[0]["config"] == {"cluster": {"staleness": "inf"}}


def test_metrics_writer_starts_a_new_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old line\n")
    writer = MetricsWriter(str(path))
    writer.write("progress", step=1)
    writer.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and _strict_json(lines[0])["step"] == 1


def test_metrics_writer_output_is_valid_json_when_a_metric_is_nan(tmp_path):
    """Regression (found by this test): MetricsWriter.write let json.dumps write NaN/Infinity literally.

    ``auc()`` returns NaN for a one-class set, and ``job._summarise`` writes ``math.nan`` for
    ``final_logloss``/``final_accuracy`` when ``train.final_eval = false``; a line holding ``NaN`` is
    not JSON (RFC 8259): jq, JavaScript and other strict readers reject the file.
    """
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as writer:
        writer.write("summary", final_logloss=math.nan, auc=auc(np.ones(3), np.array([0.1, 0.2, 0.3])),
                     samples_per_s=math.inf)
    line = path.read_text().splitlines()[0]
    try:
        _strict_json(line)
        problem = None
    except ValueError as e:
        problem = str(e)
    assert problem is None, f"BUG: MetricsWriter wrote a line that is not valid JSON ({problem}): {line}"
    assert _strict_json(line)["kind"] == "summary"

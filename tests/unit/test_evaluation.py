"""Evaluating checkpoints: metrics against sklearn, unseen keys, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file
from sklearn.metrics import log_loss, roc_auc_score

from hybrid_ps import checkpoint
from hybrid_ps.data.reader import read_data as read_libsvm
from hybrid_ps.errors import CheckpointError
from hybrid_ps.metrics import StreamingAUC
from hybrid_ps.models.evaluation import evaluate_model
from hybrid_ps.models.logistic import BIAS_KEY


@pytest.fixture
def trained(tmp_path):
    """A libsvm file over features 0..39 and a checkpoint knowing weights for features 0..29 (+ bias)."""
    rng = np.random.default_rng(0)
    x = sp.random(3000, 40, density=0.2, random_state=2, format="csr")
    true = rng.normal(size=40)
    y = (rng.random(3000) < 1 / (1 + np.exp(-(x @ true)))).astype(int)
    data = tmp_path / "eval.svm"
    dump_svmlight_file(x, y, str(data), zero_based=True)
    keys = np.append(np.arange(30, dtype=np.uint64), BIAS_KEY)
    weights = np.append(true[:30], 0.2).astype(np.float32)
    for shard_id, part in enumerate((slice(0, 15), slice(15, None))):
        state = checkpoint.ShardState(shard_id=shard_id, num_shards=2, clock=9, keys=keys[part],
                                      values=weights[part, None], state={}, clock_table=np.array([9]),
                                      finished=np.array([True]), optimizer="sgd", hyperparameters={})
        checkpoint.write_shard_file(checkpoint.partial_dir(tmp_path / "ckpt", 9), state)
    checkpoint.publish(tmp_path / "ckpt", 9, {"model": {"kind": "logistic_regression", "width": 1},
                                              "data": {"source": str(data)}})
    known = np.append(true[:30], np.zeros(10))
    probability = 1 / (1 + np.exp(-(x @ known + 0.2)))
    return tmp_path / "ckpt", data, y, probability


def test_metrics_match_a_direct_computation(trained):
    root, data, labels, probability = trained
    batches = read_libsvm(data)
    result = evaluate_model(str(root), [batches.rows(i, min(i + 500, 3000)) for i in range(0, 3000, 500)])
    assert result["rows"] == 3000 and result["clock"] == 9 and result["model_keys"] == 31
    assert result["logloss"] == pytest.approx(log_loss(labels, probability), rel=1e-5)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, probability), abs=1e-4)
    assert result["accuracy"] == pytest.approx(np.mean((probability > 0.5) == labels))
    assert result["unseen_keys"] > 0  # features 30..39 were never trained: they weigh zero


def test_streaming_auc_matches_sklearn():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 20000)
    scores = 1 / (1 + np.exp(-(labels + rng.normal(size=20000))))
    area = StreamingAUC()
    for part in np.array_split(np.arange(20000), 7):
        area.add(labels[part], scores[part])
    assert area.value() == pytest.approx(roc_auc_score(labels, scores), abs=1e-5)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybrid_ps.evaluate", *args], capture_output=True, text=True)


def test_cli_json_and_info(trained):
    root, data, _, _ = trained
    done = _cli(str(root), "--data", str(data), "--format", "json", "--batch-rows", "700")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["rows"] == 3000 and 0.5 < result["auc"] <= 1
    info = _cli(str(root / "ckpt-9" / "model.h5"), "--info", "--format", "json")
    assert json.loads(info.stdout)["total_keys"] == 31
    text = _cli(str(root), "--data", str(data))
    assert "logloss" in text.stdout and "auc" in text.stdout


@pytest.mark.parametrize("setup, message", [
    ("missing", "not a checkpoint"),
    ("bad data", "no such file"),
    ("synthetic", "--data synthetic"),
])
def test_cli_errors_are_one_line(trained, tmp_path, setup, message):
    root, data, _, _ = trained
    args = {"missing": [str(tmp_path / "none"), "--data", str(data)],
            "bad data": [str(root), "--data", str(tmp_path / "none.svm")],
            "synthetic": [str(root), "--data", "synthetic"]}[setup]
    done = _cli(*args)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr


def test_a_checkpoint_of_another_model_kind_is_refused(tmp_path):
    state = checkpoint.ShardState(shard_id=0, num_shards=1, clock=1, keys=np.array([1], np.uint64),
                                  values=np.ones((1, 8), np.float32), state={}, clock_table=np.array([1]),
                                  finished=np.array([True]), optimizer="sgd", hyperparameters={})
    checkpoint.write_shard_file(checkpoint.partial_dir(tmp_path, 1), state)
    checkpoint.publish(tmp_path, 1, {"model": {"kind": "deep_crossing", "width": 8}})
    with pytest.raises(CheckpointError, match="model kind 'deep_crossing' is not one of"):
        evaluate_model(str(tmp_path), [])
    done = _cli(str(tmp_path), "--data", "synthetic")
    assert done.returncode == 1 and "Traceback" not in done.stderr

"""Scoring a checkpoint without MPI: hybrid_ps.load_model(...).predict_proba / predict (models/predictor.py), the
``python -m hybrid_ps.predict`` entry point, feature scales kept in the checkpoint, and the ``best`` pointer
(checkpoint mark_best, pruning, resolve_checkpoint)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file
from sklearn.metrics import log_loss

import hybrid_ps
from hybrid_ps import checkpoint, predict
from hybrid_ps.data.reader import read_data
from hybrid_ps.errors import CheckpointError, ConfigError
from hybrid_ps.models.evaluation import evaluate_model
from hybrid_ps.models.logistic import BIAS_KEY

BIAS = 0.2
SCALE_KEYS = np.array([0, 3, 7, 35], dtype=np.uint64)  # 35: scaled, but never trained (weighs zero anyway)
SCALES = np.array([10.0, 1000.0, 2.5, 50.0], dtype=np.float32)
MODEL = {"kind": "logistic_regression", "width": 1, "bias_key": 2**64 - 1}


def _publish(root, clock: int, weights: np.ndarray, feature_scales=(SCALE_KEYS, SCALES), keep: int = 3):
    """A two-shard checkpoint of logistic regression: ``weights`` for keys 0..len-1, and the bias."""
    keys = np.append(np.arange(weights.size, dtype=np.uint64), BIAS_KEY)
    values = np.append(weights, BIAS).astype(np.float32)[:, None]
    half = keys.size // 2
    for shard_id, part in enumerate((slice(0, half), slice(half, None))):
        state = checkpoint.ShardState(shard_id=shard_id, num_shards=2, clock=clock, keys=keys[part],
                                      values=values[part], state={}, clock_table=np.array([clock]),
                                      finished=np.array([True]), optimizer="sgd", hyperparameters={})
        checkpoint.write_shard_file(checkpoint.partial_dir(root, clock), state)
    info = {"model": MODEL, "data": {"source": "test"}}
    if feature_scales is not None:
        info["feature_scales"] = feature_scales
    return checkpoint.publish(root, clock, info, keep)


def _expected(x: sp.csr_matrix, weights: np.ndarray, scales: dict[int, float]) -> np.ndarray:
    """sigmoid(bias + sum_k w_k * x_k / scale_k) by numpy: columns beyond the weights weigh 0."""
    divisors = np.ones(x.shape[1], dtype=np.float32)
    for key, scale in scales.items():
        if key < x.shape[1]:
            divisors[key] = scale
    known = np.zeros(x.shape[1])
    known[: weights.size] = weights.astype(np.float32)
    scaled_x = x.astype(np.float32).multiply(1 / divisors.astype(np.float64)).tocsr()
    return 1 / (1 + np.exp(-(scaled_x @ known + np.float32(BIAS))))


@pytest.fixture
def trained(tmp_path):
    """A checkpoint root with weights for keys 0..29, and 400 rows over 40 columns (some of large values)."""
    rng = np.random.default_rng(0)
    x = sp.random(400, 40, density=0.2, random_state=3, format="csr", data_rvs=lambda n: rng.uniform(-1, 1, n))
    magnitudes = np.ones(40)
    magnitudes[[0, 3, 7]] = [10.0, 1000.0, 2.5]  # the columns of large values, up to their scales
    x = (x @ sp.diags(magnitudes)).tocsr()
    weights = rng.normal(size=30).astype(np.float32)
    expected = _expected(x, weights, dict(zip(SCALE_KEYS.tolist(), SCALES.tolist(), strict=True)))
    labels = (rng.random(400) < expected).astype(int)
    data = tmp_path / "rows.svm"
    dump_svmlight_file(x, labels, str(data), zero_based=True)
    root = tmp_path / "ckpt"
    _publish(root, 9, weights)
    return root, x, labels, weights, data


def test_predict_proba_is_the_sigmoid_of_the_scaled_features_weighted(trained):
    root, x, _, weights, _ = trained
    model = hybrid_ps.load_model(str(root))
    assert (model.kind, model.clock, model.num_keys) == ("logistic_regression", 9, 31)
    probability = model.predict_proba(x)
    assert probability.shape == (400, 2) and probability.dtype == np.float64
    expected = _expected(x, weights, dict(zip(SCALE_KEYS.tolist(), SCALES.tolist(), strict=True)))
    np.testing.assert_allclose(probability[:, 1], expected, rtol=1e-6)
    np.testing.assert_allclose(probability.sum(axis=1), 1.0, rtol=1e-12)
    unscaled = _expected(x, weights, {})
    assert not np.allclose(probability[:, 1], unscaled, rtol=1e-3)  # the scales were applied


def test_predict_gives_the_more_likely_label(trained):
    root, x, _, _, _ = trained
    model = hybrid_ps.load_model(str(root))
    labels = model.predict(x)
    assert labels.dtype == np.int64 and set(labels.tolist()) == {0, 1}
    np.testing.assert_array_equal(labels, (model.predict_proba(x)[:, 1] > 0.5).astype(np.int64))


def test_a_dense_array_scores_as_its_sparse_matrix(trained):
    root, x, _, _, _ = trained
    model = hybrid_ps.load_model(str(root))
    np.testing.assert_array_equal(model.predict_proba(x.toarray()), model.predict_proba(x))
    np.testing.assert_array_equal(model.predict_proba(x.tocoo()), model.predict_proba(x))


def test_rows_of_unseen_keys_only_score_the_bias(trained):
    root, _, _, _, _ = trained
    model = hybrid_ps.load_model(str(root))
    x = sp.csr_matrix((np.array([5.0, 1.0]), np.array([31, 39]), np.array([0, 1, 2, 2])), shape=(3, 40))
    np.testing.assert_allclose(model.predict_proba(x)[:, 1], 1 / (1 + np.exp(-np.float32(BIAS))), rtol=1e-7)


@pytest.mark.parametrize("rows", [[[0.0, 1.0], [1.0, 0.0]], np.ones(3), "x"])
def test_anything_but_a_matrix_or_a_batch_is_refused(trained, rows):
    model = hybrid_ps.load_model(str(trained[0]))
    with pytest.raises(ConfigError, match="predict_proba takes a scipy sparse matrix"):
        model.predict_proba(rows)
    with pytest.raises(ConfigError):
        model.predict(rows)


def test_predict_writes_one_probability_a_line(trained, tmp_path):
    root, x, _, _, data = trained
    out = tmp_path / "predictions.txt"
    assert predict.main([str(root), "--data", str(data), "--output", str(out), "--batch-rows", "70"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 400
    model = hybrid_ps.load_model(str(root))
    assert lines == [repr(p) for p in model.predict_proba(read_data(data))[:, 1].tolist()]
    np.testing.assert_allclose([float(line) for line in lines], model.predict_proba(x)[:, 1], rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "predictions.txt", "rows.svm"]


def test_predict_to_standard_output(trained, capsys):
    root, _, _, _, data = trained
    assert predict.main([str(root / "ckpt-9"), "--data", str(data), "--output", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = hybrid_ps.load_model(str(root)).predict_proba(read_data(data))[:, 1]
    assert lines == [repr(p) for p in expected.tolist()]


@pytest.mark.parametrize("bad", ["malformed line", "missing file"])
def test_predict_with_bad_data_fails_in_one_line_and_leaves_no_file(trained, tmp_path, capsys, bad):
    root, _, _, _, data = trained
    if bad == "malformed line":  # 300 good rows (written before the error, in batches of 50), then a bad one
        lines = data.read_text().splitlines()
        data = tmp_path / "bad.svm"
        data.write_text("\n".join(lines[:300] + ["1 3:x"] + lines[300:]) + "\n")
    else:
        data = tmp_path / "none.svm"
    out = tmp_path / "out" / "predictions.txt"
    out.parent.mkdir()
    assert predict.main([str(root), "--data", str(data), "--output", str(out), "--batch-rows", "50"]) == 1
    assert list(out.parent.iterdir()) == []  # neither the file nor its temporary
    error = capsys.readouterr().err
    assert error.startswith("hybrid_ps.predict: error: ") and error.count("\n") == 1
    assert (":301:" if bad == "malformed line" else "none.svm") in error


def test_an_output_in_a_missing_directory_fails_in_one_line(trained, tmp_path, capsys):
    root, _, _, _, data = trained
    out = tmp_path / "no such dir" / "predictions.txt"
    assert predict.main([str(root), "--data", str(data), "--output", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("hybrid_ps.predict: error: --output ") and "cannot write" in error


def test_evaluation_reports_the_logloss_of_the_predicted_probabilities(trained):
    root, _, labels, _, data = trained
    rows = read_data(data)
    probability = hybrid_ps.load_model(str(root)).predict_proba(rows)[:, 1]
    result = evaluate_model(str(root), [rows.rows(i, i + 100) for i in range(0, 400, 100)])
    assert result["rows"] == 400 and result["clock"] == 9
    assert result["logloss"] == pytest.approx(log_loss(labels, probability), rel=1e-9)
    assert result["accuracy"] == pytest.approx(np.mean((probability > 0.5) == labels))


def test_feature_scales_read_back_from_the_checkpoint(trained):
    root, _, _, _, _ = trained
    keys, scales = checkpoint.read_feature_scales(root)
    np.testing.assert_array_equal(keys, SCALE_KEYS)
    np.testing.assert_array_equal(scales, SCALES)
    assert keys.dtype == np.uint64 and scales.dtype == np.float32
    saved = checkpoint.load_saved_model(root / "ckpt-9" / "model.h5")
    np.testing.assert_array_equal(saved.scale_keys, SCALE_KEYS)
    assert int(saved.model_attrs["bias_key"]) == 2**64 - 1


def test_a_checkpoint_without_feature_scales_reads_as_empty_scales_and_scores_raw_values(tmp_path):
    weights = np.array([0.5, -1.0, 2.0], np.float32)
    _publish(tmp_path, 4, weights, feature_scales=None)
    keys, scales = checkpoint.read_feature_scales(tmp_path)
    assert keys.size == 0 and scales.size == 0 and keys.dtype == np.uint64 and scales.dtype == np.float32
    model = hybrid_ps.load_model(str(tmp_path))
    assert len(model.scales) == 0
    x = sp.csr_matrix(np.array([[4.0, 0.0, 1.0], [0.0, 3.0, 0.0]]))
    np.testing.assert_allclose(model.predict_proba(x)[:, 1], _expected(x, weights, {}), rtol=1e-7)


def test_best_is_never_pruned_and_both_pointers_resolve_to_their_targets(tmp_path):
    weights = np.array([0.5], np.float32)
    _publish(tmp_path, 1, weights, keep=1)
    checkpoint.mark_best(tmp_path, 1)
    assert (tmp_path / "best").read_text() == "ckpt-1\n"
    for clock in (2, 3, 4):
        _publish(tmp_path, clock, weights, keep=1)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-1", "ckpt-4"]
    assert checkpoint.resolve_checkpoint(tmp_path / "best") == tmp_path / "ckpt-1"
    assert checkpoint.resolve_checkpoint(tmp_path / "latest") == tmp_path / "ckpt-4"
    assert checkpoint.resolve_checkpoint(tmp_path) == tmp_path / "ckpt-4"
    assert hybrid_ps.load_model(str(tmp_path / "best")).clock == 1
    assert hybrid_ps.load_model(str(tmp_path / "best")).path == str(tmp_path / "ckpt-1")


def test_best_may_name_a_cut_before_it_is_published_and_moves_on(tmp_path):
    weights = np.array([0.5], np.float32)
    _publish(tmp_path, 1, weights, keep=1)
    checkpoint.mark_best(tmp_path, 2)  # being published by another leader
    _publish(tmp_path, 2, weights, keep=1)
    checkpoint.mark_best(tmp_path, 3)
    _publish(tmp_path, 3, weights, keep=1)
    _publish(tmp_path, 4, weights, keep=1)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-3", "ckpt-4"]  # the old best goes
    assert checkpoint.resolve_checkpoint(tmp_path / "best") == tmp_path / "ckpt-3"


def test_keep_counts_the_best_cut_when_it_is_among_the_newest(tmp_path):
    weights = np.array([0.5], np.float32)
    for clock in (1, 2, 3):
        _publish(tmp_path, clock, weights, keep=2)
        checkpoint.mark_best(tmp_path, clock)
    _publish(tmp_path, 4, weights, keep=1)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-3", "ckpt-4"]  # the newest, and the best
    checkpoint.mark_best(tmp_path, 4)
    _publish(tmp_path, 4, weights, keep=1)  # published again: best = latest
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-4"]


def test_a_best_pointer_to_a_missing_cut_is_a_checkpoint_error(tmp_path):
    _publish(tmp_path, 1, np.array([0.5], np.float32))
    checkpoint.mark_best(tmp_path, 7)
    with pytest.raises(CheckpointError, match="points to ckpt-7, which has no model.h5"):
        checkpoint.resolve_checkpoint(tmp_path / "best")

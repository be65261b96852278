"""Real data files through whole mpiexec jobs: part directories of compressed files, Criteo TSV, validation and
early stopping while training, predictions, and raw feature magnitudes that would make a model diverge.

- ``--data DIR``: a directory of plain, gzip, bz2, xz and zstd parts (suffixes or not, multi-member
  files, bookkeeping files beside them) trains on every row exactly once per epoch, whether the compressed
  parts go whole to one rank each or are shared by every rank.
- ``--format criteo`` / ``auto``: a gzipped Criteo-style TSV trains and ``hybrid_ps.evaluate`` reads it in
  the format the model was trained on; a bad line deep inside a gzip part fails the job naming its
  decompressed line number.
- ``--eval-data --eval-every``: ``kind: "eval"`` records at every N clocks and each epoch end;
  ``--early-stopping`` stops the job, keeping checkpoint ``best`` (through ``--keep 1``), whose logloss
  ``hybrid_ps.evaluate`` reproduces.
- ``hybrid_ps.predict`` and ``hybrid_ps.load_model``: one probability a row in input order, the same
  figures as ``hybrid_ps.evaluate`` under scikit-learn's metrics, and for logistic regression the same
  numbers as the checkpoint's weights applied by hand to the scaled features.
- Columns up to 10^6: without scaling the job stops saying it diverged and why; with the default maxabs
  scaling it learns as well as on the same columns scaled to [0, 1].

Every data set is generated here (numpy, scikit-learn's svmlight writer, the codecs' modules). Jobs are small
(-n 2 or -n 3, a few thousand rows); jobs whose checkpoints several tests read run once per module.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import zstandard
from sklearn.datasets import dump_svmlight_file, load_svmlight_file
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

import hybrid_ps
from mpi_launch.detect import (
    find_mpiexec,
    idle_friendly_environment,
    mpi_implementation,
)

pytestmark = pytest.mark.e2e

BIAS_KEY = 2**64 - 1


# == data ======================================================================================================


def _svm_bytes(x, y) -> bytes:
    """Rows in libsvm format, column ``j`` as index ``j`` (the key the model uses)."""
    out = io.BytesIO()
    dump_svmlight_file(x, y, out, zero_based=True)
    return out.getvalue()


def _write_svm(path: Path, x, y) -> Path:
    path.write_bytes(_svm_bytes(x, y))
    return path


def _load_svm(path: Path, features: int):
    return load_svmlight_file(str(path), n_features=features, zero_based=True)


def _compress(codec: str, data: bytes) -> bytes:
    return {"gzip": lambda d: gzip.compress(d, compresslevel=1), "bz2": bz2.compress, "xz": lzma.compress,
            "zstd": zstandard.ZstdCompressor().compress}[codec](data)


def _constant_logloss(labels: np.ndarray) -> float:
    return log_loss(labels, np.full(labels.size, labels.mean()))


SPARSE_FEATURES = 200


def _sparse_problem(rows: int, seed: int = 0):
    """A sparse logistic problem (~10 nonzeros a row); every tenth column's values reach 20 (feature scaling
    divides them), the others stay within [0, 1]. The same model for every ``seed``."""
    model = np.random.default_rng(100)
    magnitude = np.where(np.arange(SPARSE_FEATURES) % 10 == 0, 20.0, 1.0)
    weights = model.normal(0, 1.5, size=SPARSE_FEATURES) / magnitude
    rng = np.random.default_rng(seed)
    x = sp.random(rows, SPARSE_FEATURES, density=0.05, random_state=seed + 1, format="csr")
    x = sp.csr_matrix(x @ sp.diags(magnitude))
    y = (rng.random(rows) < 1 / (1 + np.exp(-(x @ weights - 0.3)))).astype(int)
    return x, y


def _criteo_lines(rows: int, seed: int) -> list[str]:
    """Criteo-style lines: label, 13 counts (I2 may be negative), 26 hex categories of 12 values each;
    about one field in ten empty. Labels from a logistic model of the categories and log counts."""
    model = np.random.default_rng(12345)
    vocabulary = model.integers(0, 2**32, size=(26, 12))
    category_weights = model.normal(0, 1.0, size=(26, 12))
    count_weights = model.normal(0, 0.3, size=13)
    rng = np.random.default_rng(seed)
    counts = rng.geometric(0.05, size=(rows, 13)) - 1
    counts[:, 1] -= 2
    no_count = rng.random((rows, 13)) < 0.1
    categories = rng.integers(0, 12, size=(rows, 26))
    no_category = rng.random((rows, 26)) < 0.1
    margin = 0.4 * np.where(no_category, 0, category_weights[np.arange(26), categories]).sum(1)
    margin += np.where(no_count, 0, count_weights * np.sign(counts) * np.log1p(np.abs(counts))).sum(1) - 1.0
    labels = (rng.random(rows) < 1 / (1 + np.exp(-margin))).astype(int)
    lines = []
    for i in range(rows):
        fields = [str(labels[i])]
        fields += ["" if no_count[i, j] else str(counts[i, j]) for j in range(13)]
        fields += ["" if no_category[i, c] else f"{vocabulary[c, categories[i, c]]:08x}" for c in range(26)]
        lines.append("\t".join(fields))
    return lines


def _criteo_bytes(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _criteo_labels(lines: list[str]) -> np.ndarray:
    return np.array([int(line.split("\t", 1)[0]) for line in lines])


def _raw_columns(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """10 dense columns with scales 10^0 .. 10^6 (uniform in [0, scale]); labels from a logistic model of the
    columns in [0, 1] (the same model for every ``seed``)."""
    weights = np.random.default_rng(7).normal(0, 2.0, size=10)
    rng = np.random.default_rng(seed)
    unit = rng.random((rows, 10))
    labels = (rng.random(rows) < 1 / (1 + np.exp(-(unit @ weights - weights.sum() / 2)))).astype(int)
    return unit * np.logspace(0, 6, 10), labels


# == running jobs and the tools ================================================================================


@dataclass
class Trained:
    """A finished job run by a module fixture: its output directory, summary and eval records."""

    output_dir: Path
    summary: dict
    evals: list[dict]
    stderr: str

    @property
    def checkpoints(self) -> Path:
        return self.output_dir / "checkpoints"


def _train(directory: Path, ranks: int, *args: str) -> Trained:
    """``mpiexec -n RANKS python -m hybrid_ps.train ARGS`` as the ``run_job`` fixture starts it (module scope)."""
    mpiexec = find_mpiexec()
    env = {**os.environ, **idle_friendly_environment(mpi_implementation(mpiexec), 32)}
    output_dir = directory / "out"
    command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "hybrid_ps.train", "--output-dir", str(output_dir),
               "--log-interval", "1", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    summary = [r for r in records if r["kind"] == "summary"][-1]
    return Trained(output_dir, summary, [r for r in records if r["kind"] == "eval"], done.stderr)


def _tool(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _evaluate(checkpoint: Path, data: Path, *extra: str) -> dict:
    done = _tool("hybrid_ps.evaluate", checkpoint, "--data", data, "--format", "json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _predict(checkpoint: Path, data: Path, output: Path) -> np.ndarray:
    done = _tool("hybrid_ps.predict", checkpoint, "--data", data, "--output", output)
    assert done.returncode == 0, done.stderr
    return np.loadtxt(output, dtype=np.float64, ndmin=1)


# == part directories, any compression =========================================================================

PART_ROWS = 3000


def _halves(data: bytes) -> tuple[bytes, bytes]:
    """Whole lines in two pieces (for files of two gzip members or two zstd frames)."""
    cut = data.index(b"\n", len(data) // 2) + 1
    return data[:cut], data[cut:]


def _mixed_parts(directory: Path, x, y) -> None:
    """The rows in six parts: plain, gzip of two members, bz2, xz, zstd of two frames, and gzip without a
    suffix (the codec is found by magic bytes); beside them a ``_SUCCESS`` and a ``.crc`` file that are not data."""
    cuts = np.linspace(0, x.shape[0], 7).astype(int)
    pieces = [_svm_bytes(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    (directory / "part-00000.svm").write_bytes(pieces[0])
    (directory / "part-00001.svm.gz").write_bytes(b"".join(_compress("gzip", h) for h in _halves(pieces[1])))
    (directory / "part-00002.svm.bz2").write_bytes(_compress("bz2", pieces[2]))
    (directory / "part-00003.svm.xz").write_bytes(_compress("xz", pieces[3]))
    (directory / "part-00004.svm.zst").write_bytes(b"".join(_compress("zstd", h) for h in _halves(pieces[4])))
    (directory / "part-00005").write_bytes(_compress("gzip", pieces[5]))
    (directory / "_SUCCESS").write_text("not a data line\n")
    (directory / ".part-00000.svm.crc").write_bytes(b"\x00\x01 not data either\n")


def _one_shared_compressed_part(directory: Path, x, y) -> None:
    """A plain part and one zstd part: with 2 reading ranks both decompress it and keep every other row."""
    half = x.shape[0] // 2
    (directory / "part-0.svm").write_bytes(_svm_bytes(x[:half], y[:half]))
    (directory / "part-1.svm.zst").write_bytes(_compress("zstd", _svm_bytes(x[half:], y[half:])))


@pytest.mark.parametrize("layout", [_mixed_parts, _one_shared_compressed_part],
                         ids=["compressed parts whole to one rank each", "one compressed part shared by both ranks"])
def test_a_directory_of_compressed_parts_trains_on_every_row_once_per_epoch(run_job, tmp_path, layout):
    x, y = _sparse_problem(PART_ROWS, seed=3)
    parts = tmp_path / "parts"
    parts.mkdir()
    layout(parts, x, y)
    job = run_job(3, "--data", str(parts), "--epochs", "2", "--batch-size", "128")
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.summary["samples"] == PART_ROWS * 2
    assert job.summary["eval_rows"] == PART_ROWS
    shared = layout is _one_shared_compressed_part
    assert ("every rank decompresses all of them" in job.stderr) == shared
    # the final pass scored the rows the job read; one process reading the directory whole gets the same sums
    whole = _evaluate(job.output_dir / "checkpoints", parts)
    assert whole["rows"] == PART_ROWS
    assert whole["logloss"] == pytest.approx(job.summary["final_logloss"], rel=1e-5)
    assert whole["accuracy"] == pytest.approx(job.summary["final_accuracy"], abs=1.5 / PART_ROWS)
    assert job.summary["final_logloss"] < _constant_logloss(y) - 0.02


# == Criteo TSV ================================================================================================

CRITEO_ROWS = 4000


@pytest.fixture(scope="module")
def criteo_files(tmp_path_factory) -> dict[str, Path]:
    """Gzipped Criteo-style training and test rows; the training rows under a name that says nothing of the
    format (``clicks.gz``) and under one that says criteo to ``--format auto`` (``day_0.tsv.gz``)."""
    directory = tmp_path_factory.mktemp("criteo")
    train, test = _criteo_lines(CRITEO_ROWS, seed=0), _criteo_lines(2000, seed=1)
    files = {"clicks": directory / "clicks.gz", "auto": directory / "day_0.tsv.gz", "test": directory / "held_out.gz"}
    files["clicks"].write_bytes(_compress("gzip", _criteo_bytes(train)))
    files["auto"].write_bytes(files["clicks"].read_bytes())
    files["test"].write_bytes(_compress("gzip", _criteo_bytes(test)))
    assert any("\t\t" in line for line in train), "some fields are empty"
    return files


@pytest.fixture(scope="module")
def criteo_job(tmp_path_factory, criteo_files) -> Trained:
    return _train(tmp_path_factory.mktemp("criteo-job"), 3, "--data", str(criteo_files["clicks"]),
                  "--format", "criteo", "--epochs", "3")


def test_a_criteo_tsv_trains_and_evaluate_reads_it_in_the_trained_format(criteo_job, criteo_files):
    train_labels = _criteo_labels(_criteo_lines(CRITEO_ROWS, seed=0))
    summary = criteo_job.summary
    assert summary["samples"] == 3 * CRITEO_ROWS and summary["eval_rows"] == CRITEO_ROWS
    assert summary["final_logloss"] < _constant_logloss(train_labels) - 0.1
    # 26 columns x 12 categories, 13 integer columns and the bias
    assert hybrid_ps.load_model(str(criteo_job.checkpoints)).num_keys == 26 * 12 + 13 + 1
    on_train = _evaluate(criteo_job.checkpoints, criteo_files["clicks"])  # no --data-format: criteo, as trained
    assert on_train["rows"] == CRITEO_ROWS
    assert on_train["logloss"] == pytest.approx(summary["final_logloss"], rel=1e-5)
    held_out = _evaluate(criteo_job.checkpoints, criteo_files["test"])
    assert held_out["rows"] == 2000 and held_out["unseen_keys"] == 0
    assert held_out["logloss"] < _constant_logloss(_criteo_labels(_criteo_lines(2000, seed=1))) - 0.05


def test_format_auto_reads_a_tsv_gz_name_as_criteo(run_job, criteo_job, criteo_files):
    job = run_job(3, "--data", str(criteo_files["auto"]), "--format", "auto", "--epochs", "3")
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.summary["samples"] == 3 * CRITEO_ROWS
    assert job.summary["final_logloss"] == pytest.approx(criteo_job.summary["final_logloss"], abs=0.01)
    root = job.output_dir / "checkpoints"
    assert _evaluate(root, criteo_files["auto"])["rows"] == CRITEO_ROWS
    # the checkpoint records the format auto chose (criteo), so a held-out name that says nothing reads alike
    assert _evaluate(root, criteo_files["test"])["rows"] == 2000


BAD_CRITEO_LINE = 5 * CRITEO_ROWS + 1  # past the first 4 MiB of decompressed text: a later chunk


def _bad_criteo_part(path: Path) -> None:
    """A gzip part whose line ``BAD_CRITEO_LINE`` has 39 fields (the last category is missing)."""
    good = _criteo_lines(CRITEO_ROWS, seed=0)
    bad = "\t".join(good[7].split("\t")[:-1])
    text = _criteo_bytes(good * 5 + [bad] + good[:100])
    assert len(text) > 4 << 20
    path.write_bytes(_compress("gzip", text))


def _error_lines(stderr: str, message: str) -> list[str]:
    """The error lines of an MPI job's stderr that contain ``message`` (a rank's line may start mid-line)."""
    return re.findall(r"hybrid_ps\.train: rank \d+: error: [^\n]*?" + re.escape(message) + r"[^\n]*", stderr)


def test_a_bad_criteo_line_in_a_gzip_part_fails_the_job_naming_its_decompressed_line(run_job, tmp_path):
    parts = tmp_path / "clicks"
    parts.mkdir()
    (parts / "part-0.gz").write_bytes(_compress("gzip", _criteo_bytes(_criteo_lines(500, seed=2))))
    _bad_criteo_part(parts / "part-1.gz")
    job = run_job(3, "--data", str(parts), "--format", "criteo", "--epochs", "1", timeout=120)
    assert job.returncode != 0
    expected = (f"{parts / 'part-1.gz'}:{BAD_CRITEO_LINE}: expected 40 tab-separated fields (a label, 13 integers, "
                "26 categories), got 39: ")
    assert len(_error_lines(job.stderr, expected)) == 1, job.stderr[-3000:]
    assert "Traceback" not in job.stderr


def test_a_bad_line_in_a_compressed_part_every_rank_reads_is_reported_once(run_job, tmp_path):
    path = tmp_path / "clicks.gz"
    _bad_criteo_part(path)
    job = run_job(3, "--data", str(path), "--format", "criteo", "--epochs", "1", timeout=120)
    assert job.returncode != 0
    found = _error_lines(job.stderr, f"{path}:{BAD_CRITEO_LINE}: expected 40 tab-separated fields")
    assert found, job.stderr[-3000:]  # the line number is right on every rank
    assert len(found) == 1, "\n".join(found)


# == validation while training =================================================================================

TRAIN_ROWS, TEST_ROWS = 2000, 1000
EVAL_EVERY, EPOCHS = 3, 3


@pytest.fixture(scope="module")
def sparse_files(tmp_path_factory) -> dict[str, Path]:
    """Training and held-out rows of ``_sparse_problem``; the held-out file's first row has no features."""
    directory = tmp_path_factory.mktemp("sparse")
    x, y = _sparse_problem(TRAIN_ROWS + TEST_ROWS, seed=0)
    test_x = x[TRAIN_ROWS:].tolil()
    test_x[0, :] = 0
    files = {"train": _write_svm(directory / "train.svm", x[:TRAIN_ROWS], y[:TRAIN_ROWS]),
             "test": _write_svm(directory / "test.svm", sp.csr_matrix(test_x), y[TRAIN_ROWS:])}
    assert files["test"].read_text().splitlines()[0].strip() in ("0", "1")
    return files


@pytest.fixture(scope="module")
def validated(tmp_path_factory, sparse_files) -> Trained:
    """Logistic regression, 1 server + 1 group of 2 workers: 4 steps an epoch (1000 rows a rank, batches of
    256), held-out evaluations every 3 clocks and at each epoch end."""
    return _train(tmp_path_factory.mktemp("validated"), 3, "--data", str(sparse_files["train"]),
                  "--eval-data", str(sparse_files["test"]), "--eval-every", str(EVAL_EVERY),
                  "--epochs", str(EPOCHS))


def test_eval_records_fall_every_n_clocks_and_at_each_epoch_end(validated, sparse_files):
    steps = int(validated.summary["steps_per_group"])
    per_epoch = steps // EPOCHS
    assert per_epoch * EPOCHS == steps == 12
    epoch_ends = {per_epoch * (k + 1) for k in range(EPOCHS)}
    expected = sorted(set(range(EVAL_EVERY, steps + 1, EVAL_EVERY)) | epoch_ends)
    evals = validated.evals
    assert [r["clock"] for r in evals] == expected  # one record a clock, in order: [3, 4, 6, 8, 9, 12]
    assert [r["epoch_end"] for r in evals] == [r["clock"] in epoch_ends for r in evals]
    for record in evals:
        assert record["rows"] == TEST_ROWS
        assert 0 < record["logloss"] < 1 and 0.5 < record["auc"] <= 1 and 0.5 < record["accuracy"] <= 1
    assert evals[-1]["logloss"] < evals[0]["logloss"] - 0.03, "the held-out loss falls while training"
    assert validated.summary["validation_logloss"] == evals[-1]["logloss"]
    final = _evaluate(validated.checkpoints, sparse_files["test"])  # one group: the same values as the last eval
    assert final["logloss"] == pytest.approx(evals[-1]["logloss"], abs=1e-3)


def test_early_stopping_keeps_the_best_cut_and_evaluate_reproduces_its_logloss(run_job, sparse_files):
    """Columns up to 20 left unscaled and ``--lr 3``: the held-out loss swings from cut to cut and soon stops
    reaching new lows (with scaling, adagrad's shrinking steps keep it improving for most of the 40 epochs)."""
    epochs, patience, every = 40, 3, 2
    job = run_job(3, "--data", str(sparse_files["train"]), "--eval-data", str(sparse_files["test"]), "--lr", "3",
                  "--feature-scaling", "none", "--eval-every", str(every), "--early-stopping", str(patience),
                  "--epochs", str(epochs), "--keep", "1")
    assert job.returncode == 0, job.stderr[-3000:]
    summary, root = job.summary, job.output_dir / "checkpoints"
    assert summary["early_stopped"] is True
    assert summary["samples"] < TRAIN_ROWS * epochs / 2, "stopped long before the last epoch"
    assert "early stopping at clock" in job.stderr
    counted = [r for r in job.records("eval") if r["clock"] % every == 0]
    best = min(counted, key=lambda r: r["logloss"])  # the first of the lowest
    assert summary["best_clock"] == best["clock"] and summary["best_logloss"] == best["logloss"]
    later = [r for r in counted if r["clock"] > best["clock"]]
    assert len(later) >= patience and all(r["logloss"] >= best["logloss"] for r in later)
    pointed = (root / "best").read_text().strip()
    assert pointed == f"ckpt-{summary['best_clock']}"
    latest = (root / "latest").read_text().strip()
    published = {p.name for p in root.glob("ckpt-*") if not p.name.endswith(".partial")}
    assert latest != pointed and published == {latest, pointed}, "--keep 1 keeps the latest and the best"
    assert (root / pointed / "model.h5").is_file()
    result = _evaluate(root / "best", sparse_files["test"])
    assert result["clock"] == summary["best_clock"] and result["rows"] == TEST_ROWS
    assert result["logloss"] == pytest.approx(best["logloss"], abs=1e-3)


# == predictions ===============================================================================================


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, validated, sparse_files) -> np.ndarray:
    """``hybrid_ps.predict`` of the validated job's final checkpoint on the held-out file."""
    return _predict(validated.checkpoints, sparse_files["test"], tmp_path_factory.mktemp("predict") / "p.txt")


def test_predict_writes_one_probability_a_row_that_sklearn_scores_as_evaluate_does(validated, sparse_files,
                                                                                    predicted):
    _, labels = _load_svm(sparse_files["test"], SPARSE_FEATURES)
    assert predicted.shape == (TEST_ROWS,) and np.all((predicted > 0) & (predicted < 1))
    report = _evaluate(validated.checkpoints, sparse_files["test"])
    assert report["rows"] == TEST_ROWS
    assert log_loss(labels, predicted) == pytest.approx(report["logloss"], rel=1e-6)
    assert accuracy_score(labels, predicted > 0.5) == pytest.approx(report["accuracy"], abs=1e-6)
    assert roc_auc_score(labels, predicted) == pytest.approx(report["auc"], abs=1e-4)


def test_logistic_regression_predictions_are_the_checkpoint_weights_applied_to_scaled_features(
        validated, sparse_files, predicted):
    with h5py.File(validated.checkpoints / (validated.checkpoints / "latest").read_text().strip() / "model.h5") as f:
        keys, values = f["/model/keys"][()], f["/model/values"][()]
        scale_keys, scales = f["/model/scale_keys"][()], f["/model/scales"][()]
    train_x, _ = _load_svm(sparse_files["train"], SPARSE_FEATURES)
    largest = abs(train_x).max(axis=0).toarray().ravel()
    assert scale_keys.tolist() == np.flatnonzero(largest > 1).tolist()  # the columns reaching 20
    assert scales == pytest.approx(largest[largest > 1], rel=1e-6)
    assert values.shape[1] == 1
    weight = dict(zip(keys.tolist(), values[:, 0].astype(np.float64).tolist(), strict=True))
    w = np.array([weight.get(j, 0.0) for j in range(SPARSE_FEATURES)])
    divisor = np.ones(SPARSE_FEATURES)
    divisor[scale_keys.astype(np.int64)] = scales
    x, labels = _load_svm(sparse_files["test"], SPARSE_FEATURES)
    by_hand = 1 / (1 + np.exp(-(weight[BIAS_KEY] + (x @ sp.diags(1 / divisor)) @ w)))
    assert by_hand[0] == pytest.approx(1 / (1 + np.exp(-weight[BIAS_KEY])))  # the row without features: the bias
    np.testing.assert_allclose(predicted, by_hand, rtol=1e-5, atol=1e-6)
    report = _evaluate(validated.checkpoints, sparse_files["test"])
    assert log_loss(labels, by_hand) == pytest.approx(report["logloss"], rel=1e-5)
    assert accuracy_score(labels, by_hand > 0.5) == pytest.approx(report["accuracy"], abs=1e-6)


def test_load_model_predict_proba_of_a_sparse_matrix_matches_the_predict_file(validated, sparse_files, predicted):
    x, _ = _load_svm(sparse_files["test"], SPARSE_FEATURES)
    proba = hybrid_ps.load_model(str(validated.checkpoints)).predict_proba(x)
    assert proba.shape == (TEST_ROWS, 2)
    np.testing.assert_allclose(proba[:, 1], predicted, rtol=0, atol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_predict_keeps_the_input_order_across_part_files(tmp_path, validated, sparse_files, predicted):
    lines = sparse_files["test"].read_bytes().splitlines(keepends=True)
    parts = tmp_path / "held_out"
    parts.mkdir()
    (parts / "part-0.gz").write_bytes(_compress("gzip", b"".join(lines[:400])))
    (parts / "part-1.svm").write_bytes(b"".join(lines[400:700]))
    (parts / "part-2.zst").write_bytes(_compress("zstd", b"".join(lines[700:])))
    from_parts = _predict(validated.checkpoints, parts, tmp_path / "p.txt")
    np.testing.assert_array_equal(from_parts, predicted)


@pytest.mark.parametrize("model", ["factorization_machine", "wide_deep"])
def test_predict_scores_every_model_kind(run_job, tmp_path, sparse_files, model):
    job = run_job(2, "--data", str(sparse_files["train"]), "--model", model, "--embedding-dim", "4",
                  "--epochs", "2")
    assert job.returncode == 0, job.stderr[-3000:]
    root = job.output_dir / "checkpoints"
    probability = _predict(root, sparse_files["test"], tmp_path / "p.txt")
    assert probability.shape == (TEST_ROWS,) and np.all((probability > 0) & (probability < 1))
    report = _evaluate(root, sparse_files["test"])
    assert report["model"] == model
    _, labels = _load_svm(sparse_files["test"], SPARSE_FEATURES)
    assert log_loss(labels, probability) == pytest.approx(report["logloss"], rel=1e-6)


# == raw magnitudes: scaled, or stopped as diverged ============================================================

RAW_ROWS, RAW_EPOCHS = 5000, 15  # 75,000 samples: more than the divergence guard's 3 windows of 20,000 rows


@pytest.fixture(scope="module")
def raw_files(tmp_path_factory) -> dict[str, Path]:
    """The raw columns (up to 10^6) for training and testing, and the same rows divided by each column's
    largest training value (so in [0, 1])."""
    directory = tmp_path_factory.mktemp("raw")
    x, y = _raw_columns(RAW_ROWS, seed=0)
    test_x, test_y = _raw_columns(2000, seed=1)
    largest = x.max(axis=0)
    return {"train": _write_svm(directory / "train.svm", x, y),
            "test": _write_svm(directory / "test.svm", test_x, test_y),
            "unit_train": _write_svm(directory / "unit_train.svm", x / largest, y),
            "unit_test": _write_svm(directory / "unit_test.svm", test_x / largest, test_y)}


def test_raw_columns_up_to_1e6_without_scaling_stop_the_job_as_diverged(run_job, raw_files):
    job = run_job(3, "--data", str(raw_files["train"]), "--epochs", str(RAW_EPOCHS), "--feature-scaling", "none",
                  timeout=120)
    assert job.returncode != 0
    lines = [line for line in job.stderr.splitlines() if "training diverged" in line]
    assert lines and all("feature values reach" in line for line in lines), job.stderr[-3000:]
    assert re.search(r"feature values reach (9\.\d+e\+05|1e\+06)", lines[0]), lines[0]
    assert "Traceback" not in job.stderr


def test_maxabs_scaling_learns_raw_columns_as_well_as_the_columns_scaled_to_unit_range(run_job, raw_files):
    raw = run_job(3, "--data", str(raw_files["train"]), "--epochs", str(RAW_EPOCHS))
    unit = run_job(3, "--data", str(raw_files["unit_train"]), "--epochs", str(RAW_EPOCHS))
    for job in (raw, unit):
        assert job.returncode == 0, job.stderr[-3000:]
    assert "feature scaling: 9 key(s)" in raw.stderr  # column 0 lies within [0, 1] already
    on_raw = _evaluate(raw.output_dir / "checkpoints", raw_files["test"])["logloss"]
    on_unit = _evaluate(unit.output_dir / "checkpoints", raw_files["unit_test"])["logloss"]
    print(f"held-out logloss: raw columns with maxabs scaling {on_raw:.4f}, columns scaled to [0, 1] {on_unit:.4f}")
    _, test_labels = _load_svm(raw_files["test"], 10)
    assert on_unit < _constant_logloss(test_labels) - 0.05
    assert on_raw == pytest.approx(on_unit, rel=0.05)

"""Smoke tests: every benchmark runs end to end at a tiny size and ends with its ratio line.

Not timed tests: they check the benchmarks still work, never how fast anything is.
Results go to a temporary directory, not over the committed figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpi_launch.detect import find_mpiexec

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *command: str, timeout: float = 300) -> str:
    env = {**os.environ, "HYBRID_PS_BENCH_RESULTS": str(tmp_path)}
    job = subprocess.run(list(command), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-3000:]
    last = job.stdout.strip().splitlines()[-1]
    assert last.startswith("RATIO "), job.stdout[-2000:]
    return job.stdout


def _headline(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / f"{name}.json").read_text())["headline"]


def test_allreduce_benchmark(tmp_path):
    try:
        find_mpiexec()  # what mpi_launch will run: the virtualenv's, $HYBRID_PS_MPIEXEC, or PATH's
    except FileNotFoundError as e:
        pytest.skip(f"{e} (the setup scripts install the mpich wheel)")
    _run(tmp_path, sys.executable, "-m", "mpi_launch", "-n", "2", "--module", "benchmarks.allreduce")
    assert _headline(tmp_path, "allreduce-2ranks")["ratio"] > 0


def test_overlap_benchmark_and_the_summary_of_its_results(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.overlap", "--rows", "20000", "--batch-size", "256")
    assert "leader blocked on PS" in out
    assert 0 <= _headline(tmp_path, "overlap")["ratio"] < 1
    table = subprocess.run([sys.executable, "-m", "benchmarks.summary"], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "HYBRID_PS_BENCH_RESULTS": str(tmp_path)}, check=True).stdout
    assert table.splitlines()[0].startswith("| benchmark |") and "| overlap |" in table


def test_end_to_end_benchmark(tmp_path):
    _run(tmp_path, sys.executable, "-m", "benchmarks.end_to_end", "--rows", "20000", "--features", "5000",
         "--epochs", "1", "--batch-size", "512", "--ranks", "2")
    assert _headline(tmp_path, "end_to_end")["ratio"] > 0


def test_staleness_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.staleness", "--ranks", "5", "--groups", "2",
               "--rows", "10000", "--epochs", "2", "--log-interval", "0.02", "--staleness", "0", "3", timeout=600)
    assert (tmp_path / "staleness.png").stat().st_size > 1000
    assert "transient" in out and _headline(tmp_path, "staleness")["ratio"] > 0


def test_transport_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.transport", "--max-keys", "10000")
    assert out.strip().splitlines()[-1].startswith("RATIO PS transport")
    record = json.loads((tmp_path / "transport.json").read_text())
    assert record["headline"]["ratio"] > 0
    assert {(row["shards"], row["keys"]) for row in record["rows"]} == {(s, n) for s in (1, 2) for n in (1000, 10000)}


def test_shard_apply_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.shard_apply", "--held", "200000", "--batch", "10000")
    assert "push Mkeys/s" in out and _headline(tmp_path, "shard_apply")["ratio"] > 0


def test_memory_benchmark(tmp_path):
    _run(tmp_path, sys.executable, "-m", "benchmarks.memory", "--millions", "0.2", "--widths", "1", "4")
    record = json.loads((tmp_path / "memory.json").read_text())
    assert {(row["optimizer"], row["width"]) for row in record["rows"]} == {
        (name, width) for name in ("sgd", "adagrad", "ftrl") for width in (1, 4)}
    assert all(row["bytes_per_key"] > 0 for row in record["rows"])


def test_replication_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.replication", "--ranks", "4", "--rows", "20000",
               "--repeats", "1", "--timeouts", "0.5", "--rebuild-keys", "50000")
    assert "longest step after the kill" in out and "rebuild s" in out
    record = json.loads((tmp_path / "replication.json").read_text())
    assert record["headline"]["ratio"] > 0 and record["failover_stall_seconds"]["0.5"] >= 0.5
    for how in ("restart", "retire"):
        rebuild = record["rebuild"][f"{how} 50000"]
        assert 0 < rebuild["rows_filled"] < rebuild["keys"] and rebuild["rebuild_seconds"] > 0


def test_compression_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.compression", "--ranks", "4", "--rows", "20000",
               "--epochs", "1", "--long-epochs", "2", "--settings", "bfloat16", "threshold 1e-3")
    assert "fewer bytes" in out
    record = json.loads((tmp_path / "compression.json").read_text())
    results = record["results"]
    assert record["long_epochs"] == 2 and "none" in record["long_results"]
    assert results["threshold 1e-3"]["traffic_per_step"]["push_filtered"] < results["none"]["traffic_per_step"]["push_filtered"]
    assert results["bfloat16"]["ps_bytes_sent_per_step"] < results["none"]["ps_bytes_sent_per_step"]


def test_load_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.load", "--groups", "4", "--processes", "2", "--seconds",
               "1", "--replication", "1", "2", "--universe", "5000")
    assert "updates lost: 0 keys" in out
    record = json.loads((tmp_path / "load.json").read_text())
    assert record["headline"]["ratio"] > 0 and record["lost_keys"] == 0
    runs = {(run["mode"], run["replication"]) for run in record["runs"]}
    assert runs == {(mode, replication) for mode in ("raw", "ps") for replication in (1, 2)}
    assert all(run["pull"]["n"] > 0 and run["push"]["n"] > 0 for run in record["runs"])


def test_security_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.security", "--sizes", "1000", "5000")
    assert "PS speed with CURVE" in out
    rows = json.loads((tmp_path / "security.json").read_text())["results"]
    assert [r["keys"] for r in rows] == [1000, 5000]
    assert all(r["ps_pull_curve_ms"] > 0 and r["raw_push_curve_ms"] > 0 for r in rows)


def test_models_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.models", "--ranks", "4", "--rows", "20000",
               "--features", "500", "--epochs", "1")
    assert "factorization_machine" in out and "wide_deep" in out
    results = json.loads((tmp_path / "models.json").read_text())["results"]
    assert set(results) == {"logistic_regression", "factorization_machine", "wide_deep", "wide_deep, MLP in the group"}
    assert all(r["samples_per_s"] > 0 for r in results.values())


def test_data_read_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.data_read", "--rows", "5000")
    assert "criteo" in out and "sklearn" in out
    results = json.loads((tmp_path / "data_read.json").read_text())["results"]
    assert {"criteo_plain", "criteo_gzip", "criteo_zstd", "libsvm_plain", "libsvm_gzip", "libsvm_zstd"} <= set(results)
    assert all(r["rows_per_s"] > 0 for key, r in results.items() if isinstance(r, dict))


def test_scale_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.scale", "--rows", "20000", "--ranks", "4",
               "--latency-keys", "200000", "--memory-keys", "20000", timeout=600)
    assert "projection to 1e+10 keys" in out
    record = json.loads((tmp_path / "scale.json").read_text())
    assert record["keys"] > 100_000 and record["disk_bytes_per_key"] > 12  # key + AdaGrad value and accumulator
    assert {(m["optimizer"], m["width"]) for m in record["memory"]} == {
        (name, width) for name in ("sgd", "adagrad", "ftrl") for width in (1, 16)}
    assert set(record["checkpoint_latency"]) == {"loop", "snapshot"}
    assert record["resume_load_seconds"] > 0 and record["evaluate_seconds"] > 0


def test_checkpoints_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.checkpoints", "--ranks", "4", "--rows", "20000",
               "--every", "10", "--deltas", "2")
    assert "mean per cut" in out
    record = json.loads((tmp_path / "checkpoints.json").read_text())
    assert record["same_keys"] and record["mean_bytes"]["delta"] < record["mean_bytes"]["full"]


def test_admission_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.admission", "--ranks", "4", "--rows", "30000",
               "--features", "100000", "--holdout", "3000", "--every", "10", "--evict", "20", "--sketch-mb", "0.5")
    assert "held-out logloss" in out
    ways = json.loads((tmp_path / "admission.json").read_text())["ways"]
    assert set(ways) == {"every key", "admission", "eviction", "both"}
    assert ways["eviction"]["evicted"] > 0 and ways["every key"]["evicted"] == 0
    assert ways["both"]["keys_held"] < ways["admission"]["keys_held"] < ways["every key"]["keys_held"]
    assert all(0 < way["holdout_logloss"] < 1 for way in ways.values())


def test_network_benchmark(tmp_path):
    out = _run(tmp_path, sys.executable, "-m", "benchmarks.network", "--ranks", "4", "--rows", "10000",
               "--staleness", "0", "--prefetch", "on", "--rtt", "1", "--gbit", "1", "--repeats", "1", "--batch-sizes")
    assert "leaders' idle share" in out
    record = json.loads((tmp_path / "network.json").read_text())
    runs = {(r["staleness"], r["prefetch"], r["rtt_ms"]): r for r in record["runs"]}
    assert set(runs) == {(s, p, rtt) for s, p in (("0", False), ("2", True)) for rtt in (None, 0.0, 1.0)}  # + defaults
    assert all(r["effective_rtt_ms"] >= 1.0 for key, r in runs.items() if key[2])
    assert all(r["effective_rtt_ms"] > 0 for key, r in runs.items() if key[2] == 0.0)  # through the relay only
    assert all(0 <= r["ps_wait_share"] < 1 and r["samples_per_s"] > 0 for r in runs.values())
    assert record["headline"]["ratio"] > 0

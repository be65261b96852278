"""Feature admission and eviction on an unbounded key stream: keys held, shard memory and logloss, with and without.

Run: ``python -m benchmarks.admission [--ranks 8] [--rows 600000] [--drift 1.0]``.

The stream is the synthetic click log with its id space drifting (``--drift``: the
popularity ranking moves on that many ids per row, so new ids keep arriving and
old ones fade, as in a real click log). The same job runs four ways: as today
(every pushed key gets a row for good), with admission (``--admit-after``), with
eviction at each checkpoint cut (``--evict-after``), and with both. Reported per
way: the keys the shards hold at each cut (from the checkpoints) and at the end,
the shards' table memory (from their logs), samples/s, the progressive logloss
(each batch scored before its update: the stream's own held-out measure) over the
last quarter of training, and the logloss of the final model on the next
``--holdout`` rows of the stream, which it never saw.

RATIO: shard memory (tables and admission counts) without admission and eviction over with both.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py

from hybrid_ps.data.synthetic import SyntheticSpec, generate_all

from .common import finish, print_table, run_job
from .end_to_end import write_text

WAYS = {
    "every key": [],
    "admission": ["--admit-after", "{admit}", "--admit-sketch-mb", "{sketch}"],
    "eviction": ["--evict-after", "{evict}"],
    "both": ["--admit-after", "{admit}", "--admit-sketch-mb", "{sketch}", "--evict-after", "{evict}"],
}


def _table_mib(stderr: str) -> float:
    """The shards' table and admission-count memory at the end, in MiB (from their last log lines)."""
    total = 0.0
    for table, sketch in re.findall(r"keys \(table ([\d.]+) MiB(?:, admission counts ([\d.]+) MiB)?\)", stderr):
        total += float(table) + (float(sketch) if sketch else 0.0)
    return total


def _keys_per_cut(root: Path) -> dict[int, int]:
    """Keys in each published checkpoint, by its clock."""
    held = {}
    for directory in root.glob("ckpt-*"):
        if directory.suffix != ".partial":
            with h5py.File(directory / "model.h5") as f:
                held[int(directory.name.split("-")[1])] = int(f.attrs["total_keys"])
    return dict(sorted(held.items()))


def _holdout_logloss(root: Path, holdout: Path) -> float:
    done = subprocess.run([sys.executable, "-m", "hybrid_ps.evaluate", str(root), "--data", str(holdout),
                           "--format", "json"], capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout)["logloss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--features", type=int, default=2_000_000)
    parser.add_argument("--drift", type=float, default=1.0, help="ids the ranking moves on per row")
    parser.add_argument("--admit", type=int, default=2, help="--admit-after")
    parser.add_argument("--sketch-mb", type=float, default=2.0, help="--admit-sketch-mb (per shard)")
    parser.add_argument("--evict", type=int, default=100, help="--evict-after (clocks)")
    parser.add_argument("--every", type=int, default=20, help="--checkpoint-every (clocks)")
    parser.add_argument("--holdout", type=int, default=40_000, help="rows of the stream after training, held out")
    args = parser.parse_args()
    data = ["--rows", str(args.rows), "--features", str(args.features), "--drift", str(args.drift)]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = SyntheticSpec(rows=args.rows + args.holdout, features=args.features, drift=args.drift)
        holdout = Path(tmp) / "holdout.libsvm"
        write_text(generate_all(spec).rows(args.rows, args.rows + args.holdout), holdout, vowpal=False)
        for way, extra in WAYS.items():
            root = Path(tmp) / way.replace(" ", "-")
            settings = [a.format(admit=args.admit, evict=args.evict, sketch=args.sketch_mb) for a in extra]
            job = run_job(args.ranks, [*data, "--servers", "2", "--replication", "1", "--checkpoint-every",
                                       str(args.every), "--keep", "100000", "--checkpoint-dir", str(root / "ckpt"),
                                       "--epochs", "1", "--final-eval", "false", "--log-interval", "0.5", *settings],
                          root / "run", timeout=3600)
            summary = next(r for r in job.records if r.get("kind") == "summary")
            progress = [r["train_logloss"] for r in job.records
                        if r.get("kind") == "progress" and r.get("train_logloss") is not None]
            progress = progress or [summary["train_logloss_progressive"]]
            cuts = _keys_per_cut(root / "ckpt")
            results[way] = {
                "keys_per_cut": cuts, "keys_held": list(cuts.values())[-1], "memory_mib": _table_mib(job.stderr),
                "samples_per_s": summary["samples_per_s"],
                "progressive_logloss_last_quarter": statistics.mean(progress[-max(1, len(progress) // 4):]),
                "holdout_logloss": _holdout_logloss(root / "ckpt", holdout),
                "evicted": sum(int(n) for n in re.findall(r"evicted (\d+) rows", job.stderr)),
            }
    print(f"{args.rows:,} rows of a stream drifting {args.drift:g} ids a row ({args.features:,}-id power law at 1.1); "
          f"admission after {args.admit} pushes, eviction after {args.evict} clocks at cuts every {args.every}")
    half = {way: list(r["keys_per_cut"].values())[len(r["keys_per_cut"]) // 2] for way, r in results.items()}
    print_table(["", "keys held", "at half time", "memory MiB", "samples/s", "progressive logloss",
                 "held-out logloss", "evicted"],
                [[way, r["keys_held"], half[way], r["memory_mib"], r["samples_per_s"],
                  r["progressive_logloss_last_quarter"], r["holdout_logloss"], r["evicted"]]
                 for way, r in results.items()])
    plain, both = results["every key"], results["both"]
    ratio = plain["memory_mib"] / both["memory_mib"]
    worse = both["holdout_logloss"] / plain["holdout_logloss"] - 1
    finish("admission", {"settings": vars(args), "ways": results}, "shard memory on a drifting stream, every key "
           "kept / admission + eviction", ratio, f"every key kept ({plain['memory_mib']:.0f} MiB), held-out logloss "
           f"{100 * worse:+.2f}%", ">= 2x with held-out logloss within 1%", ratio >= 2 and worse <= 0.01)


if __name__ == "__main__":
    main()

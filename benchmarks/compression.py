"""Selective communication: bytes leaders send to the PS, samples/s and final logloss for each filter/encoding setting.

Run: ``python -m benchmarks.compression [--ranks 8] [--rows 200000]``.

Every setting trains the same job (synthetic data, default optimizer); the three best
are trained again over more epochs, where the key cache pays more (a batch's key lists
repeat every pass). Bytes are
what the leaders' sockets sent (every frame, every replica) per step; "push" is
the logical push volume (float32 keys + values) after the filters, as a share
of the same without them. The headline is the reduction of leader -> PS bytes of
the best setting whose final logloss stays within 1% of no filtering.
"""

from __future__ import annotations

import argparse
import tempfile

from .common import finish, print_table, run_training, summary_of

SETTINGS = {
    "none": [],
    "bfloat16": ["--value-encoding", "bfloat16"],
    "float16": ["--value-encoding", "float16"],
    "float8": ["--value-encoding", "float8"],
    "threshold 1e-4": ["--filter-threshold", "1e-4"],
    "threshold 1e-3": ["--filter-threshold", "1e-3"],
    "relative 0.05": ["--filter-threshold", "0.05", "--filter-relative", "true"],
    "threshold 1e-4 + bfloat16": ["--filter-threshold", "1e-4", "--value-encoding", "bfloat16"],
    "threshold 1e-3 + bfloat16": ["--filter-threshold", "1e-3", "--value-encoding", "bfloat16"],
    "key cache": ["--key-cache", "true"],
    "key cache + bfloat16": ["--key-cache", "true", "--value-encoding", "bfloat16"],
    "key cache + threshold 1e-4 + bfloat16": ["--key-cache", "true", "--filter-threshold", "1e-4",
                                              "--value-encoding", "bfloat16"],
    "zstd": ["--compression", "zstd"],
    "zstd + values": ["--compression", "zstd", "--compress-values", "true"],
    "key cache + zstd + values + bfloat16": ["--key-cache", "true", "--compression", "zstd", "--compress-values",
                                             "true", "--value-encoding", "bfloat16"],
    "key cache + zstd + values + float8": ["--key-cache", "true", "--compression", "zstd", "--compress-values",
                                           "true", "--value-encoding", "float8"],
    "all, threshold 1e-4": ["--key-cache", "true", "--compression", "zstd", "--compress-values", "true",
                            "--value-encoding", "bfloat16", "--filter-threshold", "1e-4"],
}


FIELDS = ("ps_bytes_sent_per_step", "ps_bytes_received_per_step", "traffic_per_step", "samples_per_s",
          "final_logloss")


def measure(names: list[str], ranks: int, rows: int, epochs: int) -> dict[str, dict]:
    """Train the job once per setting (``none`` first) and compare each with ``none``."""
    common = ["--rows", str(rows), "--epochs", str(epochs), "--checkpoint", "false", "--log-interval", "60"]
    results = {}
    for name in dict.fromkeys(["none", *names]):
        with tempfile.TemporaryDirectory() as output:
            summary = summary_of(run_training(ranks, [*common, *SETTINGS[name]], output))
        results[name] = {key: summary[key] for key in FIELDS}
    base = results["none"]
    for r in results.values():
        r["fewer_bytes_sent"] = base["ps_bytes_sent_per_step"] / r["ps_bytes_sent_per_step"]
        r["logloss_change"] = r["final_logloss"] / base["final_logloss"] - 1
    return results


def show(results: dict[str, dict], ranks: int, rows: int, epochs: int) -> None:
    rows_out = []
    for name, r in results.items():
        traffic = r["traffic_per_step"]
        rows_out.append([name, r["ps_bytes_sent_per_step"] / 1e3, f"{r['fewer_bytes_sent']:.2f}x",
                         f"{100 * traffic['push_filtered'] / traffic['push_raw']:.0f}%",
                         f"{100 * traffic['keys_out'] / traffic['keys_in']:.0f}%",
                         r["ps_bytes_received_per_step"] / 1e3, r["samples_per_s"], r["final_logloss"],
                         f"{100 * r['logloss_change']:+.2f}%"])
    print(f"{ranks} ranks, {rows} synthetic rows x {epochs} epochs")
    print_table(["setting", "sent kB/step", "fewer bytes", "push volume", "key bytes", "received kB/step", "samples/s",
                 "final logloss", "vs none"], rows_out)


def best_within_1pct(results: dict[str, dict], count: int = 1) -> list[str]:
    """The settings with the fewest bytes whose final logloss is within 1% of ``none``'s, best first."""
    within = [name for name, r in results.items() if r["logloss_change"] <= 0.01]
    return sorted(within, key=lambda name: -results[name]["fewer_bytes_sent"])[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--long-epochs", type=int, default=6,
                        help="run the three best settings again for this many epochs (0: no)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    results = measure(args.settings, args.ranks, args.rows, args.epochs)
    show(results, args.ranks, args.rows, args.epochs)
    record = {"ranks": args.ranks, "rows": args.rows, "epochs": args.epochs, "results": results}
    best, epochs = best_within_1pct(results)[0], args.epochs
    ratio = results[best]["fewer_bytes_sent"]
    headline = f"leader -> PS bytes, best setting within 1% logloss ({best}, {epochs} epochs)"
    if args.long_epochs:
        long = measure(best_within_1pct(results, 3), args.ranks, args.rows, args.long_epochs)
        show(long, args.ranks, args.rows, args.long_epochs)
        record.update(long_epochs=args.long_epochs, long_results=long)
        long_best = best_within_1pct(long)[0]
        headline = (f"leader -> PS bytes, best setting within 1% logloss ({long_best}, {args.long_epochs} epochs; "
                    f"{ratio:.2f}x at {epochs} epochs)")
        best, ratio = long_best, long[long_best]["fewer_bytes_sent"]
    finish("compression", {**record, "best_within_1pct": best}, headline, ratio, "no filtering", ">= 5", ratio >= 5)


if __name__ == "__main__":
    main()

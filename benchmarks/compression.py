"""Selective communication: bytes leaders send to the PS, samples/s and final logloss for each filter/encoding setting.

Run: ``python -m benchmarks.compression [--ranks 8] [--rows 200000]``.

Every setting trains the same job (synthetic data, default optimizer). Bytes are
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
    "all, threshold 1e-4": ["--key-cache", "true", "--compression", "zstd", "--compress-values", "true",
                            "--value-encoding", "bfloat16", "--filter-threshold", "1e-4"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    common = ["--rows", str(args.rows), "--epochs", str(args.epochs), "--checkpoint", "false", "--log-interval", "60"]
    results, rows = {}, []
    for name in dict.fromkeys(["none", *args.settings]):
        with tempfile.TemporaryDirectory() as output:
            summary = summary_of(run_training(args.ranks, [*common, *SETTINGS[name]], output))
        results[name] = {key: summary[key] for key in (
            "ps_bytes_sent_per_step", "ps_bytes_received_per_step", "traffic_per_step", "samples_per_s",
            "final_logloss")}
    base = results["none"]
    for name, r in results.items():
        r["fewer_bytes_sent"] = base["ps_bytes_sent_per_step"] / r["ps_bytes_sent_per_step"]
        r["logloss_change"] = r["final_logloss"] / base["final_logloss"] - 1
        rows.append([name, r["ps_bytes_sent_per_step"] / 1e3, f"{r['fewer_bytes_sent']:.2f}x",
                     f"{100 * r['traffic_per_step']['push_filtered'] / r['traffic_per_step']['push_raw']:.0f}%",
                     f"{100 * r['traffic_per_step']['keys_out'] / r['traffic_per_step']['keys_in']:.0f}%",
                     r["ps_bytes_received_per_step"] / 1e3, r["samples_per_s"], r["final_logloss"],
                     f"{100 * r['logloss_change']:+.2f}%"])
    print(f"{args.ranks} ranks, {args.rows} synthetic rows x {args.epochs} epochs")
    print_table(["setting", "sent kB/step", "fewer bytes", "push volume", "key bytes", "received kB/step", "samples/s",
                 "final logloss", "vs none"], rows)
    within = {name: r for name, r in results.items() if r["logloss_change"] <= 0.01}
    best = max(within, key=lambda name: within[name]["fewer_bytes_sent"])
    ratio = within[best]["fewer_bytes_sent"]
    finish("compression", {"ranks": args.ranks, "rows": args.rows, "epochs": args.epochs, "results": results,
                           "best_within_1pct": best},
           f"leader -> PS bytes, best setting within 1% logloss ({best})", ratio, "no filtering", ">= 5",
           ratio >= 5)


if __name__ == "__main__":
    main()

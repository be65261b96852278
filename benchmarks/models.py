"""Models side by side: samples/s and final logloss of LR, FM and wide & deep on the same synthetic data.

Run: ``python -m benchmarks.models [--ranks 8] [--rows 200000] [--interactions 0.5]``.

The data has hidden pairwise interactions (``--interactions``): a linear model
cannot fit them, a factorization machine can. Every model trains the default
job layout for the same epochs; the headline is FM's final logloss against
logistic regression's (the baseline measured in the same run), the table also
shows what the embeddings and the MLP on the PS cost in samples/s.
"""

from __future__ import annotations

import argparse
import tempfile

from .common import finish, print_table, run_training, summary_of

MODELS = {
    "logistic_regression": ["--model", "logistic_regression"],
    "factorization_machine": ["--model", "factorization_machine"],
    "wide_deep": ["--model", "wide_deep"],
    "wide_deep, MLP in the group": ["--model", "wide_deep", "--dense-in-group", "true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=10_000)
    parser.add_argument("--nnz-per-row", type=int, default=10)
    parser.add_argument("--interactions", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    common = ["--rows", str(args.rows), "--features", str(args.features), "--nnz-per-row", str(args.nnz_per_row),
              "--interactions", str(args.interactions), "--epochs", str(args.epochs), "--checkpoint", "false",
              "--log-interval", "60"]
    results = {}
    for model, flags in MODELS.items():
        with tempfile.TemporaryDirectory() as output:
            summary = summary_of(run_training(args.ranks, [*common, *flags], output))
        results[model] = {"samples_per_s": summary["samples_per_s"], "final_logloss": summary["final_logloss"],
                          "final_accuracy": summary["final_accuracy"],
                          "ps_bytes_sent_per_step": summary["ps_bytes_sent_per_step"]}
    base = results["logistic_regression"]
    for r in results.values():
        r["speed_vs_lr"] = r["samples_per_s"] / base["samples_per_s"]
        r["logloss_vs_lr"] = r["final_logloss"] - base["final_logloss"]
    print(f"{args.ranks} ranks, {args.rows} synthetic rows x {args.epochs} epochs, interactions {args.interactions}")
    print_table(["model", "samples/s", "vs LR", "final logloss", "vs LR", "accuracy", "PS out kB/step"],
                [[name, r["samples_per_s"], f"{r['speed_vs_lr']:.2f}x", r["final_logloss"],
                  f"{r['logloss_vs_lr']:+.3f}", r["final_accuracy"], r["ps_bytes_sent_per_step"] / 1e3]
                 for name, r in results.items()])
    fm = results["factorization_machine"]
    ratio = base["final_logloss"] / fm["final_logloss"]
    finish("models", {"ranks": args.ranks, "rows": args.rows, "interactions": args.interactions,
                      "epochs": args.epochs, "results": results},
           f"FM final logloss vs LR's on data with pairwise interactions (FM at {fm['speed_vs_lr']:.2f}x LR's "
           f"samples/s)", ratio, "logistic regression", "> 1 (FM below LR)", ratio > 1)


if __name__ == "__main__":
    main()

"""End to end: ``hybrid_ps.train`` vs scikit-learn's ``SGDClassifier`` on the same sparse data.

Run: ``python -m benchmarks.end_to_end [--rows 1000000] [--features 1000000] [--epochs 2]``.

Both train logistic regression on the built-in synthetic data (Criteo-like
power-law hashed features), the same number of passes, and are scored by
logloss on the training rows. Times exclude making the data: SGDClassifier's
fit on a ready CSR matrix, hybrid_ps's training loop after its ranks loaded
their rows (``train_seconds`` of the job summary). SGDClassifier gets the best
of a small ``alpha`` grid (its default learning-rate schedule depends on it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np

from hybrid_ps.data.synthetic import SyntheticSpec, generate_all

from .common import finish, print_table, run_training, summary_of


def sklearn_reference(spec: SyntheticSpec, epochs: int) -> dict:
    """Fit SGDClassifier(log loss) for ``epochs`` passes; the best alpha of a small grid."""
    import scipy.sparse as sp
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import log_loss

    data = generate_all(spec)
    columns, inverse = np.unique(data.keys, return_inverse=True)
    matrix = sp.csr_matrix((data.values, inverse.reshape(-1), data.indptr), shape=(data.num_rows, columns.size))
    best = None
    for alpha in (1e-6, 1e-5, 1e-4):
        model = SGDClassifier(loss="log_loss", alpha=alpha, max_iter=epochs, tol=None, shuffle=False, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            started = time.perf_counter()
            model.fit(matrix, data.labels)
            seconds = time.perf_counter() - started
        loss = log_loss(data.labels, model.predict_proba(matrix)[:, 1])
        if best is None or loss < best["logloss"]:
            best = {"alpha": alpha, "seconds": seconds, "samples_per_s": epochs * data.num_rows / seconds, "logloss": loss}
    return best


def hybrid_run(ranks: int, spec: SyntheticSpec, epochs: int, batch_size: int, learning_rate: float) -> dict:
    """One ``hybrid_ps.train`` job on the same data; its summary figures."""
    args = ["--rows", str(spec.rows), "--features", str(spec.features), "--nnz-per-row", str(spec.nnz_per_row),
            "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", str(learning_rate),
            "--checkpoint", "false", "--log-interval", "60"]
    with tempfile.TemporaryDirectory() as output:
        summary = summary_of(run_training(ranks, args, output))
    return {"ranks": ranks, "layout": summary["layout"], "seconds": summary["train_seconds"],
            "samples_per_s": summary["samples_per_s"], "logloss": summary["final_logloss"],
            "ps_wait_share": summary["ps_wait_share"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=1_000_000)
    parser.add_argument("--nnz-per-row", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096, help="hybrid_ps rows per rank per step")
    parser.add_argument("--lr", type=float, default=0.2, help="hybrid_ps AdaGrad learning rate")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    spec = SyntheticSpec(rows=args.rows, features=args.features, nnz_per_row=args.nnz_per_row)
    cores = os.cpu_count() or 1

    reference = sklearn_reference(spec, args.epochs)
    runs = [hybrid_run(ranks, spec, args.epochs, args.batch_size, args.lr) for ranks in args.ranks]
    rows = [["SGDClassifier", f"alpha={reference['alpha']:g}", reference["seconds"], reference["samples_per_s"],
             reference["samples_per_s"], reference["logloss"], "", 1.0]]
    for run in runs:
        used = min(run["ranks"], cores)
        rows.append([f"hybrid_ps -n {run['ranks']}", run["layout"].split(": ", 1)[-1], run["seconds"],
                     run["samples_per_s"], run["samples_per_s"] / used, run["logloss"],
                     f"{100 * run['ps_wait_share']:.0f}%", run["samples_per_s"] / reference["samples_per_s"]])
    print(f"{spec.rows} rows x {spec.features} hashed features, {spec.nnz_per_row} per row, {args.epochs} passes; "
          f"{cores} cores; hybrid_ps batch {args.batch_size} rows per rank, AdaGrad lr {args.lr}")
    print_table(["trainer", "setup", "train s", "samples/s", "per core", "logloss", "PS wait", "vs sklearn"], rows)
    first = runs[0]
    ratio = first["samples_per_s"] / reference["samples_per_s"]
    better = first["logloss"] <= reference["logloss"]
    finish("end_to_end", {"spec": {"rows": spec.rows, "features": spec.features, "nnz_per_row": spec.nnz_per_row,
                                   "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr},
                          "sklearn": reference, "hybrid_ps": runs},
           f"end to end, hybrid_ps -n {first['ranks']} samples/s (logloss {first['logloss']:.4f} vs "
           f"{reference['logloss']:.4f})", ratio, "SGDClassifier samples/s", ">= 1x at equal or better logloss",
           ratio >= 1 and better)

if __name__ == "__main__":
    main()

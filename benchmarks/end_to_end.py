"""End to end: ``hybrid_ps.train`` vs scikit-learn's ``SGDClassifier`` and Vowpal Wabbit on the same sparse data.

Run: ``python -m benchmarks.end_to_end [--rows 1000000] [--features 1000000] [--epochs 2]``.

All train logistic regression on the built-in synthetic data (Criteo-like
power-law hashed features), the same number of passes, and are scored by
logloss on the training rows.

- Training only (the headline): SGDClassifier's fit on a ready CSR matrix
  against hybrid_ps's training loop after its ranks loaded their rows
  (``train_seconds`` of the job summary). SGDClassifier gets the best of a small
  ``alpha`` grid (its default learning-rate schedule depends on it). COST: how
  many cores of hybrid_ps match one core of SGDClassifier.
- From the data file to a trained model: the same rows written once as a libsvm
  file and as Vowpal Wabbit text. Vowpal Wabbit (``vowpalwabbit`` from PyPI, one
  core, ``--passes 2 -c``: it parses the text into its cache on the first pass)
  against the wall time of the whole ``mpiexec -n 2 python -m hybrid_ps.train
  --data FILE`` job: start-up, parsing, training and the final pass over the rows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from hybrid_ps.data.batch import Batch
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


def hybrid_run(ranks: int, spec: SyntheticSpec, epochs: int, batch_size: int, learning_rate: float,
               data: Path | None = None) -> dict:
    """One ``hybrid_ps.train`` job on the same rows (synthetic, or read from the libsvm file ``data``)."""
    source = (["--data", str(data)] if data else
              ["--rows", str(spec.rows), "--features", str(spec.features), "--nnz-per-row", str(spec.nnz_per_row)])
    args = [*source, "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", str(learning_rate),
            "--checkpoint", "false", "--log-interval", "60"]
    with tempfile.TemporaryDirectory() as output:
        started = time.perf_counter()
        summary = summary_of(run_training(ranks, args, output))
        wall = time.perf_counter() - started
    return {"ranks": ranks, "layout": summary["layout"], "seconds": summary["train_seconds"], "wall_seconds": wall,
            "samples_per_s": summary["samples_per_s"], "logloss": summary["final_logloss"],
            "ps_wait_share": summary["ps_wait_share"], "lr": learning_rate}


def write_text(data: Batch, path: Path, vowpal: bool) -> None:
    """The rows as libsvm text (``label key:value ...``) or Vowpal Wabbit text (``+1/-1 |f key:value ...``)."""
    with open(path, "w") as out:
        for start in range(0, data.num_rows, 50_000):
            rows = data.rows(start, min(start + 50_000, data.num_rows))
            pairs = [f"{k}:{v:.6g}" for k, v in zip(rows.keys.tolist(), rows.values.tolist())]
            labels = ["1" if y > 0 else ("-1" if vowpal else "0") for y in rows.labels.tolist()]
            bounds = rows.indptr.tolist()
            separator = " |f " if vowpal else " "
            out.write("".join(f"{labels[i]}{separator}{' '.join(pairs[bounds[i]:bounds[i + 1]])}\n"
                              for i in range(rows.num_rows)))


_VW_CHILD = """
import os, sys
os.sched_setaffinity(0, {0})  # one core, as for the other single-machine trainers
from vowpalwabbit import pyvw
data, cache, model, passes = sys.argv[1:5]
ws = pyvw.Workspace(f"-d {data} --passes {passes} -c --cache_file {cache} -k --loss_function logistic -b 24 "
                    f"--holdout_off -f {model} --quiet")
ws.run_parser()
ws.finish()
"""


def vowpal_wabbit(data: Path, labels: np.ndarray, epochs: int, scratch: Path) -> dict:
    """Vowpal Wabbit from its text file to a trained model on one core; its logloss on the training rows."""
    model, predictions = scratch / "model.vw", scratch / "predictions.txt"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _VW_CHILD, str(data), str(scratch / "cache.vw"), str(model), str(epochs)],
                   check=True)
    seconds = time.perf_counter() - started
    from vowpalwabbit import pyvw

    scorer = pyvw.Workspace(f"-d {data} -t -i {model} --link logistic -p {predictions} --quiet")
    scorer.run_parser()
    scorer.finish()
    probability = np.clip(np.loadtxt(predictions, dtype=np.float64, usecols=0), 1e-15, 1 - 1e-15)
    loss = float(-np.mean(labels * np.log(probability) + (1 - labels) * np.log1p(-probability)))
    return {"seconds": seconds, "samples_per_s": epochs * labels.size / seconds, "logloss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=1_000_000)
    parser.add_argument("--nnz-per-row", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096, help="hybrid_ps rows per rank per step")
    parser.add_argument("--lr", type=float, default=0.2, help="hybrid_ps AdaGrad learning rate")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--file-lr", type=float, nargs="+", default=[0.2, 1.0],
                        help="hybrid_ps learning rates of the runs from the libsvm file")
    parser.add_argument("--no-files", action="store_true", help="skip Vowpal Wabbit and the runs from files")
    args = parser.parse_args()
    spec = SyntheticSpec(rows=args.rows, features=args.features, nnz_per_row=args.nnz_per_row)
    cores = os.cpu_count() or 1

    reference = sklearn_reference(spec, args.epochs)
    runs = [hybrid_run(ranks, spec, args.epochs, args.batch_size, args.lr) for ranks in args.ranks]
    rows = [["SGDClassifier", f"alpha={reference['alpha']:g}", reference["seconds"], reference["samples_per_s"],
             reference["samples_per_s"], reference["logloss"], "", 1.0, 1.0]]
    for run in runs:
        used = min(run["ranks"], cores)
        per_core = run["samples_per_s"] / used
        rows.append([f"hybrid_ps -n {run['ranks']}", run["layout"].split(": ", 1)[-1], run["seconds"],
                     run["samples_per_s"], per_core, run["logloss"], f"{100 * run['ps_wait_share']:.0f}%",
                     run["samples_per_s"] / reference["samples_per_s"], reference["samples_per_s"] / per_core])
    print(f"{spec.rows} rows x {spec.features} hashed features, {spec.nnz_per_row} per row, {args.epochs} passes; "
          f"{cores} cores; hybrid_ps batch {args.batch_size} rows per rank, AdaGrad lr {args.lr}")
    print("training only (data in memory):")
    print_table(["trainer", "setup", "train s", "samples/s", "per core", "logloss", "PS wait", "vs sklearn",
                 "COST (cores)"], rows)
    files = None if args.no_files else from_files(spec, args)
    first = runs[0]
    ratio = first["samples_per_s"] / reference["samples_per_s"]
    better = first["logloss"] <= reference["logloss"]
    cost = reference["samples_per_s"] / (first["samples_per_s"] / min(first["ranks"], cores))
    finish("end_to_end", {"spec": {"rows": spec.rows, "features": spec.features, "nnz_per_row": spec.nnz_per_row,
                                   "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr},
                          "sklearn": reference, "hybrid_ps": runs, "cost_cores": cost, "from_files": files},
           f"end to end, hybrid_ps -n {first['ranks']} samples/s (logloss {first['logloss']:.4f} vs "
           f"{reference['logloss']:.4f}; COST {cost:.1f} cores)", ratio, "SGDClassifier samples/s",
           ">= 0.5x at equal or better logloss", ratio >= 0.5 and better)


def from_files(spec: SyntheticSpec, args: argparse.Namespace) -> dict:
    """Vowpal Wabbit and hybrid_ps -n 2 from a data file to a trained model (wall time, final logloss)."""
    data = generate_all(spec)
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        svm, vw = scratch_dir / "train.svm", scratch_dir / "train.vw"
        write_text(data, svm, vowpal=False)
        write_text(data, vw, vowpal=True)
        vowpal = vowpal_wabbit(vw, data.labels.astype(np.float64), args.epochs, scratch_dir)
        runs = [hybrid_run(2, spec, args.epochs, args.batch_size, lr, data=svm) for lr in args.file_lr]
        sizes = {"libsvm_mb": svm.stat().st_size / 1e6, "vw_mb": vw.stat().st_size / 1e6}
    rows = [["Vowpal Wabbit", "1 core, --passes %d -c" % args.epochs, vowpal["seconds"], vowpal["samples_per_s"],
             vowpal["logloss"], 1.0]]
    for run in runs:
        rows.append([f"hybrid_ps -n 2 --lr {run['lr']:g}", run["layout"].split(": ", 1)[-1], run["wall_seconds"],
                     args.epochs * spec.rows / run["wall_seconds"], run["logloss"],
                     run["wall_seconds"] / vowpal["seconds"]])
    print(f"from the data file to a trained model (libsvm {sizes['libsvm_mb']:.0f} MB, VW text "
          f"{sizes['vw_mb']:.0f} MB), wall time:")
    print_table(["trainer", "setup", "wall s", "samples/s incl. parse", "logloss", "time vs VW"], rows)
    return {"vowpal_wabbit": vowpal, "hybrid_ps": runs, **sizes}


if __name__ == "__main__":
    main()

"""Consistency vs stragglers: time to a target logloss for staleness 0 (BSP), 1, 3, 10 and inf (ASP).

Run: ``python -m benchmarks.staleness [--ranks 8] [--groups 3]``.

Two injected-straggler scenarios (``--delay-factor 2``):
- persistent: group 1 is slowed 2x on every step (``--delay-group 1``);
- transient: every step of every group is slowed 2x with probability 0.3
  (``--straggle-probability``), the kind of noise the SSP paper (Ho et al.,
  NIPS 2013) targets.
The loss curve is group 0's windowed training logloss (loss on each batch before
its update) against wall time; the target is the lowest loss every run reaches.
Writes ``benchmarks/results/staleness.png`` (loss vs wall time per staleness).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from .common import RESULTS_DIR, finish, print_table, run_training, summary_of

STALENESS = ["0", "1", "3", "10", "inf"]
SCENARIOS = {
    "persistent": ["--delay-group", "1", "--delay-factor", "2"],
    "transient": ["--straggle-probability", "0.3", "--delay-factor", "4"],
}


def loss_curve(records: list[dict], smooth: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(elapsed seconds, logloss) of the progress records, loss averaged over ``smooth`` windows."""
    progress = [r for r in records if r.get("kind") == "progress" and r.get("train_logloss") is not None]
    times = np.array([r["elapsed"] for r in progress])
    losses = np.array([r["train_logloss"] for r in progress])
    if losses.size >= smooth:
        kernel = np.ones(smooth) / smooth
        losses = np.convolve(losses, kernel, mode="valid")
        times = times[smooth - 1 :]
    return times, losses


def time_to(target: float, times: np.ndarray, losses: np.ndarray) -> float:
    """First time the curve is at or below ``target`` (inf if never)."""
    below = np.flatnonzero(losses <= target)
    return float(times[below[0]]) if below.size else float("inf")


def roughness(losses: np.ndarray) -> float:
    """Mean absolute step-to-step change of the curve: how noisy it is."""
    return float(np.mean(np.abs(np.diff(losses)))) if losses.size > 1 else float("nan")


def plot(curves: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2), squeeze=False)
    for axis, (scenario, runs) in zip(axes[0], curves.items()):
        for staleness, (times, losses, _) in runs.items():
            axis.plot(times, losses, label=f"s = {staleness}" + (" (BSP)" if staleness == "0" else
                                                                  " (ASP)" if staleness == "inf" else ""))
        axis.set_title(f"{scenario} straggler")
        axis.set_xlabel("wall time (s)")
        axis.set_ylabel("training logloss (group 0, windowed)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--log-interval", type=float, default=0.25, help="seconds between loss-curve points")
    parser.add_argument("--staleness", nargs="+", default=STALENESS,
                        help="the bounds to run (0, BSP, is always one: the baseline)")
    args = parser.parse_args()
    common = ["--groups", str(args.groups), "--rows", str(args.rows), "--epochs", str(args.epochs),
              "--checkpoint", "false", "--final-eval", "false", "--log-interval", str(args.log_interval)]
    curves: dict[str, dict] = {}
    table, results = [], {}
    for scenario, injection in SCENARIOS.items():
        curves[scenario] = {}
        for staleness in dict.fromkeys(["0", *args.staleness]):
            with tempfile.TemporaryDirectory() as output:
                records = run_training(args.ranks, [*common, *injection, "--staleness", staleness], output)
            times, losses = loss_curve(records)
            if not losses.size:
                raise SystemExit(f"staleness {staleness}: the run logged no progress; use more --rows or a "
                                 f"shorter --log-interval")
            curves[scenario][staleness] = (times, losses, summary_of(records))
        target = max(float(losses.min()) for _, losses, _ in curves[scenario].values()) + 1e-4
        bsp_time = time_to(target, *curves[scenario]["0"][:2])
        results[scenario] = {"target_logloss": target, "runs": {}}
        for staleness, (times, losses, summary) in curves[scenario].items():
            reached = time_to(target, times, losses)
            results[scenario]["runs"][staleness] = {
                "time_to_target": reached, "speedup_vs_bsp": bsp_time / reached, "roughness": roughness(losses),
                "samples_per_s": summary["samples_per_s"], "train_seconds": summary["train_seconds"],
                "progressive_logloss": summary["train_logloss_progressive"],
            }
            table.append([scenario, staleness, target, reached, bsp_time / reached, roughness(losses),
                          summary["samples_per_s"], summary["train_logloss_progressive"]])
    print(f"{args.ranks} ranks, {args.groups} groups, {args.rows} rows x {args.epochs} passes")
    print_table(["straggler", "staleness", "target", "time to target s", "vs BSP", "roughness", "samples/s",
                 "progressive logloss"], table)
    png = RESULTS_DIR / "staleness.png"
    plot(curves, png)
    print(f"plot: {png}")
    ssp = max(run["speedup_vs_bsp"] for s, run in results["transient"]["runs"].items() if s not in ("0", "inf"))
    finish("staleness", {"ranks": args.ranks, "groups": args.groups, "rows": args.rows, "epochs": args.epochs,
                         "scenarios": SCENARIOS, "results": results},
           "staleness, time to target: best of s = 1, 3, 10 (transient stragglers)", ssp, "BSP", ">= 1.5x",
           ssp >= 1.5)

if __name__ == "__main__":
    main()

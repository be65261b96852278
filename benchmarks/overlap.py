"""Overlap: the leader's time blocked on the PS tier per step, as a share of the step, with and without prefetch.

Run: ``python -m benchmarks.overlap [--ranks 4]``.

With ``train.prefetch`` the pull for step ``c + 1`` is sent before step ``c``'s
gradient is computed, so its round trip overlaps the compute and the Allreduce.
The share is ``ps_wait_share`` of the job summary: the leaders' time inside
PS waits (pulls, clock acknowledgements) and push sends over their training time.
"""

from __future__ import annotations

import argparse
import tempfile

from .common import finish, print_table, run_training, summary_of

STALENESS = ["0", "1", "3"]  # prefetch is off at s = 0 (nothing to overlap): the two s = 0 rows measure noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4, help="default: 1 shard, 1 group of 3 (2 cores)")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    common = ["--rows", str(args.rows), "--batch-size", str(args.batch_size), "--epochs", "1",
              "--checkpoint", "false", "--final-eval", "false", "--log-interval", "60"]
    rows, results = [], {}
    for staleness in STALENESS:
        for prefetch in ("false", "true"):
            with tempfile.TemporaryDirectory() as output:
                summary = summary_of(run_training(args.ranks, [*common, "--staleness", staleness,
                                                               "--prefetch", prefetch], output))
            results[f"s={staleness} prefetch={prefetch}"] = {
                "ps_wait_share": summary["ps_wait_share"], "samples_per_s": summary["samples_per_s"],
                "layout": summary["layout"]}
            rows.append([staleness, prefetch, f"{100 * summary['ps_wait_share']:.1f}%", summary["samples_per_s"]])
    print(f"{args.ranks} ranks ({results['s=0 prefetch=false']['layout']}), {args.rows} rows, "
          f"batch {args.batch_size} rows per rank")
    print_table(["staleness", "prefetch", "leader blocked on PS", "samples/s"], rows)
    worst = max(results[f"s={s} prefetch=true"]["ps_wait_share"] for s in STALENESS if s != "0")
    finish("overlap", {"ranks": args.ranks, "rows": args.rows, "batch_size": args.batch_size, "results": results},
           "overlap, leader's share of the step blocked on the PS (prefetch, s >= 1, worst)", worst,
           "of the step", "< 0.2", worst < 0.2)

if __name__ == "__main__":
    main()

"""Delta checkpoints: the bytes and seconds each cut writes with ``--checkpoint-delta`` against full checkpoints.

Run: ``python -m benchmarks.checkpoints [--ranks 8] [--rows 600000] [--deltas 4]``.

The same job (a power-law stream: 10^7 features at exponent 1.1, so each interval between cuts touches the
hot keys and a thin slice of the tail) checkpoints every ``--every`` clocks, once with every cut full and once
with ``--deltas`` deltas between full ones. Reported per cut: the bytes of its shard files and the longest
shard's write (from the shards' log lines), and the model each job ends with (identical: the last cut of each
is read back and compared).

RATIO: the mean bytes per cut, full over delta.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hybrid_ps import checkpoint

from .common import finish, print_table, run_job


def _cuts(stderr: str, root: Path) -> dict[int, dict[str, float]]:
    """Per cut clock: the longest shard write in seconds and the bytes of its shard files (published or not)."""
    seconds: dict[int, float] = {}
    for clock, taken in re.findall(r"wrote checkpoint at clock (\d+) in ([\d.]+)s", stderr):
        seconds[int(clock)] = max(seconds.get(int(clock), 0.0), float(taken))
    sizes = {}
    for directory in root.glob("ckpt-*"):
        clock = int(directory.name.split("-")[1].removesuffix(".partial"))
        sizes[clock] = float(sum(p.stat().st_size for p in directory.glob("shard-*.h5")))
    return {clock: {"seconds": seconds[clock], "bytes": sizes[clock]} for clock in sorted(seconds) if clock in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--deltas", type=int, default=4)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for how, extra in (("full", []), ("delta", ["--checkpoint-delta", str(args.deltas)])):
            root = Path(tmp) / how
            started = time.monotonic()
            stderr = run_job(args.ranks, ["--rows", str(args.rows), "--features", "10000000", "--checkpoint-every",
                                          str(args.every), "--keep", "1000", "--checkpoint-dir", str(root), *extra],
                             Path(tmp) / f"{how}-run", timeout=3600).stderr
            cuts = _cuts(stderr, root)
            last = checkpoint.load_saved_model(root)
            results[how] = {"cuts": cuts, "seconds": time.monotonic() - started, "last": last}
    full, delta = results["full"]["cuts"], results["delta"]["cuts"]
    same = np.array_equal(results["full"]["last"].keys, results["delta"]["last"].keys)
    print(f"{len(full)} cuts every {args.every} clocks; {args.deltas} deltas between full ones; the last cuts hold "
          f"the same keys: {same}")
    print_table(["cut", "full MB", "full write s", "delta MB", "delta write s"],
                [[clock, full[clock]["bytes"] / 1e6, full[clock]["seconds"], delta[clock]["bytes"] / 1e6,
                  delta[clock]["seconds"]] for clock in full if clock in delta])
    mean = {how: statistics.mean(c["bytes"] for c in cuts.values()) for how, cuts in (("full", full),
                                                                                      ("delta", delta))}
    seconds = {how: statistics.mean(c["seconds"] for c in cuts.values()) for how, cuts in (("full", full),
                                                                                           ("delta", delta))}
    print(f"mean per cut: full {mean['full'] / 1e6:.2f} MB in {seconds['full']:.3f} s, delta "
          f"{mean['delta'] / 1e6:.2f} MB in {seconds['delta']:.3f} s")
    ratio = mean["full"] / mean["delta"]
    finish("checkpoints", {"rows": args.rows, "every": args.every, "deltas": args.deltas,
                           "full": full, "delta": delta, "mean_bytes": mean, "mean_seconds": seconds,
                           "same_keys": same},
           f"delta checkpoints, mean bytes per cut ({args.deltas} deltas between full ones)", ratio,
           "full checkpoints", ">= 2x", ratio >= 2 and same)


if __name__ == "__main__":
    main()

"""Memory: peak RSS of a shard per million keys held, vs the raw bytes of keys, values and optimizer state.

Run: ``python -m benchmarks.memory [--millions 1 4] [--widths 1 16]``.

Each (optimizer, width, size) runs in a fresh process, so its peak RSS is one
shard's. The shard is filled by 10^5-key pushes of new keys, as training would,
then pulled once. Reported: (peak RSS - RSS before the shard existed) per key,
against the bytes of values + optimizer state (4 B x width per array), and
against those plus the 8 B key. Width 1 (logistic regression) cannot reach 2x
of values + state: its uint64 key alone is as big as an AdaGrad value and
accumulator. The rest is the table's empty slots (buckets fill to 0.8, and a
part grows 1.5x, so 0.53 - 0.8 full) and growth (one part of 16 and its new
buckets coexist for a moment, which is what sets the peak).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from .common import finish, print_table

CHILD = """
import json, numpy as np
from benchmarks.common import peak_rss_bytes
from hybrid_ps.placement.ring import mix64
from hybrid_ps.tables.optimizers import make_optimizer
from hybrid_ps.server.shard import Shard
before = peak_rss_bytes()
held, name, width = {held}, {name!r}, {width}
shard = Shard(width, make_optimizer(name, 0.1))
grads = np.full((100_000, width), 0.01, dtype=np.float32)
for start in range(0, held, 100_000):
    keys = np.sort(mix64(np.arange(start, min(start + 100_000, held), dtype=np.uint64)))
    shard.push(keys, grads[: keys.size])
shard.pull(np.sort(mix64(np.arange(0, 100_000, dtype=np.uint64))))
print(json.dumps({{"before": before, "peak": peak_rss_bytes(), "states": len(shard.optimizer.state_names),
                  "keys": len(shard)}}))
"""


def measure(name: str, width: int, held: int) -> dict:
    """Peak RSS figures of one shard filled with ``held`` keys, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", CHILD.format(held=held, name=name, width=width)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--millions", type=float, nargs="+", default=[1, 4])
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    rows, results = [], []
    for width in args.widths:
        for name in ("sgd", "adagrad", "ftrl"):
            for millions in args.millions:
                held = int(millions * 1_000_000)
                figures = measure(name, width, held)
                payload = 4 * width * (1 + figures["states"])  # values + optimizer state, bytes per key
                used = (figures["peak"] - figures["before"]) / held
                results.append({"optimizer": name, "width": width, "keys": held, "bytes_per_key": used,
                                "values_state_bytes": payload, "ratio": used / payload,
                                "ratio_with_keys": used / (payload + 8)})
                rows.append([name, width, held, used, payload, used / payload, used / (payload + 8)])
    print("one shard; peak RSS per key vs values + state (4 B x width per array), and vs those + the 8 B key")
    print_table(["optimizer", "width", "keys", "peak B/key", "values+state B", "ratio", "ratio incl. key"], rows)
    largest = [r for r in results if r["width"] == max(args.widths)]
    largest = [r for r in largest if r["keys"] == max(x["keys"] for x in largest)]
    worst = max(r["ratio"] for r in largest)
    finish("memory", {"rows": results},
           f"memory, peak RSS / values + state, width {max(args.widths)}, {largest[0]['keys']} keys (worst optimizer)",
           worst, "the values + state bytes", "<= 2x", worst <= 2)


if __name__ == "__main__":
    main()

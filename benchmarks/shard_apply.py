"""Shard apply: keys/s of push (SGD, AdaGrad, FTRL) and pull on a shard holding 10^7 keys, vs numpy memcpy.

Run: ``python -m benchmarks.shard_apply [--held 10000000] [--batch 100000]``.

Each optimizer's shard is filled with ``--held`` keys (width 1), then pushes and
pulls of sorted unique key batches are timed in-process (no transport):
- random: keys drawn uniformly from the held keys;
- power-law: Zipf-like draws over the held keys (hashed-feature traffic), plus
  5% keys the shard has never seen (inserted by the push).
The baseline is ``np.copyto`` of the bytes the operation reads and writes
(keys, gradients or values, and optimizer state) between preallocated arrays.
"""

from __future__ import annotations

import argparse

import numpy as np

from hybrid_ps.partition import mix64
from hybrid_ps.tables.optimizers import make_optimizer
from hybrid_ps.server.shard import Shard

from .common import best_time, finish, print_table

FILL_BATCH = 1 << 20


def filled_shard(optimizer: str, held: int) -> tuple[Shard, np.ndarray]:
    """A shard holding ``held`` pseudo-random keys (pushed like training would), and those keys."""
    shard = Shard(1, make_optimizer(optimizer, 0.1), capacity=1 << 16)
    keys = mix64(np.arange(held, dtype=np.uint64))  # distinct: mix64 is a bijection
    for start in range(0, held, FILL_BATCH):
        part = np.sort(keys[start : start + FILL_BATCH])
        shard.push(part, np.full((part.size, 1), 0.01, dtype=np.float32))
    return shard, keys


def key_batches(keys: np.ndarray, size: int, kind: str, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` sorted unique batches of about ``size`` keys: uniform or power-law (+5% unseen)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        if kind == "random":
            picked = keys[rng.integers(0, keys.size, size)]
        else:
            ranks = np.minimum(rng.zipf(1.1, 3 * size) - 1, keys.size - 1)
            picked = np.unique(keys[ranks])[:size]
            unseen = mix64(rng.integers(1 << 62, 1 << 63, size // 20, dtype=np.uint64))
            picked = np.concatenate([picked, unseen])
        batches.append(np.unique(picked))
    return batches


def memcpy_seconds(nbytes: int) -> float:
    source, target = np.ones(nbytes, dtype=np.uint8), np.zeros(nbytes, dtype=np.uint8)
    return best_time(lambda: np.copyto(target, source))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    rows, results = [], []
    for name in ("sgd", "adagrad", "ftrl"):
        shard, keys = filled_shard(name, args.held)
        states = len(shard.state)
        for kind in ("random", "power-law"):
            for size in args.batch:
                batches = key_batches(keys, size, kind, 8)
                grads = [np.full((b.size, 1), 0.001, dtype=np.float32) for b in batches]
                turn = iter(range(1 << 30))
                push = best_time(lambda: shard.push(batches[(i := next(turn) % 8)], grads[i]), repeat=3)
                pull = best_time(lambda: shard.pull(batches[next(turn) % 8]), repeat=3)
                mean_keys = float(np.mean([b.size for b in batches]))
                push_bytes = int(mean_keys * (8 + 4 + 2 * 4 * (1 + states)))  # keys, grads, values+state read+written
                pull_bytes = int(mean_keys * (8 + 4 + 4))  # keys, values read, values written out
                row = {"optimizer": name, "keys": kind, "batch": size, "push_keys_per_s": mean_keys / push,
                       "pull_keys_per_s": mean_keys / pull, "push_vs_memcpy": memcpy_seconds(push_bytes) / push,
                       "pull_vs_memcpy": memcpy_seconds(pull_bytes) / pull}
                results.append(row)
                rows.append([name, kind, size, row["push_keys_per_s"] / 1e6, row["push_vs_memcpy"],
                             row["pull_keys_per_s"] / 1e6, row["pull_vs_memcpy"]])
        del shard, keys
    print(f"shard holding {args.held} keys, width 1, in-process")
    print_table(["optimizer", "keys", "batch", "push Mkeys/s", "push/memcpy", "pull Mkeys/s", "pull/memcpy"], rows)
    headline = next(r for r in results if r["optimizer"] == "adagrad" and r["keys"] == "random"
                    and r["batch"] == (100_000 if 100_000 in args.batch else args.batch[-1]))
    speed = headline["push_keys_per_s"]
    finish("shard_apply", {"held": args.held, "rows": results},
           f"shard apply, AdaGrad push of {headline['batch']} random keys: {speed / 1e6:.1f} M keys/s",
           speed / 20e6, "the 20 M keys/s target", ">= 1x", speed >= 20e6)


if __name__ == "__main__":
    main()

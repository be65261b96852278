"""Shard apply: keys/s of push (SGD, AdaGrad, FTRL) and pull on a shard holding 10^7 keys, vs the gather floor.

Run: ``python -m benchmarks.shard_apply [--held 10000000] [--batch 100000]``.

Each optimizer's shard is filled with ``--held`` keys (width 1; the fill is
timed: inserting new keys), then pushes and pulls of sorted unique key batches
are timed in-process (no transport):
- random: keys drawn uniformly from the held keys;
- power-law: Zipf-like draws over the held keys (hashed-feature traffic), plus
  5% keys the shard has never seen (inserted by the push).
The floor, measured in the same run, round by round with the shard: ``np.take``
of as many random rows as the batch has keys from an array as large as the
shard's table, with rows of a slot's size. One random memory access per key is
what any key -> row lookup must pay, so keys/s / floor rows/s says how close
the shard comes to it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hybrid_ps.placement.ring import mix64
from hybrid_ps.server.shard import Shard
from hybrid_ps.tables.optimizers import make_optimizer

from .common import best_time, finish, print_table

FILL_BATCH = 1 << 20


def filled_shard(optimizer: str, held: int) -> tuple[Shard, np.ndarray, float]:
    """A shard holding ``held`` pseudo-random keys (pushed like training would), those keys, and the fill's seconds."""
    shard = Shard(1, make_optimizer(optimizer, 0.1), capacity=1 << 16)
    keys = mix64(np.arange(held, dtype=np.uint64))  # distinct: mix64 is a bijection
    parts = [np.sort(keys[start : start + FILL_BATCH]) for start in range(0, held, FILL_BATCH)]
    grads = np.full((FILL_BATCH, 1), 0.01, dtype=np.float32)
    started = time.perf_counter()
    for part in parts:
        shard.push(part, grads[: part.size])
    return shard, keys, time.perf_counter() - started


class GatherFloor:
    """Random rows gathered by ``np.take`` from an array of ``nbytes`` in rows of ``row_bytes`` (the floor)."""

    def __init__(self, nbytes: int, row_bytes: int, seed: int = 1) -> None:
        self.table = np.ones((max(nbytes // row_bytes, 1), row_bytes // 4), dtype=np.float32)
        self.rng = np.random.default_rng(seed)

    def draws(self, size: int, count: int) -> list[np.ndarray]:
        return [self.rng.integers(0, self.table.shape[0], size) for _ in range(count)]

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return np.take(self.table, rows, axis=0)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    rows, results, fills = [], [], []
    for name in ("sgd", "adagrad", "ftrl"):
        shard, keys, fill_seconds = filled_shard(name, args.held)
        fills.append([name, args.held, fill_seconds, args.held / fill_seconds / 1e6, shard.table.nbytes / args.held])
        slot_bytes = 8 + 4 * (1 + len(shard.optimizer.state_names))
        floor = GatherFloor(shard.table.nbytes, slot_bytes)
        for kind in ("random", "power-law"):
            for size in args.batch:
                batches = key_batches(keys, size, kind, 8)
                grads = [np.full((b.size, 1), 0.001, dtype=np.float32) for b in batches]
                draws = floor.draws(int(np.mean([b.size for b in batches])), 8)
                turn = iter(range(1 << 30))
                push = pull = gather = float("inf")
                for _ in range(3):  # alternate: the machine's noise hits shard and floor alike
                    push = min(push, best_time(lambda: shard.push(batches[(i := next(turn) % 8)], grads[i]), 2))
                    pull = min(pull, best_time(lambda: shard.pull(batches[next(turn) % 8]), 2))
                    gather = min(gather, best_time(lambda: floor.gather(draws[next(turn) % 8]), 2))
                mean_keys = float(np.mean([b.size for b in batches]))
                row = {"optimizer": name, "keys": kind, "batch": size, "push_keys_per_s": mean_keys / push,
                       "pull_keys_per_s": mean_keys / pull, "floor_rows_per_s": mean_keys / gather,
                       "push_vs_floor": gather / push, "pull_vs_floor": gather / pull}
                results.append(row)
                rows.append([name, kind, size, row["push_keys_per_s"] / 1e6, row["pull_keys_per_s"] / 1e6,
                             row["floor_rows_per_s"] / 1e6, row["push_vs_floor"], row["pull_vs_floor"]])

    print(f"shard holding {args.held} keys, width 1, in-process; floor = np.take of random rows, table-sized array")
    print_table(["optimizer", "keys", "batch", "push Mkeys/s", "pull Mkeys/s", "floor Mrows/s", "push/floor",
                 "pull/floor"], rows)
    print(f"filling an empty shard with {args.held} new keys in pushes of {FILL_BATCH}:")
    print_table(["optimizer", "keys", "seconds", "M keys/s", "table B/key"], fills)
    headline = next(r for r in results if r["optimizer"] == "adagrad" and r["keys"] == "random"
                    and r["batch"] == (100_000 if 100_000 in args.batch else args.batch[-1]))
    fill = {f[0]: {"seconds": f[2], "table_bytes_per_key": f[4]} for f in fills}
    finish("shard_apply", {"held": args.held, "rows": results, "fill": fill},
           f"shard apply, AdaGrad push of {headline['batch']} random keys of {args.held}: "
           f"{headline['push_keys_per_s'] / 1e6:.1f} M keys/s vs the floor's {headline['floor_rows_per_s'] / 1e6:.1f} "
           f"M rows/s; inserting {args.held} new keys {fill['adagrad']['seconds']:.2f} s",
           headline["push_vs_floor"], "the random-row gather floor (np.take, table-sized array)", ">= 0.5x",
           headline["push_vs_floor"] >= 0.5)


if __name__ == "__main__":
    main()

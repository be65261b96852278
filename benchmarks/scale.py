"""Scale: the largest model this machine holds, what a key costs in memory, on the wire and on disk, and a projection
to 10^10 keys.

Run: ``python -m benchmarks.scale [--rows 6000000] [--ranks 8]`` (about 10 minutes and 10 GB at the default).

1. Train: ``--ranks`` ranks (2 shards at replication 1, AdaGrad, width 1: logistic regression) over a
   10^10-feature key space (power law 0.5: nearly every id is new) for one epoch, the final checkpoint
   written. Reported: keys held, samples/s, the checkpoint's write time (the longest shard's) and bytes on
   disk per key.
2. The same job resumed from that checkpoint (``--resume latest``, nothing left to train): the shards'
   load time and the whole job's time.
3. ``hybrid_ps.evaluate`` of the checkpoint on the data it was trained on (one process).
4. Memory per key for every optimizer and width 1 and 16 (``benchmarks.memory``'s child: peak RSS of one
   shard filled with 10^6 keys), and what a key costs on the wire (a push and a pull, keys sent in full).
5. Serving while a checkpoint is written: one shard process holds ``--latency-keys`` keys (AdaGrad); a
   group that finished pulls 1,000 keys in a loop while another takes a checkpoint. The longest pull
   meanwhile against the longest on the idle shard, writing from a forked snapshot and in the loop.
6. The projection to ``--project-keys`` keys: memory, shards of ``--node-gib`` each, checkpoint time at
   ``--pfs-gbps`` of parallel file system bandwidth.

RATIO: the checkpoint's write speed (bytes per second) against writing the same bytes with ``numpy.tofile``
to the same disk, measured in this run (the floor a writer can approach).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hybrid_ps import checkpoint

from .common import finish, print_table, run_job, summary_of
from .memory import measure

OPTIMIZERS = ("sgd", "adagrad", "ftrl")


def _largest(pattern: str, text: str) -> float:
    """The largest number ``pattern``'s group 1 matches in ``text`` (0 if none)."""
    return max((float(m) for m in re.findall(pattern, text)), default=0.0)


def _disk_floor(num_bytes: int, directory: Path) -> float:
    """Seconds to write ``num_bytes`` with ``numpy.tofile`` and fsync them, in ``directory``."""
    data = np.ones(num_bytes // 8, dtype=np.uint64)
    path = directory / "floor.bin"
    started = time.monotonic()
    with open(path, "wb") as f:
        data.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.monotonic() - started
    path.unlink()
    return seconds


def _pull_latency(num_keys: int, snapshot: bool, root: Path) -> dict[str, float]:
    """The longest 1,000-key pull of one group on an idle shard of ``num_keys`` keys, and while another group's
    checkpoint is written (``snapshot``: from a forked copy, else in the shard's loop)."""
    import threading

    import zmq

    from hybrid_ps.config import Config
    from hybrid_ps.placement.ring import HashRing
    from hybrid_ps.server.process import ShardProcess, ShardSpec
    from hybrid_ps.worker.client import PSClient

    config = Config()
    config.cluster.bind_host, config.cluster.staleness = "127.0.0.1", float("inf")
    config.optimizer.name = "adagrad"
    config.train.checkpoint_dir, config.train.checkpoint_snapshot = str(root / f"latency-{snapshot}"), snapshot
    shard = ShardProcess(ShardSpec(config.validate(), 0, [0], 2, 1))
    context = zmq.Context()
    puller = PSClient({0: shard.endpoint}, 0, 2, HashRing([0]), context=context, timeout=600)
    writer = PSClient({0: shard.endpoint}, 1, 2, HashRing([0]), context=context, timeout=600)
    try:
        puller.join(), writer.join()
        for start in range(0, num_keys, 1_000_000):
            chunk = np.arange(start + 1, min(start + 1_000_001, num_keys + 1), dtype=np.uint64)
            puller.wait(puller.push(chunk, np.ones((chunk.size, 1), np.float32), 0))
        puller.wait(puller.finish())  # the cut waits for the other group only
        probe = np.arange(1, num_keys + 1, max(1, num_keys // 1000), dtype=np.uint64)
        steps: list[tuple[float, float]] = []  # (start, seconds)
        done = threading.Event()

        def pull() -> None:
            while not done.is_set():
                started = time.monotonic()
                puller.wait(puller.pull(probe, 0))
                steps.append((started, time.monotonic() - started))

        thread = threading.Thread(target=pull, daemon=True)
        thread.start()
        time.sleep(2.0)
        began = time.monotonic()
        writer.checkpoint(1)
        writer.cut_written(1, wait=True)
        ended = time.monotonic()
        time.sleep(0.5)
        done.set()
        thread.join()
        idle = [seconds for started, seconds in steps if started + seconds < began]
        during = [seconds for started, seconds in steps if started < ended and started + seconds > began]
        return {"keys": float(num_keys), "write_seconds": ended - began, "idle_longest_pull": max(idle),
                "longest_pull_while_writing": max(during, default=ended - began)}
    finally:
        puller.close(), writer.close()
        context.term()
        shard.__exit__()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6_000_000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--memory-keys", type=int, default=1_000_000)
    parser.add_argument("--latency-keys", type=int, default=100_000_000)
    parser.add_argument("--project-keys", type=float, default=1e10)
    parser.add_argument("--node-gib", type=float, default=192.0, help="memory per node the projection fills to 70%%")
    parser.add_argument("--pfs-gbps", type=float, default=10.0, help="parallel file system GB/s, aggregate")
    parser.add_argument("--dir", default=None, help="where the job writes (default: a temporary directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        train_args = ["--servers", "2", "--replication", "1", "--optimizer", "adagrad", "--features", str(10**10),
                      "--zipf-exponent", "0.5", "--rows", str(args.rows), "--epochs", "1", "--preload", "false",
                      "--checkpoint-dir", str(root / "checkpoints")]
        trained = run_job(args.ranks, [*train_args, "--log-interval", "30"], root / "train", timeout=7200)
        stderr, train_seconds = trained.stderr, trained.seconds
        info = checkpoint.checkpoint_info(root / "checkpoints")
        keys = int(info["total_keys"])
        latest = checkpoint.resolve_checkpoint(str(root / "checkpoints"))
        disk_bytes = sum(p.stat().st_size for p in Path(latest).glob("shard-*.h5"))
        write_seconds = _largest(r"wrote checkpoint at clock \d+ in ([\d.]+)s", stderr)
        samples_per_s = summary_of(trained.records)["samples_per_s"]
        floor_seconds = _disk_floor(disk_bytes // 2, root)  # one shard's share, as each shard writes its own

        resume = run_job(args.ranks, [*train_args, "--resume", "latest", "--log-interval", "30"], root / "resume",
                         timeout=7200)
        resumed, resume_seconds = resume.stderr, resume.seconds
        load_seconds = _largest(r"resumed \d+ keys at clocks .* in ([\d.]+)s", resumed)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "hybrid_ps.evaluate", str(latest), "--data", "synthetic"], check=True,
                       capture_output=True, text=True)
        evaluate_seconds = time.monotonic() - started

    print(f"{keys:,} keys on 2 shards (AdaGrad, width 1) after {args.rows:,} rows of a 10^10-feature key space")
    print_table(["samples/s", "train s", "checkpoint write s", "disk B/key", "resume: load s", "resume: job s",
                 "evaluate s"],
                [[samples_per_s, train_seconds, write_seconds, disk_bytes / keys, load_seconds, resume_seconds,
                  evaluate_seconds]])

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        latency = {mode: _pull_latency(args.latency_keys, mode == "snapshot", Path(tmp))
                   for mode in ("loop", "snapshot")}
    print(f"a pull of 1,000 keys from a shard of {args.latency_keys:,} keys while another group's checkpoint is "
          "written")
    print_table(["written", "write s", "longest pull idle s", "longest pull while writing s"],
                [[mode, r["write_seconds"], r["idle_longest_pull"], r["longest_pull_while_writing"]]
                 for mode, r in latency.items()])

    memory = []
    for width in (1, 16):
        for name in OPTIMIZERS:
            figures = measure(name, width, args.memory_keys)
            arrays, row = 1 + figures["states"], 4 * width
            memory.append({"optimizer": name, "width": width,
                           "bytes_per_key": (figures["peak"] - figures["before"]) / args.memory_keys,
                           "values_state_bytes": row * arrays, "disk_bytes": 8 + row * arrays,
                           "push_bytes": 8 + row, "pull_bytes": 8 + row})
    print("per key: peak RSS of a shard holding it; on the wire, a push (key + float32 gradient) and a pull (key + "
          "float32 value back), keys in full; on disk, key + values + state")
    print_table(["optimizer", "width", "memory B", "values+state B", "push B", "pull B", "disk B"],
                [[m["optimizer"], m["width"], m["bytes_per_key"], m["values_state_bytes"], m["push_bytes"],
                  m["pull_bytes"], m["disk_bytes"]] for m in memory])

    adagrad = next(m for m in memory if m["optimizer"] == "adagrad" and m["width"] == 1)
    total_gib = args.project_keys * adagrad["bytes_per_key"] / 2**30
    shards = int(np.ceil(total_gib / (0.7 * args.node_gib)))
    checkpoint_gb = args.project_keys * disk_bytes / keys / 1e9
    print(f"projection to {args.project_keys:.0e} keys (AdaGrad, width 1): {total_gib:,.0f} GiB of shard memory, "
          f"{shards} shards of {args.node_gib:g} GiB nodes at 70%; a checkpoint of {checkpoint_gb:,.0f} GB in "
          f"{checkpoint_gb / args.pfs_gbps:,.0f} s at {args.pfs_gbps:g} GB/s")
    ratio = floor_seconds / write_seconds if write_seconds else 0.0
    finish("scale", {"keys": keys, "rows": args.rows, "ranks": args.ranks, "samples_per_s": samples_per_s,
                     "train_seconds": train_seconds, "checkpoint_write_seconds": write_seconds,
                     "checkpoint_bytes": disk_bytes, "disk_bytes_per_key": disk_bytes / keys,
                     "disk_floor_seconds": floor_seconds, "resume_load_seconds": load_seconds,
                     "resume_job_seconds": resume_seconds, "evaluate_seconds": evaluate_seconds, "memory": memory,
                     "checkpoint_latency": latency,
                     "projection": {"keys": args.project_keys, "memory_gib": total_gib, "shards": shards,
                                    "node_gib": args.node_gib, "checkpoint_gb": checkpoint_gb,
                                    "checkpoint_seconds": checkpoint_gb / args.pfs_gbps, "pfs_gbps": args.pfs_gbps}},
           f"scale, {keys:.2g} keys: checkpoint write speed vs numpy.tofile of the same bytes", ratio,
           "numpy.tofile + fsync", ">= 0.5", ratio >= 0.5 and keys >= 10**8)


if __name__ == "__main__":
    main()

"""Replication and failover: what R = 2 costs in end-to-end samples/s, and how long training stalls when a shard dies.

Run: ``python -m benchmarks.replication [--ranks 8] [--repeats 3]``.

1. The same job (``--ranks`` ranks, default layout but at least 2 servers) with ``--replication 1`` and
   ``2``, alternated ``--repeats`` times; the median samples/s of each.
2. Failover: three shard processes at replication 2, one client pushing and
   pulling in a loop; a shard is SIGKILLed and the longest step after the kill
   is the stall. Without a supervisor (a hung or unreachable shard looks like
   this) detection is the client's ``failover_timeout``, for several settings;
   with the shards' supervisor (as a server rank or ``hybrid_ps.serve`` runs
   them), which tells the other shards of the death and they the client, at the
   default timeout (10 s): the target is <= 0.5 s.
3. Rebuild: three shard processes at replication 2 hold ``--rebuild-keys`` keys (AdaGrad); one is
   SIGKILLed, restarted empty and filled by the others (REJOIN) while a client keeps pushing and
   pulling: the seconds from the restart's REJOIN to every primary's fill acknowledged, the longest
   step meanwhile, and that the rebuilt replica equals its peers (a pull from it after the others die).
   The same with no restart (``--shard-restarts 0``): the dead shard is retired (RETIRE) and the two
   others fill each other with the ranges it backed up.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import threading
import time

import numpy as np

from hybrid_ps.config import Config

from .common import finish, print_table, run_training, summary_of

DEFAULT_FAILOVER_TIMEOUT = Config().cluster.failover_timeout  # 10 s


def _throughput(ranks: int, rows: int, repeats: int) -> dict[int, list[float]]:
    common = ["--rows", str(rows), "--epochs", "2", "--checkpoint", "false", "--final-eval", "false",
              "--log-interval", "60", "--servers", str(max(2, ranks // 4))]  # replication 2 needs 2 servers
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for replication in (1, 2):
            with tempfile.TemporaryDirectory() as output:
                summary = summary_of(run_training(ranks, [*common, "--replication", str(replication)], output))
            rates[replication].append(summary["samples_per_s"])
    return rates


def _stall_after_a_kill(failover_timeout: float, supervised: bool = False, steps_before: int = 50) -> float:
    """Seconds of the longest push + pull step after SIGKILL of one of three shards (replication 2); with
    ``supervised`` a supervisor thread tells the other shards of the death, as a server rank does."""
    import zmq

    from hybrid_ps.placement.ring import HashRing
    from hybrid_ps.server.death_notice import tell_shards_of_death
    from hybrid_ps.server.process import ShardProcess, ShardSpec
    from hybrid_ps.worker.client import PSClient

    config = Config()
    config.cluster.bind_host, config.cluster.staleness, config.train.checkpoint = "127.0.0.1", float("inf"), False
    shards = [ShardProcess(ShardSpec(config.validate(), i, [0, 1, 2], 1, 1)) for i in range(3)]
    context = zmq.Context()
    client = PSClient([s.endpoint for s in shards], 0, 1, HashRing(range(3)), context=context, replication=2,
                      failover_timeout=failover_timeout, heartbeat_interval=min(1.0, failover_timeout / 4))
    keys = np.arange(0, 200_000, 50, dtype=np.uint64)
    grads = np.ones((keys.size, 1), np.float32)
    done = threading.Event()
    if supervised:
        endpoints = {s.shard_id: s.endpoint for s in shards}

        def supervisor() -> None:
            while not done.wait(0.05):
                for shard in shards:
                    shard.poll(None, lambda dead: tell_shards_of_death(endpoints, dead, curve_keys=None))

        threading.Thread(target=supervisor, daemon=True).start()
    try:
        stall, step = 0.0, 0
        killed_at = None
        while killed_at is None or time.monotonic() - killed_at < (2 if supervised else failover_timeout + 2):
            started = time.monotonic()
            client.wait(client.push(keys, grads, step))
            client.wait(client.pull(keys, step))
            if killed_at is not None:
                stall = max(stall, time.monotonic() - started)
            step += 1
            if step == steps_before:
                os.kill(shards[1].pid, signal.SIGKILL)
                killed_at = time.monotonic()
        return stall
    finally:
        _close(done, client, context, shards)


def _rebuild(num_keys: int, retire: bool = False) -> dict[str, float]:
    """Seconds to fill a restarted shard of three (replication 2, AdaGrad) holding ``num_keys`` keys in all (or,
    ``retire``, to re-replicate a dead one's ranges on the two others), and the longest push + pull step of a
    client training meanwhile."""
    import dataclasses

    import zmq

    from hybrid_ps.placement.ring import HashRing
    from hybrid_ps.server.death_notice import tell_shards_of_death, tell_shards_of_rejoin, tell_shards_of_retirement
    from hybrid_ps.server.process import ShardProcess, ShardSpec
    from hybrid_ps.worker.client import PSClient

    config = Config()
    config.cluster.bind_host, config.cluster.staleness, config.train.checkpoint = "127.0.0.1", float("inf"), False
    config.optimizer.name = "adagrad"
    specs = [ShardSpec(config.validate(), i, [0, 1, 2], 1, 1) for i in range(3)]
    shards = [ShardProcess(spec) for spec in specs]
    endpoints = {s.shard_id: s.endpoint for s in shards}
    context = zmq.Context()
    client = PSClient(endpoints, 0, 1, HashRing(range(3)), context=context, replication=2, timeout=600)
    keys = np.unique(np.random.default_rng(0).integers(0, 2**63, num_keys, dtype=np.uint64))
    for chunk in np.array_split(keys, max(1, keys.size // 1_000_000)):
        client.wait(client.push(chunk, np.ones((chunk.size, 1), np.float32), 0))
    step_keys, steps = keys[:: max(1, keys.size // 20_000)], []
    done = threading.Event()

    def train() -> None:
        step = 1
        while not done.is_set():
            started = time.monotonic()
            client.wait(client.push(step_keys, np.ones((step_keys.size, 1), np.float32), step))
            client.wait(client.pull(step_keys, step))
            steps.append(time.monotonic() - started)
            step += 1

    trainer = threading.Thread(target=train, daemon=True)
    try:
        trainer.start()
        time.sleep(1.0)
        os.kill(shards[1].pid, signal.SIGKILL)
        shards[1].process.wait()
        tell_shards_of_death(endpoints, 1, curve_keys=None)
        before = len(steps)
        if retire:
            started = time.monotonic()
            filled = tell_shards_of_retirement({i: endpoints[i] for i in (0, 2)}, 1, curve_keys=None)
        else:
            shards[1] = ShardProcess(dataclasses.replace(specs[1], restarted=True))
            endpoints[1] = shards[1].endpoint
            started = time.monotonic()
            filled = tell_shards_of_rejoin(endpoints, 1, curve_keys=None)
        seconds = time.monotonic() - started
        time.sleep(1.0)
        done.set()
        trainer.join()
        longest = max(steps[before:], default=0.0)
        return {"keys": float(keys.size), "rows_filled": float(sum(filled.values())), "rebuild_seconds": seconds,
                "longest_step_seconds": longest, "median_step_seconds": statistics.median(steps)}
    finally:
        _close(done, client, context, shards)


def _close(done: threading.Event, client, context, shards: list) -> None:
    """Stop the measuring thread, close the client and its context, kill the shard processes."""
    done.set()
    client.close()
    context.term()
    for shard in shards:
        shard.__exit__()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeouts", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--rebuild-keys", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--only-rebuild", action="store_true", help="measure the rebuild only")
    args = parser.parse_args()
    rebuilds = {f"{how} {n}": _rebuild(n, retire=how == "retire") for how in ("restart", "retire")
                for n in args.rebuild_keys}
    print_table(["rebuild", "keys", "rows filled", "rebuild s", "longest step meanwhile s", "median step s"],
                [[name.split()[0], r["keys"], r["rows_filled"], r["rebuild_seconds"], r["longest_step_seconds"],
                  r["median_step_seconds"]] for name, r in rebuilds.items()])
    if args.only_rebuild:
        return

    rates = _throughput(args.ranks, args.rows, args.repeats)
    median = {r: statistics.median(values) for r, values in rates.items()}
    print(f"{args.ranks} ranks, {args.rows} rows x 2 epochs, {args.repeats} runs each")
    print_table(["replication", "median samples/s", "runs"],
                [[r, median[r], " ".join(f"{v:.0f}" for v in rates[r])] for r in (1, 2)])
    stalls = {timeout: _stall_after_a_kill(timeout) for timeout in args.timeouts}
    supervised = _stall_after_a_kill(DEFAULT_FAILOVER_TIMEOUT, supervised=True)
    print_table(["failover timeout s", "supervisor", "longest step after the kill s"],
                [*[[t, "none", s] for t, s in stalls.items()], [DEFAULT_FAILOVER_TIMEOUT, "tells", supervised]])
    ratio = median[2] / median[1]
    finish("replication", {"ranks": args.ranks, "rows": args.rows, "samples_per_s": rates,
                           "failover_stall_seconds": {str(t): s for t, s in stalls.items()},
                           "supervised_stall_seconds": supervised, "rebuild": rebuilds},
           "replication 2 vs 1, end-to-end samples/s", ratio, "replication 1", ">= 0.75", ratio >= 0.75)


if __name__ == "__main__":
    main()

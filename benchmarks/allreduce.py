"""In-group allreduce: the trainer's gradient path vs raw ``Comm.Allreduce`` on the same buffer.

Run: ``mpiexec -n 2 python -m benchmarks.allreduce`` (and ``-n 4``).

For each size from 4 KB to 64 MB, rank 0 prints the time of
- raw: ``comm.Allreduce(MPI.IN_PLACE, buffer)`` on one preallocated float32 buffer;
- path: what the trainer does each step: ``WorkerGroup.reduce_buffer`` + ``allreduce_sum``;
- path + pack: the same plus copying a float64 gradient into the buffer (model output -> wire dtype);
- fresh: a newly allocated buffer each call (what reusing the buffer saves).
Each figure is the best of several rounds; a round's time is the slowest rank's.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from mpi4py import MPI

from hybrid_ps.worker.group import WorkerGroup

from .common import finish, print_table

SIZES = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
ROUND_BYTES = 64 << 20  # each round moves about this many bytes, at least 4 calls


def _time(comm: MPI.Comm, runs: dict, calls: int, rounds: int = 7) -> dict[str, float]:
    """Seconds per call of each run: best round, a round lasting until the slowest rank is done.

    The runs take turns round by round, so a noisy moment hurts them alike.
    """
    best = {name: float("inf") for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            comm.Barrier()
            start = time.perf_counter()
            for _ in range(calls):
                run()
            elapsed = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
            best[name] = min(best[name], elapsed / calls)
    return best


def main() -> None:
    comm = MPI.COMM_WORLD
    group = WorkerGroup(comm)
    rows = []
    for nbytes in SIZES:
        count = nbytes // 4
        calls = max(4, ROUND_BYTES // nbytes // 4)
        raw_buffer = np.ones(count, dtype=np.float32)
        gradient = np.random.default_rng(comm.rank).random(count)  # float64, as the model returns it

        def raw():
            comm.Allreduce(MPI.IN_PLACE, raw_buffer, op=MPI.SUM)

        def path():
            group.allreduce_sum(group.reduce_buffer(count))

        def path_and_pack():
            buffer = group.reduce_buffer(count)
            buffer[:] = gradient
            group.allreduce_sum(buffer)

        def fresh():
            comm.Allreduce(MPI.IN_PLACE, np.ones(count, dtype=np.float32), op=MPI.SUM)

        times = _time(comm, {"raw": raw, "path": path, "path_pack": path_and_pack, "fresh": fresh}, calls)
        rows.append({"bytes": nbytes, **{f"{k}_us": v * 1e6 for k, v in times.items()},
                     "raw_GBps": nbytes / times["raw"] / 1e9, "ratio": times["raw"] / times["path"],
                     "ratio_with_pack": times["raw"] / times["path_pack"], "ratio_fresh": times["raw"] / times["fresh"]})
    if comm.rank != 0:
        return
    print(f"Allreduce (float32 sum, in place), {comm.size} ranks, {MPI.Get_library_version().splitlines()[0]}")
    print_table(["bytes", "raw us", "raw GB/s", "path us", "path/raw", "+pack us", "+pack/raw", "fresh/raw"],
                [[r["bytes"], r["raw_us"], r["raw_GBps"], r["path_us"], r["ratio"], r["path_pack_us"],
                  r["ratio_with_pack"], r["ratio_fresh"]] for r in rows])
    large = [r["ratio"] for r in rows if r["bytes"] >= 1 << 20]
    worst = min(large)
    finish(f"allreduce-{comm.size}ranks", {"ranks": comm.size, "rows": rows},
           f"allreduce, {comm.size} ranks, >= 1 MB (worst size)", worst, "raw Comm.Allreduce", ">= 0.9x",
           worst >= 0.9)

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()

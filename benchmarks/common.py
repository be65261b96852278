"""What every benchmark shares: timing, tables, the final ratio line, and the results file.

A benchmark measures its raw baseline (raw mpi4py, raw pyzmq, numpy memcpy, a
reference library) in the same run, prints a table, writes
``benchmarks/results/<name>.json`` (the source of the table in
benchmarks/README.md, see ``python -m benchmarks.summary``) and prints its
headline ratio as the last line.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["best_time", "print_table", "print_ratio", "finish", "save_results", "peak_rss_bytes", "run_job",
           "run_training", "summary_of", "TrainingJob", "RESULTS_DIR", "busy_cpu_seconds", "wait_until_quiet"]

RESULTS_DIR = Path(os.environ.get("HYBRID_PS_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
"""Where results go; the smoke tests point ``HYBRID_PS_BENCH_RESULTS`` elsewhere to keep the committed figures."""


def best_time(run: Callable[[], Any], repeat: int = 5, min_seconds: float = 0.05) -> float:
    """Seconds per call of ``run``: the best of ``repeat`` rounds, each long enough to time reliably.

    The minimum is the figure least disturbed by the other processes of a noisy machine.
    """
    run()  # warm up: page faults, lazy imports, connection setup
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            run()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= 1 << 16:
            break
        calls *= 2
    best = elapsed / calls
    for _ in range(repeat - 1):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print ``rows`` under ``columns`` as an aligned plain-text table."""
    cells = [[_format(value) for value in row] for row in rows]
    widths = [max(len(str(column)), *(len(row[i]) for row in cells)) for i, column in enumerate(columns)]
    print("  ".join(str(column).rjust(width) for column, width in zip(columns, widths)))
    for row in cells:
        print("  ".join(value.rjust(width) for value, width in zip(row, widths)))


def print_ratio(name: str, ratio: float, baseline: str, target: str) -> None:
    """The benchmark's last line: its headline ratio, against what, and the target."""
    print(f"RATIO {name}: {ratio:.2f}x {baseline} (target {target})", flush=True)


def finish(name: str, results: dict[str, Any], headline: str, ratio: float, baseline: str, target: str,
           met: bool) -> None:
    """Save ``results`` with the headline (for ``benchmarks.summary``), then print the ratio line last."""
    save_results(name, {**results, "headline": {"what": headline, "ratio": ratio, "baseline": baseline,
                                                "target": target, "met": bool(met)}})
    print_ratio(headline, ratio, baseline, target)


def save_results(name: str, results: dict[str, Any]) -> Path:
    """Write ``results`` (plus when and where) to ``benchmarks/results/<name>.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        **results,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes: ``VmHWM``, which starts afresh at ``exec``
    (``ru_maxrss`` keeps the high-water mark of the parent that started it, a large benchmark process)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _format(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.3g}"
    return str(value)


@dataclass
class TrainingJob:
    """A finished ``hybrid_ps.train`` job: its metrics records, its log and its wall time."""

    records: list[dict]
    stderr: str
    seconds: float


def run_job(ranks: int, args: Sequence[str], output_dir: str | Path, timeout: float = 1800) -> TrainingJob:
    """Run ``hybrid_ps.train`` on ``ranks`` MPI ranks (through ``mpi_launch``).

    Raises:
        RuntimeError: the job failed; the message ends with its last log lines.
    """
    import subprocess
    import sys

    output_dir = Path(output_dir)
    command = [sys.executable, "-m", "mpi_launch", "-n", str(ranks), "--", *args, "--output-dir", str(output_dir)]
    started = time.monotonic()
    job = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - started
    if job.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit {job.returncode}:\n{job.stderr[-3000:]}")
    metrics = output_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return TrainingJob(records, job.stderr, seconds)


def run_training(ranks: int, args: Sequence[str], output_dir: str | Path, timeout: float = 1800) -> list[dict]:
    """``run_job``'s metrics records."""
    return run_job(ranks, args, output_dir, timeout).records


def summary_of(records: list[dict]) -> dict:
    """The ``summary`` record of a job's metrics records."""
    return next(record for record in records if record.get("kind") == "summary")


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine was busy so far, CPU seconds of this process's children that ended).

    Their changes over a job run by this process give the CPU time *other* processes took meanwhile: a run
    another user's work disturbed. Linux only (``/proc/stat``); elsewhere both are 0.
    """
    try:
        ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = ticks[3] + ticks[4]  # idle, iowait; the rest: user, nice, system, irq, softirq, steal
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), children.ru_utime + children.ru_stime


def wait_until_quiet(busy_cores: float = 0.25, window: float = 0.5, limit: float = 300.0) -> float:
    """Wait until the machine's busy cores over ``window`` seconds drop below ``busy_cores`` (at most ``limit``
    seconds); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = busy_cpu_seconds()[0]
        time.sleep(window)
        if (busy_cpu_seconds()[0] - before) / window < busy_cores:
            break
    return time.monotonic() - started

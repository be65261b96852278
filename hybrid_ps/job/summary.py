"""A job's final numbers: the leaders' results summed over the world, logged and written as metrics."""

from __future__ import annotations

import logging
import math

import numpy as np

from ..config import Config
from ..metrics import MetricsWriter
from ..worker.group import wait_quietly
from ..worker.result import NETWORK_FIELDS, TRAFFIC_FIELDS, GroupResult
from .topology import Topology

log = logging.getLogger(__name__)

__all__ = ["JobSummary", "summarise"]


class JobSummary(dict):
    """The final numbers of a job (a dict, written as the ``summary`` metrics record)."""


def summarise(topology: Topology, config: Config, local: np.ndarray, metrics: MetricsWriter | None) -> JobSummary:
    """Sum the leaders' results over the world (servers and members add zeros)."""
    totals = np.zeros_like(local)
    wait_quietly(topology.world.Iallreduce(local, totals))
    total = GroupResult.from_array(totals)
    traffic = dict(zip(TRAFFIC_FIELDS, (total.traffic / max(total.steps, 1)).tolist(), strict=True))
    groups = topology.layout.num_groups
    wall, train_wall = total.seconds / groups, total.train_seconds / groups
    summary = JobSummary(
        layout=topology.layout.describe(),
        staleness=str(config.cluster.staleness),
        steps_per_group=total.steps / groups,
        samples=total.samples,
        seconds=round(wall, 3),
        train_seconds=round(train_wall, 3),
        samples_per_s=total.samples / train_wall if train_wall else math.nan,
        ps_wait_share=total.ps_seconds / total.train_seconds if total.train_seconds else math.nan,
        train_logloss_progressive=total.train_loss_sum / total.samples if total.samples else math.nan,
        final_logloss=total.eval_loss_sum / total.eval_rows if total.eval_rows else math.nan,
        final_accuracy=total.eval_correct / total.eval_rows if total.eval_rows else math.nan,
        eval_rows=total.eval_rows,
        preempted=total.preempted,
        ps_bytes_sent_per_step=traffic["sent"],  # a group step's, on the wire (see TRAFFIC_FIELDS)
        ps_bytes_received_per_step=traffic["received"],
        traffic_per_step=traffic,
    )
    if config.comm.net_latency_ms or config.comm.net_bandwidth_gbit:
        summary.update(simulated_network=_network_summary(config, total))
    if config.data.eval_path:
        summary.update(validation_logloss=total.validation_logloss, early_stopped=total.early_stopped)
        if config.train.early_stopping:
            summary.update(best_clock=total.best_clock, best_logloss=total.best_logloss)
    if metrics is not None:
        metrics.write("summary", **summary)
        if summary.get("early_stopped"):
            log.info("early stopping: %d samples in %.1fs (%.0f samples/s); the best validation logloss, %.4f, is "
                     "the cut at clock %d (checkpoint 'best')", summary["samples"], wall, summary["samples_per_s"],
                     summary["best_logloss"], summary["best_clock"])
        elif summary["preempted"]:
            log.info("preempted: %d samples in %.1fs (%.0f samples/s), progressive logloss %.4f; "
                     "the checkpoint holds the cut", summary["samples"], wall, summary["samples_per_s"],
                     summary["train_logloss_progressive"])
        else:
            log.info(
                "done: %d samples in %.1fs of training (%.0f samples/s, %.0f%% of it waiting on the PS), "
                "progressive logloss %.4f, final logloss %.4f, accuracy %.4f over %d rows",
                summary["samples"], train_wall, summary["samples_per_s"], 100 * summary["ps_wait_share"],
                summary["train_logloss_progressive"],
                summary["final_logloss"], summary["final_accuracy"], summary["eval_rows"],
            )
    return summary


def _network_summary(config: Config, total: GroupResult) -> dict:
    """The simulated network's settings and what its relays forwarded, summed over the leaders: per direction
    (up: leaders to shards) bytes, TCP chunks and seconds of delay added, and the mean delay of a chunk."""
    counters = dict(zip(NETWORK_FIELDS, total.network.tolist(), strict=True))
    record: dict = {"latency_ms": config.comm.net_latency_ms, "bandwidth_gbit": config.comm.net_bandwidth_gbit,
                    "connections": int(counters["connections"])}
    for way in ("up", "down"):
        mine = {name.removeprefix(f"{way}_"): value for name, value in counters.items() if name.startswith(f"{way}_")}
        chunks = max(mine["chunks"], 1)
        mine["mean_delay_ms"] = 1e3 * mine["delay_seconds"] / chunks  # modeled: latency + queueing + serialization
        mine["mean_late_ms"] = 1e3 * mine["late_seconds"] / chunks  # beyond the model: the relay woke up late
        record[way] = mine
    return record

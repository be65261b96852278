"""One training job over an MPI world: server ranks serve shards, worker ranks train in groups."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import checkpoint
from .config import Config
from .data import batch_source
from .errors import TopologyError
from .logs import configure_logging
from .metrics import MetricsWriter
from .models.logistic import BIAS_KEY, LogisticRegression
from .partition import HashRing
from .preemption import StopRequest
from .replication import default_replication
from .server.process import ShardProcess, ShardSpec
from .tier import TierInfo, TierView, adopt_tier_settings, read_tier_file
from .topology import Layout, Topology, build_topology, exchange_endpoints, plan_layout
from .worker.client import PSClient
from .worker.group import WorkerGroup, wait_quietly
from .worker.trainer import TRAFFIC_FIELDS, GroupResult, GroupTrainer

__all__ = ["run_job", "JobSummary"]

log = logging.getLogger(__name__)


class JobSummary(dict):
    """The final numbers of a job (a dict, written as the ``summary`` metrics record)."""


def run_job(config: Config, world: Any, debug: bool = False, stop: StopRequest | None = None) -> JobSummary:
    """Run the whole job on this rank; collective over ``world``.

    Args:
        config: the job configuration.
        world: the MPI communicator of the job.
        debug: log debug messages.
        stop: this process's preemption flag (set by SIGTERM/SIGUSR1).

    Returns:
        The job summary (identical on every rank).

    Raises:
        HybridPSError: bad layout, unreachable shard, bad data, ...
    """
    plan = plan_job(config, world.Get_size())
    topology = build_topology(world, config.cluster.servers, config.cluster.groups, plan.layout.first_group
                              if plan.tier else None)
    configure_logging(topology.label, debug)
    if topology.rank == 0:
        log.info("%s; staleness %s; replication %d; optimizer %s", topology.layout.describe(),
                 config.cluster.staleness, plan.replication, config.optimizer.name)
    ring = HashRing(plan.shard_ids, config.cluster.vnodes)
    model = LogisticRegression()
    metrics = None
    if topology.rank == 0:
        metrics = MetricsWriter(f"{config.train.output_dir}/metrics.jsonl")
        metrics.write("config", layout=topology.layout.describe(), config=config.to_json_dict())
    try:
        if topology.role == "server":
            totals = _run_server(topology, config, model.width, stop, debug)
        else:
            totals = _run_worker(topology, plan, config, ring, model, metrics, stop)
        return _summarise(topology, config, totals, metrics)
    finally:
        if metrics is not None:
            metrics.close()


def _run_server(topology: Topology, config: Config, width: int, stop: StopRequest | None, debug: bool) -> np.ndarray:
    """Host this rank's shard in a child process and supervise it: a dead shard does not end the job."""
    spec = ShardSpec(config, topology.shard_id, list(range(topology.layout.num_servers)), topology.layout.num_groups,
                     width, coordinator=topology.shard_id == 0)
    with ShardProcess(spec, debug, label=config.train.output_dir) as shard:
        log.info("shard %d runs as pid %d at %s", topology.shard_id, shard.pid, shard.endpoint)
        exchange_endpoints(topology, shard.endpoint)
        shard.supervise(stop)
    return np.zeros(len(GroupResult().as_array()))


def _run_worker(
    topology: Topology, plan: "JobPlan", config: Config, ring: HashRing, model: LogisticRegression,
    metrics: MetricsWriter | None, stop: StopRequest | None,
) -> np.ndarray:
    endpoints = plan.tier.endpoints if plan.tier else exchange_endpoints(topology, None)
    # a leader blocks at most a few PS waits (checkpoint, drain, reshard) between two broadcasts
    group = WorkerGroup(topology.group_comm, leader_timeout=4 * config.cluster.ps_timeout)
    batches = batch_source(config.data, config.train.batch_size, *plan.data_position(topology))
    client = None
    if topology.is_leader:
        log.info("leader of group %d runs as pid %d", topology.group, os.getpid())
        client = PSClient(endpoints, topology.group, plan.num_slots, ring, model.width, config.cluster.ps_timeout,
                          replication=plan.replication, failover_timeout=config.cluster.failover_timeout,
                          heartbeat_interval=min(1.0, config.cluster.failover_timeout / 4),
                          key_cache=config.comm.key_cache, compression=config.comm.compression,
                          compress_values=config.comm.compress_values)
    try:
        publish = _publisher(config, topology, model) if config.train.checkpoint and client else None
        start = group.broadcast_int(client.join() if client else 0)  # its own clock; after a failure, the others'
        if topology.is_leader and start:
            log.info("group %d continues at clock %d", topology.group, start)
        if config.train.resume:
            _warn_if_positions_differ(config, topology)
        skip = start if config.train.resume or not plan.tier else 0  # a group joining a tier trains all its data
        tier_view = (lambda: TierView(read_tier_file(config.cluster.ps_tier).endpoints, plan.replication)) \
            if plan.tier else None
        trainer = GroupTrainer(config, group, topology.group, model,
                               batches, client, metrics, publish, start, stop, skip, tier_view)
        result = trainer.run()
    finally:
        if client is not None:
            client.close()
    return result.as_array() if topology.is_leader else np.zeros_like(result.as_array())


@dataclass
class JobPlan:
    """Where the shards are and how the world splits: this job's own server ranks, or a tier of its own."""

    layout: Layout
    tier: TierInfo | None
    shard_ids: list[int]
    num_slots: int  # group slots of the vector clock (the tier's, or this job's groups)
    replication: int

    def data_position(self, topology: Topology) -> tuple[int, int]:
        """``(position, count)`` of this rank's data part: with a tier, by group slot (equal group sizes)."""
        if self.tier is None:
            return topology.rank, self.layout.num_workers
        size = topology.group_comm.Get_size()
        return topology.group * size + topology.group_rank, self.num_slots * size


def plan_job(config: Config, world_size: int) -> JobPlan:
    """Read the tier file (adopting its shared settings into ``config``) and plan the layout.

    Raises:
        ConfigError, TopologyError: a bad tier file, or a world that does not fit (named).
    """
    tier = read_tier_file(config.cluster.ps_tier) if config.cluster.ps_tier else None
    if tier is None:
        layout = plan_layout(world_size, config.cluster.servers, config.cluster.groups)
        return JobPlan(layout, None, list(range(layout.num_servers)), layout.num_groups,
                       default_replication(config.cluster.replication, layout.num_servers))
    adopt_tier_settings(config, tier)
    layout = plan_layout(world_size, 0, config.cluster.groups, config.cluster.first_group)
    if layout.first_group + layout.num_groups > tier.num_groups:
        raise TopologyError(f"cluster.first_group = {layout.first_group} with {layout.num_groups} group(s) needs "
                            f"group slots up to {layout.first_group + layout.num_groups - 1}; the tier "
                            f"{config.cluster.ps_tier} has {tier.num_groups}")
    return JobPlan(layout, tier, sorted(tier.endpoints), tier.num_groups,
                   default_replication(config.cluster.replication, len(tier.endpoints)))


def _warn_if_positions_differ(config: Config, topology: Topology) -> None:
    """Readers resume by skipping the batches already trained: exact only with the same ranks and batch size."""
    recorded = checkpoint.checkpoint_info(config.resume_path)["data"]
    now = {"worker_ranks": topology.layout.num_workers, "batch_size": config.train.batch_size}
    changed = {k: (recorded.get(k), v) for k, v in now.items() if recorded.get(k) not in (None, v)}
    if changed and topology.rank == 0:
        log.warning("resuming with %s different from the checkpoint: each rank skips as many of its own "
                    "batches as were trained, so data positions are approximate", changed)


def _publisher(config: Config, topology: Topology, model: LogisticRegression):
    """A leader's callback that publishes a written cut (whichever leader comes first does it)."""

    def publish(cut: int, result: GroupResult) -> None:
        info = {
            "config": config.to_json_dict(),
            "model": {"kind": model.kind, "width": model.width, "bias_key": int(BIAS_KEY)},
            "metrics": {
                "published_by_group": topology.group,
                "group_steps": result.steps,
                "group_samples": result.samples,
                "group_train_logloss_progressive": result.train_loss_sum / max(result.samples, 1),
            },
            "data": {"source": config.data.path or "synthetic", "worker_ranks": topology.layout.num_workers,
                     "batch_size": config.train.batch_size, **({} if config.data.path else {
                "rows": config.data.rows, "features": config.data.features, "nnz_per_row": config.data.nnz_per_row,
                "zipf_exponent": config.data.zipf_exponent, "seed": config.data.seed})},
        }
        published = checkpoint.publish(config.checkpoint_root, cut, info, config.train.keep)
        if published is not None:
            log.info("checkpoint published: %s", published)

    return publish


def _summarise(topology: Topology, config: Config, local: np.ndarray, metrics: MetricsWriter | None) -> JobSummary:
    """Sum the leaders' results over the world (servers and members add zeros)."""
    totals = np.zeros_like(local)
    wait_quietly(topology.world.Iallreduce(local, totals))
    steps, samples, train_loss, eval_loss, eval_correct, eval_rows, seconds, preempted, train_seconds, ps_seconds = \
        totals[: -len(TRAFFIC_FIELDS)]
    traffic = dict(zip(TRAFFIC_FIELDS, (totals[-len(TRAFFIC_FIELDS):] / max(steps, 1)).tolist()))
    groups = topology.layout.num_groups
    wall, train_wall = seconds / groups, train_seconds / groups
    summary = JobSummary(
        layout=topology.layout.describe(),
        staleness=str(config.cluster.staleness),
        steps_per_group=steps / groups,
        samples=int(samples),
        seconds=round(wall, 3),
        train_seconds=round(train_wall, 3),
        samples_per_s=samples / train_wall if train_wall else math.nan,
        ps_wait_share=ps_seconds / train_seconds if train_seconds else math.nan,
        train_logloss_progressive=train_loss / samples if samples else math.nan,
        final_logloss=eval_loss / eval_rows if eval_rows else math.nan,
        final_accuracy=eval_correct / eval_rows if eval_rows else math.nan,
        eval_rows=int(eval_rows),
        preempted=bool(preempted),
        ps_bytes_sent_per_step=traffic["sent"],  # a group step's, on the wire (see TRAFFIC_FIELDS)
        ps_bytes_received_per_step=traffic["received"],
        traffic_per_step=traffic,
    )
    if metrics is not None:
        metrics.write("summary", **summary)
        if summary["preempted"]:
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



"""A shard process writes its checkpoint from a forked snapshot: it answers pulls and pushes while the file is
written, the group publishes only once it is, and the file holds the cut exactly."""

from __future__ import annotations

import numpy as np
import zmq

from hybrid_ps import checkpoint
from hybrid_ps.config import Config
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.server.process import ShardProcess, ShardSpec
from hybrid_ps.worker.client import PSClient

KEYS = np.arange(1, 3_000_001, dtype=np.uint64)  # enough that the file takes a while to write


def _shard(tmp_path, snapshot: bool) -> ShardProcess:
    config = Config()
    config.cluster.bind_host, config.cluster.staleness = "127.0.0.1", float("inf")
    config.optimizer.name, config.optimizer.learning_rate = "sgd", 1.0
    config.train.checkpoint_dir, config.train.checkpoint_snapshot = str(tmp_path / "ckpt"), snapshot
    return ShardProcess(ShardSpec(config.validate(), 0, [0], 1, 1))


def test_a_snapshot_checkpoint_is_the_exact_cut_while_the_shard_serves_on(tmp_path):
    shard = _shard(tmp_path, snapshot=True)
    context = zmq.Context()
    client = PSClient({0: shard.endpoint}, 0, 1, HashRing([0]), context=context, timeout=60)
    try:
        client.join()
        client.wait(client.push(KEYS, np.ones((KEYS.size, 1), np.float32), 0, tell_clock=True))
        cut = client.checkpoint(1)
        assert cut == 1
        served_while_writing, clock = 0, 1
        while client.cut_written(cut) is None:  # the group trains on: pushes and pulls answered meanwhile
            client.wait(client.push(KEYS[:1000], np.ones((1000, 1), np.float32), clock, tell_clock=True))
            client.wait(client.pull(KEYS[:1000], clock))
            served_while_writing, clock = served_while_writing + 1, clock + 1
        assert served_while_writing > 0, "the shard answered while its file was written"
        part = checkpoint.read_shard_file(checkpoint.partial_dir(tmp_path / "ckpt", cut) / "shard-0.h5")
        order = np.argsort(part.keys)
        np.testing.assert_array_equal(part.keys[order], KEYS)
        np.testing.assert_array_equal(part.values[order, 0], -1.0)  # the cut: one push, none of those after it
        np.testing.assert_array_equal(client.wait(client.pull(KEYS[:1000], clock))[:, 0], -1.0 - served_while_writing)
        client.bye()
        assert shard.process.wait(timeout=30) == 0
    finally:
        client.close()
        context.term()
        shard.__exit__()

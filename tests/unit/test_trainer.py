"""hybrid_ps.worker.trainer (the step loop) with a fake group of one and a fake PS client: no MPI, no sockets."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from hybrid_ps.config import Config
from hybrid_ps.data import batch_source
from hybrid_ps.errors import NonFiniteError
from hybrid_ps.models import build_model
from hybrid_ps.protocol.wire import FINAL_CLOCK
from hybrid_ps.worker.client import Announcement
from hybrid_ps.worker.faults import FaultInjector
from hybrid_ps.worker.result import NETWORK_FIELDS, TRAFFIC_FIELDS, GroupResult
from hybrid_ps.worker.trainer import GroupTrainer, StepStats


class FakeGroup:
    """A group of one rank, its leader: every collective returns its input."""

    is_leader = True
    rank = 0

    def reduce_buffer(self, size: int) -> np.ndarray:
        return np.zeros(size, dtype=np.float32)

    def gather_keys(self, keys):
        return keys

    def broadcast_pulled(self, keys, values, width):
        return None if keys is None else (keys, values)

    def broadcast_flag(self, flag: bool) -> bool:
        return flag

    def ranks_where(self, flag: bool) -> list[int]:
        return [0] if flag else []

    def allreduce_sum(self, buffer: np.ndarray) -> np.ndarray:
        return buffer


class FakeClient:
    """A PS of one dict, plain SGD, answering at once; records what the trainer sends."""

    def __init__(self, width: int, learning_rate: float = 0.5) -> None:
        self.width, self.learning_rate = width, learning_rate
        self.rows: dict[int, np.ndarray] = {}
        self.pushes: list[tuple[int, int, bool]] = []  # (clock, keys, tell_clock)
        self.clocks: list[int] = []  # CLOCK messages (steps that pushed nothing)
        self.checkpoints: list[int] = []
        self.finished = self.left = False
        self.stop_requested = False
        self.stop_at: int | None = None
        self.reshard_at: int | None = None
        self.shard_clocks = np.zeros(1, dtype=np.int64)
        self.traffic = SimpleNamespace(sent=0, received=0, keys_in=0, keys_after_cache=0, keys_out=0,
                                       values_in=0, values_out=0)

    def pull(self, keys: np.ndarray, clock: int):
        zero = np.zeros(self.width, np.float32)
        return np.array([self.rows.get(int(k), zero) for k in keys], dtype=np.float32).reshape(-1, self.width)

    def wait(self, ticket):
        return ticket

    def announced(self, clock):
        return Announcement.STOP if self.stop_at is not None and clock >= self.stop_at else Announcement.NONE

    def push(self, keys, grads, clock, tell_clock=False):
        for key, grad in zip(keys.tolist(), np.asarray(grads).reshape(-1, self.width)):
            self.rows[key] = self.rows.get(key, np.zeros(self.width, np.float32)) - self.learning_rate * grad
        self.pushes.append((clock, keys.size, tell_clock))
        return None

    def clock(self, clock):
        self.clocks.append(clock)

    def request_stop(self):
        self.stop_requested = True

    def checkpoint(self, clock):
        self.checkpoints.append(clock)
        return clock

    def cut_written(self, cut, wait=False):
        return True  # every shard wrote its file at once

    def finish(self):
        self.finished = True

    def bye(self):
        self.left = True


def _config(**train) -> Config:
    return Config.from_dict({
        "data": {"rows": 2048, "features": 500, "nnz_per_row": 8, "seed": 3},
        "train": {"batch_size": 128, "epochs": 2, "checkpoint": False, **train},
    })


def _trainer(config: Config, client: FakeClient | None = None, **options) -> GroupTrainer:
    model = build_model(config.model)
    return GroupTrainer(config=config, group=FakeGroup(), group_id=0, model=model,
                        batches=batch_source(config.data, config.train.batch_size, 0, 1),
                        client=client or FakeClient(model.width), **options)


def test_a_group_of_one_trains_pushes_every_step_and_evaluates():
    config = _config()
    client = FakeClient(1)
    result = _trainer(config, client).run()
    assert result.steps == 2 * 2048 // 128 and result.samples == 2 * 2048
    assert [clock for clock, _, _ in client.pushes] == list(range(result.steps))  # one push a step, in clock order
    assert all(tell for _, _, tell in client.pushes), "the clock rides on each step's push"
    assert client.finished and client.left and not result.preempted
    assert result.eval_rows == 2048
    assert result.eval_loss_sum / result.eval_rows < math.log(2) - 0.02  # it learned something
    assert result.train_loss_sum / result.samples < math.log(2)


def test_the_announced_stop_clock_ends_training_there_with_a_checkpoint():
    config = _config()
    client = FakeClient(1)
    client.stop_at = 5
    published = []
    result = _trainer(config, client, publish=lambda cut, res: published.append(cut)).run()
    assert result.preempted and result.steps == 5
    assert client.checkpoints == [5] and published == [5]
    assert result.eval_rows == 0, "a preempted group does not evaluate"


def test_a_stop_request_on_a_member_is_sent_to_the_shards_once():
    config = _config()
    client = FakeClient(1)
    trainer = _trainer(config, client)
    trainer.stop_request.request("test")
    trainer.run()
    assert client.stop_requested


def test_max_steps_and_the_final_checkpoint():
    config = _config(max_steps=3)
    client = FakeClient(1)
    published = []
    result = _trainer(config, client, publish=lambda cut, res: published.append(cut)).run()
    assert result.steps == 3
    assert client.checkpoints == [FINAL_CLOCK] and published == [FINAL_CLOCK]


def test_a_non_finite_gradient_stops_with_the_step_named():
    config = _config()
    model = build_model(config.model)

    class Exploding(type(model)):
        def loss_and_gradient(self, batch, keys, values):
            loss, grad, p = super().loss_and_gradient(batch, keys, values)
            return loss, np.full_like(grad, np.inf), p

    exploding = Exploding.from_attrs({"embedding_dim": 8, "init_scale": 0.01, "hidden": "32,16"})
    trainer = GroupTrainer(config=config, group=FakeGroup(), group_id=0, model=exploding,
                           batches=batch_source(config.data, 128, 0, 1), client=FakeClient(1))
    with pytest.raises(NonFiniteError, match="group 0, step 0: NaN or Inf gradient from group rank"):
        trainer.run()


def test_group_result_round_trips_through_its_array():
    result = GroupResult(steps=7, samples=900, train_loss_sum=1.5, eval_rows=12, preempted=True,
                         traffic=np.arange(len(TRAFFIC_FIELDS), dtype=np.float64),
                         network=np.arange(len(NETWORK_FIELDS), dtype=np.float64) + 100)
    back = GroupResult.from_array(result.as_array())
    assert back.steps == 7 and isinstance(back.steps, int) and back.preempted is True
    assert back.train_loss_sum == 1.5 and back.eval_rows == 12
    np.testing.assert_array_equal(back.traffic, result.traffic)
    np.testing.assert_array_equal(back.network, result.network)
    with pytest.raises(ValueError, match="numbers"):
        GroupResult.from_array(np.zeros(3))


def test_step_stats_are_the_named_tail_of_the_allreduce_buffer():
    buffer = np.zeros(10 + StepStats.SIZE, dtype=np.float32)
    StepStats(loss=2.5, rows=64, correct=3, stop=1).write(buffer[10:])
    assert StepStats.read(buffer[10:]) == StepStats(2.5, 64, 3, 1)
    assert buffer[:10].sum() == 0


def test_a_straggler_stretches_its_own_work_but_not_its_ps_waits():
    faults = FaultInjector(delay_factor=3.0, always_straggles=True)
    time.sleep(0.05)  # 0.05 s of work, no PS wait
    started = time.monotonic()
    faults.end_step(ps_seconds=0.0)
    assert time.monotonic() - started >= 0.09  # (3 - 1) x 0.05
    time.sleep(0.05)  # this step's 0.05 s all count as PS waits
    started = time.monotonic()
    faults.end_step(ps_seconds=0.05)
    assert time.monotonic() - started < 0.03
    calm = FaultInjector()
    started = time.monotonic()
    calm.end_step(ps_seconds=0.0)
    calm.delay_pull()
    assert time.monotonic() - started < 0.01

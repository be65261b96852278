"""HDF5 checkpoints: shard files, model.h5 joining them, atomic publish, latest, bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from hybrid_ps import checkpoint
from hybrid_ps.errors import CheckpointError

INFO = {
    "config": {"train": {"epochs": 1}},
    "model": {"kind": "logistic_regression", "width": 1},
    "metrics": {"samples": 10},
    "data": {"source": "synthetic", "rows": 10},
}


def _shard(shard_id: int, num_shards: int, keys: np.ndarray, clock: int = 5, width: int = 1) -> checkpoint.ShardState:
    rng = np.random.default_rng(shard_id)
    values = rng.normal(size=(keys.size, width)).astype(np.float32)
    return checkpoint.ShardState(
        shard_id=shard_id, num_shards=num_shards, clock=clock, keys=keys.astype(np.uint64), values=values,
        state={"accumulator": values * values}, clock_table=np.array([clock, clock - 1]),
        finished=np.array([False, True]), optimizer="adagrad", hyperparameters={"learning_rate": 0.1},
    )


def _write_checkpoint(root, clock: int, parts: list[np.ndarray], keep: int = 3):
    for shard_id, keys in enumerate(parts):
        checkpoint.write_shard_file(checkpoint.partial_dir(root, clock), _shard(shard_id, len(parts), keys, clock))
    return checkpoint.publish(root, clock, INFO, keep)


def test_shard_file_round_trip(tmp_path):
    shard = _shard(1, 2, np.array([3, 1, 2]))
    path = checkpoint.write_shard_file(tmp_path, shard)
    assert path.name == "shard-1.h5" and not (tmp_path / "shard-1.h5.tmp").exists()
    read = checkpoint.read_shard_file(path)
    np.testing.assert_array_equal(read.keys, shard.keys)
    np.testing.assert_array_equal(read.values, shard.values)
    np.testing.assert_array_equal(read.state["accumulator"], shard.state["accumulator"])
    assert read.clock_table.tolist() == [5, 4] and read.finished.tolist() == [False, True]
    assert (read.optimizer, read.hyperparameters, read.shard_id, read.num_shards) == ("adagrad", {"learning_rate": 0.1}, 1, 2)


def test_publish_joins_shards_and_moves_latest(tmp_path):
    parts = [np.array([10, 30, 20]), np.array([], dtype=np.uint64), np.array([5, 7])]
    published = _write_checkpoint(tmp_path, 12, parts)
    assert published == tmp_path / "ckpt-12" and (tmp_path / "latest").read_text().strip() == "ckpt-12"
    assert not list(tmp_path.glob("*.partial"))
    with h5py.File(published / "model.h5") as f:
        assert f.attrs["format_version"] == checkpoint.FORMAT_VERSION and f.attrs["total_keys"] == 5
        np.testing.assert_array_equal(f["model/keys"][()], [10, 30, 20, 5, 7])
        np.testing.assert_array_equal(f["shards/shard-2/keys"][()], [5, 7])  # external link
        assert f["model/values"].shape == (5, 1)
    model = checkpoint.load_saved_model(tmp_path)  # through `latest`
    np.testing.assert_array_equal(model.keys, [5, 7, 10, 20, 30])
    expected = dict(zip([10, 30, 20], checkpoint.read_shard_file(published / "shard-0.h5").values[:, 0]))
    assert model.values[3, 0] == expected[20]
    assert checkpoint.resolve_checkpoint(published / "model.h5") == published


def test_moved_checkpoint_still_reads(tmp_path):
    published = _write_checkpoint(tmp_path / "a", 3, [np.array([1, 2])])
    moved = tmp_path / "elsewhere"
    os.rename(published, moved)
    np.testing.assert_array_equal(checkpoint.load_saved_model(moved).keys, [1, 2])


def test_keep_prunes_and_second_publish_is_a_no_op(tmp_path):
    for clock in (1, 2, 3, 4):
        _write_checkpoint(tmp_path, clock, [np.array([clock])], keep=2)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-3", "ckpt-4"]
    assert checkpoint.publish(tmp_path, 4, INFO) is None


def test_a_shard_file_written_after_its_cut_was_published_never_replaces_it(tmp_path):
    """A shard restarted during the cut writes its (empty) part late, and a second leader tries to publish it."""
    _write_checkpoint(tmp_path, 7, [np.array([1, 2]), np.array([3])])
    checkpoint.write_shard_file(checkpoint.partial_dir(tmp_path, 7), _shard(2, 3, np.array([], np.uint64), 7))
    assert checkpoint.publish(tmp_path, 7, INFO) is None
    assert checkpoint.checkpoint_info(tmp_path)["total_keys"] == 3 and not checkpoint.partial_dir(tmp_path, 7).exists()


def test_a_leader_publishing_the_same_cut_at_the_last_moment_backs_off(tmp_path, monkeypatch):
    for shard in range(2):
        checkpoint.write_shard_file(checkpoint.partial_dir(tmp_path, 9), _shard(shard, 2, np.array([shard])))
    late = []
    real_replace = os.replace

    def replace_after_a_late_leader(source, target):
        if str(source).endswith("ckpt-9.partial") and not late:
            late.append("publishing")
            late[0] = checkpoint.publish(tmp_path, 9, INFO)  # the other group's leader, right now
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_after_a_late_leader)
    assert checkpoint.publish(tmp_path, 9, INFO) == tmp_path / "ckpt-9"
    assert late == [None], "the late leader must see the cut as being published"
    assert checkpoint.publish(tmp_path, 9, INFO) is None
    assert not (tmp_path / "ckpt-9" / ".publishing").exists() and checkpoint.load_saved_model(tmp_path).clock == 9


def test_info_describes_the_checkpoint(tmp_path):
    _write_checkpoint(tmp_path, 7, [np.array([1]), np.array([2])])
    info = checkpoint.checkpoint_info(tmp_path)
    assert info["clock"] == 7 and info["num_shards"] == 2 and info["shards"] == ["shard-0", "shard-1"]
    assert info["model"]["kind"] == "logistic_regression" and info["config"] == INFO["config"]
    assert info["clock_table"] == [7, 6]


def test_bad_checkpoints_give_one_clear_error(tmp_path):
    published = _write_checkpoint(tmp_path / "ok", 1, [np.array([1, 2])])
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        checkpoint.load_saved_model(tmp_path / "missing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with h5py.File(foreign / "model.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CheckpointError, match="not a hybrid_ps model file"):
        checkpoint.load_saved_model(foreign)
    (foreign / "model.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(CheckpointError, match="not a readable HDF5 file"):
        checkpoint.load_saved_model(foreign)
    data = (published / "model.h5").read_bytes()
    (published / "model.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or foreign"):
        checkpoint.load_saved_model(published)
    other = _write_checkpoint(tmp_path / "v", 1, [np.array([1])])
    with h5py.File(other / "model.h5", "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(CheckpointError, match="checkpoint format 99"):
        checkpoint.load_saved_model(other)
    gone = _write_checkpoint(tmp_path / "g", 1, [np.array([1]), np.array([2])])
    (gone / "shard-1.h5").unlink()
    with pytest.raises(CheckpointError, match="shard file shard-1.h5 is missing"):
        checkpoint.load_saved_model(gone)


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from hybrid_ps import checkpoint
    root = sys.argv[1]
    keys = np.arange(1_000_000, dtype=np.uint64)
    for clock in range(1, 1000):
        for shard in range(2):
            part = keys[shard::2]
            state = checkpoint.ShardState(
                shard_id=shard, num_shards=2, clock=clock, keys=part,
                values=np.full((part.size, 1), clock, np.float32), state={}, clock_table=np.array([clock]),
                finished=np.array([False]), optimizer="sgd", hyperparameters={})
            checkpoint.write_shard_file(checkpoint.partial_dir(root, clock), state)
        checkpoint.publish(root, clock, {"model": {"kind": "logistic_regression"}}, keep=2)
        print(clock, flush=True)
    """
)


@pytest.mark.parametrize("delay", [0.3, 0.55, 0.8, 1.1])
def test_killing_a_writer_at_any_moment_leaves_latest_valid(tmp_path, delay):
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    first = writer.stdout.readline()  # one checkpoint is published before the kill
    assert first.strip() == "1"
    time.sleep(delay)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    model = checkpoint.load_saved_model(tmp_path)
    assert model.keys.size == 1_000_000
    assert np.all(model.values == model.clock)  # every value from the same, complete checkpoint


def test_a_delta_chain_reads_as_the_full_checkpoint_of_its_cut_and_keep_never_drops_a_base(tmp_path):
    """ckpt-10 full, ckpt-20 and ckpt-30 deltas (only changed rows, ``base`` naming the cut before): the model,
    the resumed shards and --keep see exactly what a full ckpt-30 holds."""
    import dataclasses

    full = {0: {1: 1.0, 2: 1.0, 3: 1.0}, 1: {10: 1.0, 11: 1.0}}  # shard -> key -> scale of its latest row
    for clock, changes, base in ((10, full, None), (20, {0: {2: 2.0, 4: 2.0}, 1: {}}, 10),
                                 (30, {0: {4: 3.0}, 1: {11: 3.0, 12: 3.0}}, 20)):
        for shard_id, rows in changes.items():
            keys = np.array(sorted(rows), np.uint64)
            values = np.array([rows[k] * k + shard_id for k in sorted(rows)], np.float32).reshape(-1, 1)
            checkpoint.write_shard_file(checkpoint.partial_dir(tmp_path, clock), dataclasses.replace(
                _shard(shard_id, 2, keys, clock), values=values, state={"accumulator": values * 2}, base=base))
        assert checkpoint.publish(tmp_path, clock, INFO, keep=1) is not None
        if base is not None:
            for shard_id, rows in changes.items():
                full[shard_id].update(rows)
    expected = {k: k * s + shard for shard, rows in full.items() for k, s in rows.items()}
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-10", "ckpt-20", "ckpt-30"], "bases kept"
    model = checkpoint.load_saved_model(tmp_path)
    assert model.keys.tolist() == sorted(expected) and model.values[:, 0].tolist() == [expected[k] for k in
                                                                                       sorted(expected)]
    info = checkpoint.checkpoint_info(tmp_path)
    assert info["total_keys"] == len(expected) and info["format_version"] == 2
    parts = list(checkpoint.restore_shard(tmp_path, lambda keys: np.ones(keys.size, bool), "adagrad"))
    restored = {int(k): float(v) for part in parts for k, v in zip(part.keys, part.values[:, 0], strict=True)}
    assert restored == expected and sum(part.keys.size for part in parts) == len(expected)
    np.testing.assert_array_equal(np.concatenate([p.state["accumulator"] for p in parts])[:, 0],
                                  2 * np.concatenate([p.values for p in parts])[:, 0])
    _write_checkpoint(tmp_path, 40, [np.array([1, 2]), np.array([10])], keep=1)  # full: nothing needs the others
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-40"]


def test_a_delta_whose_base_is_gone_is_refused_with_its_name(tmp_path):
    import dataclasses

    checkpoint.write_shard_file(checkpoint.partial_dir(tmp_path, 20),
                                dataclasses.replace(_shard(0, 1, np.array([1, 2]), 20), base=10))
    with pytest.raises(CheckpointError, match=r"shard-0.h5: the checkpoint it extends, ckpt-10, is gone"):
        checkpoint.publish(tmp_path, 20, INFO)

"""Reading checkpoints: find the newest, load a model, check a resume, restore or move a shard's keys."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import CheckpointError
from .files import (
    BEST,
    LATEST,
    ShardState,
    _check_format,
    _open,
    merge_chain,
    newest_positions,
    read_shard_file,
    shard_chain,
)

__all__ = ["resolve_checkpoint", "SavedModel", "load_saved_model", "read_feature_scales", "checkpoint_info",
           "check_resumable", "restore_shard", "cut_parts", "resume_clocks"]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a path: a ``ckpt-*`` directory, its ``model.h5``, a root (uses ``latest``),
    or a root's ``latest`` or ``best`` pointer.

    Raises:
        CheckpointError: nothing published there.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not a checkpoint: no such file or directory")
    if path.is_file() and path.name == "model.h5":
        return path.parent
    if path.is_file() and path.name in (LATEST, BEST):
        return _follow(path)
    if (path / "model.h5").is_file():
        return path
    if (path / LATEST).is_file():
        return _follow(path / LATEST)
    raise CheckpointError(f"{path}: not a checkpoint (no model.h5) and no 'latest' pointer")


def _follow(pointer: Path) -> Path:
    target = pointer.parent / pointer.read_text().strip()
    if (target / "model.h5").is_file():
        return target
    raise CheckpointError(f"{pointer} points to {target.name}, which has no model.h5")


@dataclass
class SavedModel:
    """A checkpointed model, loaded for evaluation: sorted keys and their values."""

    keys: np.ndarray
    values: np.ndarray
    kind: str
    clock: int
    attrs: dict[str, Any]
    model_attrs: dict[str, Any]  # the model's kind, width and shape settings (``Model.attrs``)
    scale_keys: np.ndarray  # sorted keys whose feature values are divided by ``scales`` (data.feature_scaling)
    scales: np.ndarray


def load_saved_model(path: str | Path) -> SavedModel:
    """Load ``model.h5`` (through its virtual datasets), keys sorted for lookup.

    Raises:
        CheckpointError: missing, truncated, foreign or missing a shard file.
    """
    directory = resolve_checkpoint(path)
    model_path = directory / "model.h5"
    with _open(model_path) as f:
        _check_format(f, model_path, "hybrid_ps model")
        _check_shard_files(f, directory)
        try:  # a shard file that went bad after the check above still fails here, not in numpy
            keys = f["model/keys"][()]
            values = f["model/values"][()]
        except (KeyError, OSError) as e:
            raise CheckpointError(f"{model_path}: cannot read the model's keys and values: {e}") from None
        model_attrs = {k: _plain(v) for k, v in f["model"].attrs.items()}
        attrs = dict(f.attrs)
        scale_keys, scales = _feature_scales(f)
    # sorted for lookup; a delta's chain may hold a key more than once, oldest first: its last row is the one
    order = newest_positions(keys) if "bases" in attrs else np.argsort(keys, kind="stable")
    return SavedModel(keys[order], values[order], str(model_attrs.get("kind", "")), int(attrs["clock"]), attrs,
                      model_attrs, scale_keys, scales)


def read_feature_scales(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A checkpoint's feature scales, ``(sorted keys, divisors)`` (empty for a checkpoint without them).

    Raises:
        CheckpointError: no readable checkpoint there.
    """
    model_path = resolve_checkpoint(path) / "model.h5"
    with _open(model_path) as f:
        _check_format(f, model_path, "hybrid_ps model")
        return _feature_scales(f)


def _feature_scales(f: h5py.File) -> tuple[np.ndarray, np.ndarray]:
    if "model/scales" not in f:  # written before feature scaling existed
        return np.zeros(0, np.uint64), np.zeros(0, np.float32)
    return f["model/scale_keys"][()].astype(np.uint64), f["model/scales"][()].astype(np.float32)


def _check_shard_files(f: h5py.File, directory: Path) -> list[Path]:
    """The shard files ``model.h5`` names, each present, readable HDF5 and a shard file of this format."""
    paths = []
    try:
        names = sorted(f["shards"])
    except KeyError:
        raise CheckpointError(f"{directory / 'model.h5'}: incomplete model file: no /shards group") from None
    for name in names:
        path = directory / f"{name}.h5"
        if not path.is_file():
            raise CheckpointError(f"{directory}: shard file {name}.h5 is missing")
        shard_chain(path)  # each file of it present and of a format this build reads
        paths.append(path)
    return paths


def check_resumable(path: str | Path, kind: str, width: int, optimizer: str,
                    shape: dict[str, Any] | None = None) -> Path:
    """Check, before any work, that a job training ``kind`` (``width`` values per key, ``shape`` settings)
    with ``optimizer`` can resume from ``path``; returns the checkpoint directory. Reads attributes only.

    Raises:
        CheckpointError: missing, truncated or foreign files, another model, width or optimizer (named).
    """
    directory = resolve_checkpoint(path)
    model_path = directory / "model.h5"
    with _open(model_path) as f:
        _check_format(f, model_path, "hybrid_ps model")
        model = f["model"].attrs if "model" in f else {}
        found_kind, found_width = str(model.get("kind", "")), int(model.get("width", -1))
        if (found_kind, found_width) != (kind, width):
            raise CheckpointError(f"{model_path}: holds a {found_kind or 'unknown'} model with {found_width} "
                                  f"value(s) per key; this job trains {kind} with {width}")
        for name, value in (shape or {}).items():
            if name in model and _plain(model[name]) != value:
                raise CheckpointError(f"{model_path}: the model was trained with model.{name} = "
                                      f"{_plain(model[name])!r}, this job has {value!r}")
        shard_paths = _check_shard_files(f, directory)
    for shard_path in shard_paths:
        with _open(shard_path) as shard:
            trained = str(shard.attrs.get("optimizer", ""))
        if trained != optimizer:
            raise CheckpointError(f"{shard_path}: trained with optimizer {trained!r}, this job uses {optimizer!r} "
                                  "(optimizer.name)")
    return directory


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """What a checkpoint holds, as plain data (for ``evaluate --info``)."""
    directory = resolve_checkpoint(path)
    model_path = directory / "model.h5"
    with _open(model_path) as f:
        _check_format(f, model_path, "hybrid_ps model")
        return {
            "path": str(directory),
            **{k: _plain(v) for k, v in f.attrs.items()},
            "model": {k: _plain(v) for k, v in f["model"].attrs.items()},
            "metrics": {k: _plain(v) for k, v in f["metrics"].attrs.items()},
            "data": {k: _plain(v) for k, v in f["data"].attrs.items()},
            "clock_table": f["clock_table"][()].tolist(),
            "shards": sorted(f["shards"]),
            "config": json.loads(f["config"].attrs["json"]),
        }


def restore_shard(directory: str | Path, owned: Callable[[np.ndarray], np.ndarray],
                  optimizer: str) -> Iterator[ShardState]:
    """The part of every shard file of a checkpoint that the caller owns.

    Any number of shards may have written the checkpoint: each file's keys are
    filtered by ``owned`` (a mask from the caller's hash ring), so resuming with
    a different number of servers re-shards the keys.

    Raises:
        CheckpointError: unreadable files, or a different optimizer than ``optimizer``.
    """
    yield from cut_parts(resolve_checkpoint(directory), owned, optimizer)


def cut_parts(directory: str | Path, owned: Callable[[np.ndarray], np.ndarray], optimizer: str) -> Iterator[ShardState]:
    """``restore_shard`` on a cut's directory as it is, published or still ``.partial``."""
    directory = Path(directory)
    paths = sorted(directory.glob("shard-*.h5"))
    if not paths:
        raise CheckpointError(f"{directory}: no shard files")
    for path in paths:
        state = merge_chain([read_shard_file(link) for link in shard_chain(path)])
        if state.optimizer != optimizer:
            raise CheckpointError(
                f"{path}: trained with optimizer {state.optimizer!r}, this job uses {optimizer!r}"
            )
        mask = owned(state.keys)
        state.keys, state.values = state.keys[mask], state.values[mask]
        state.state = {name: array[mask] for name, array in state.state.items()}
        yield state


def resume_clocks(path: str | Path, num_groups: int) -> np.ndarray:
    """Each group's starting clock when resuming from ``path``.

    With the same number of groups each continues from its own clock; with a
    different number, every group starts at the cut's common clock.

    Raises:
        CheckpointError: the groups changed and the checkpoint's clocks differ.
    """
    table = np.asarray(checkpoint_info(path)["clock_table"], dtype=np.int64)
    if table.size == num_groups:
        return table
    if table.size and table.min() == table.max():
        return np.full(num_groups, table[0], dtype=np.int64)
    raise CheckpointError(
        f"{path}: written by {table.size} groups at different clocks {table.tolist()}; "
        f"resume it with cluster.groups = {table.size}"
    )


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value

"""HDF5 checkpoints: one file per shard, a ``model.h5`` that joins them, atomic publish, ``latest``.

Layout of a checkpoint root (``train.checkpoint_dir``)::

    ckpt-<clock>/            a published checkpoint (never modified afterwards)
        shard-<i>.h5         keys, values, optimizer state and clock table of shard i
        model.h5             what users open: config, model, metrics, and the shards
                             joined as virtual datasets (/model/keys, /model/values)
    ckpt-<clock>.partial/    a checkpoint being written (ignored by readers)
    latest                   text file: the name of the newest published checkpoint

Every file is written under a temporary name, fsynced and renamed; the
directory is renamed from ``.partial`` only when complete, and ``latest``
moves last. A crash at any moment leaves the previous checkpoint valid.
The format is a contract, described in the README ("Checkpoints").
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from . import __version__
from .errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "ShardState",
    "partial_dir",
    "write_shard_file",
    "read_shard_file",
    "publish",
    "resolve_checkpoint",
    "load_model",
    "checkpoint_info",
    "restore_shard",
    "check_resumable",
    "cut_parts",
    "resume_clocks",
]

FORMAT_VERSION = 1
_LATEST = "latest"


@dataclass
class ShardState:
    """Everything one shard holds at a checkpoint."""

    shard_id: int
    num_shards: int
    clock: int
    keys: np.ndarray  # uint64 [n]
    values: np.ndarray  # float32 [n, width]
    state: dict[str, np.ndarray]  # optimizer state name -> float32 [n, width]
    clock_table: np.ndarray  # int64 [groups]: steps each group finished
    finished: np.ndarray  # bool [groups]: group finished training
    optimizer: str
    hyperparameters: dict[str, float]
    away: np.ndarray | None = None  # bool [groups]: group dropped (silent) or absent at the cut; None = none


def partial_dir(root: str | Path, clock: int) -> Path:
    """Where the checkpoint of ``clock`` is written before it is published."""
    return Path(root) / f"ckpt-{clock}.partial"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_h5(path: Path):
    """Context: an h5py file written at ``path.tmp``, fsynced and renamed to ``path`` on success."""

    class _Writer:
        def __enter__(self) -> h5py.File:
            self.tmp = path.with_name(path.name + ".tmp")
            self.file = h5py.File(self.tmp, "w")
            return self.file

        def __exit__(self, kind, *rest) -> None:
            self.file.close()
            if kind is not None:
                self.tmp.unlink(missing_ok=True)
                return
            with open(self.tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(self.tmp, path)

    return _Writer()


def write_shard_file(directory: str | Path, shard: ShardState) -> Path:
    """Write ``shard-<id>.h5`` into ``directory`` (created if needed); returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"shard-{shard.shard_id}.h5"
    with _atomic_h5(path) as f:
        f.attrs.update(
            format_version=FORMAT_VERSION, kind="hybrid_ps shard", shard_id=shard.shard_id,
            num_shards=shard.num_shards, clock=shard.clock, width=shard.values.shape[1],
            optimizer=shard.optimizer, library_version=__version__,
        )
        for name, value in shard.hyperparameters.items():
            f.attrs[f"optimizer.{name}"] = value
        _dataset(f, "keys", shard.keys, "uint64 feature keys held by this shard (slot order)")
        _dataset(f, "values", shard.values, "float32 [keys, width] parameter values")
        for name, array in shard.state.items():
            _dataset(f, f"state/{name}", array, f"float32 [keys, width] optimizer state '{name}'")
        _dataset(f, "clock_table", shard.clock_table, "int64 [groups]: steps each worker group had finished")
        _dataset(f, "finished", shard.finished, "bool [groups]: worker group had finished training")
        away = np.zeros_like(shard.finished) if shard.away is None else shard.away
        _dataset(f, "away", away, "bool [groups]: worker group was dropped (silent) or absent at the cut")
    return path


def _dataset(f: h5py.File, name: str, data: np.ndarray, description: str) -> None:
    f.create_dataset(name, data=data)
    f[name].attrs["description"] = description


def read_shard_file(path: str | Path) -> ShardState:
    """Read one shard file.

    Raises:
        CheckpointError: missing, truncated, foreign or of another format version.
    """
    with _open(path) as f:
        _check_format(f, path, "hybrid_ps shard")
        try:
            return ShardState(
                shard_id=int(f.attrs["shard_id"]), num_shards=int(f.attrs["num_shards"]),
                clock=int(f.attrs["clock"]), keys=f["keys"][()], values=f["values"][()],
                state={name: f["state"][name][()] for name in f.get("state", {})},
                clock_table=f["clock_table"][()], finished=f["finished"][()],
                optimizer=str(f.attrs["optimizer"]),
                hyperparameters={k.split(".", 1)[1]: float(v) for k, v in f.attrs.items() if k.startswith("optimizer.")},
                away=f["away"][()] if "away" in f else None,
            )
        except (KeyError, OSError) as e:
            raise CheckpointError(f"{path}: incomplete shard file: {e}") from None


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable HDF5 file (truncated or foreign): {e}") from None


def _check_format(f: h5py.File, path: str | Path, kind: str) -> None:
    if f.attrs.get("kind") != kind:
        raise CheckpointError(f"{path}: not a {kind} file (attribute 'kind' is {f.attrs.get('kind')!r})")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}, this hybrid_ps reads {FORMAT_VERSION}")


def publish(root: str | Path, clock: int, info: dict[str, Any], keep: int = 3) -> Path | None:
    """Join the shard files of ``ckpt-<clock>.partial`` into ``model.h5`` and publish it.

    Args:
        root: the checkpoint root.
        clock: the cut's clock (names the directory).
        info: ``config`` (dict), ``model`` (dict: kind, width, ...), ``metrics``
            (dict of numbers) and ``data`` (dict) recorded in ``model.h5``.
        keep: how many published checkpoints to keep (older ones are removed).

    Returns:
        The published directory, or ``None`` if another leader is publishing
        (or has published) this cut: publishing is idempotent across leaders.
    """
    root = Path(root)
    partial = partial_dir(root, clock)
    lock = partial / ".publishing"
    try:
        lock.mkdir()
    except (FileExistsError, FileNotFoundError):
        return None
    shard_paths = sorted(partial.glob("shard-*.h5"), key=lambda p: int(p.stem.split("-")[1]))
    if not shard_paths:
        raise CheckpointError(f"{partial}: no shard files to publish")
    shards = []
    for path in shard_paths:
        with _open(path) as f:
            shards.append((path.name, f["keys"].shape[0], f["values"].shape[1], f["clock_table"][()], dict(f.attrs)))
    _write_model_file(partial / "model.h5", clock, shards, info)
    _fsync_dir(partial)
    final = root / f"ckpt-{clock}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)  # the lock goes along: a late leader finds no .partial, or a locked one
    (final / lock.name).rmdir()
    _fsync_dir(root)
    latest_tmp = root / (_LATEST + ".tmp")
    latest_tmp.write_text(final.name + "\n")
    with open(latest_tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(latest_tmp, root / _LATEST)
    _fsync_dir(root)
    _prune(root, keep)
    return final


def _write_model_file(path: Path, clock: int, shards: list, info: dict[str, Any]) -> None:
    total = sum(count for _, count, _, _, _ in shards)
    width = shards[0][2]
    with _atomic_h5(path) as f:
        f.attrs.update(
            format_version=FORMAT_VERSION, kind="hybrid_ps model", library_version=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), clock=clock,
            num_shards=len(shards), total_keys=total,
        )
        model = f.create_group("model")
        model.attrs.update({k: v for k, v in info.get("model", {}).items()})
        model.attrs["width"] = width
        keys = h5py.VirtualLayout(shape=(total,), dtype=np.uint64)
        values = h5py.VirtualLayout(shape=(total, width), dtype=np.float32)
        start = 0
        for name, count, _, _, _ in shards:
            if count:
                keys[start : start + count] = h5py.VirtualSource(name, "keys", shape=(count,))
                values[start : start + count] = h5py.VirtualSource(name, "values", shape=(count, width))
            start += count
        model.create_virtual_dataset("keys", keys, fillvalue=0)
        model.create_virtual_dataset("values", values, fillvalue=0)
        model["keys"].attrs["description"] = "uint64 feature keys of every shard, joined (virtual dataset)"
        model["values"].attrs["description"] = "float32 [keys, width] values matching /model/keys"
        group = f.create_group("shards")
        for name, _, _, _, _ in shards:
            group[name.removesuffix(".h5")] = h5py.ExternalLink(name, "/")
        f.create_dataset("clock_table", data=shards[0][3])
        f["clock_table"].attrs["description"] = "int64 [groups]: steps each worker group had finished"
        for section in ("metrics", "data"):
            f.create_group(section).attrs.update(_attrs(info.get(section, {})))
        config = f.create_group("config")
        config.attrs["json"] = json.dumps(info.get("config", {}), default=str)
        for name, values_ in info.get("config", {}).items():
            config.create_group(name).attrs.update(_attrs(values_))


def _attrs(mapping: dict[str, Any]) -> dict[str, Any]:
    """HDF5-storable attribute values (None and nested values become strings)."""
    return {k: (v if isinstance(v, (int, float, str, bool, np.number)) else json.dumps(v, default=str))
            for k, v in mapping.items()}


def _prune(root: Path, keep: int) -> None:
    published = sorted(
        (p for p in root.glob("ckpt-*") if p.is_dir() and not p.name.endswith(".partial")),
        key=lambda p: int(p.name.split("-")[1]),
    )
    for old in published[: max(len(published) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a path: a ``ckpt-*`` directory, its ``model.h5``, or a root (uses ``latest``).

    Raises:
        CheckpointError: nothing published there.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not a checkpoint: no such file or directory")
    if path.is_file() and path.name == "model.h5":
        return path.parent
    if (path / "model.h5").is_file():
        return path
    latest = path / _LATEST
    if latest.is_file():
        target = path / latest.read_text().strip()
        if (target / "model.h5").is_file():
            return target
        raise CheckpointError(f"{latest} points to {target.name}, which has no model.h5")
    raise CheckpointError(f"{path}: not a checkpoint (no model.h5) and no 'latest' pointer")


@dataclass
class Model:
    """A checkpointed model, loaded for evaluation: sorted keys and their values."""

    keys: np.ndarray
    values: np.ndarray
    kind: str
    clock: int
    attrs: dict[str, Any]
    model_attrs: dict[str, Any]  # the model's kind, width and shape settings (``Model.attrs``)


def load_model(path: str | Path) -> Model:
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
    order = np.argsort(keys, kind="stable")
    return Model(keys[order], values[order], str(model_attrs.get("kind", "")), int(attrs["clock"]), attrs,
                 model_attrs)


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
        with _open(path) as shard:
            _check_format(shard, path, "hybrid_ps shard")
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


def restore_shard(directory: str | Path, owned: Callable[[np.ndarray], np.ndarray], optimizer: str) -> Iterator[ShardState]:
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
        state = read_shard_file(path)
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

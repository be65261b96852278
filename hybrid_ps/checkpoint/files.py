"""Checkpoint files: one HDF5 file per shard, written atomically (temporary name, fsync, rename)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..atomic import atomic_path
from ..errors import CheckpointError

__all__ = ["FORMAT_VERSION", "DELTA_FORMAT_VERSION", "ShardState", "partial_dir", "write_shard_file",
           "read_shard_file", "shard_chain", "merge_chain", "newest_positions"]

FORMAT_VERSION = 1
DELTA_FORMAT_VERSION = 2  # a delta (a shard file with ``base``, a model.h5 with ``bases``): readers of 1 refuse it
_READABLE = (FORMAT_VERSION, DELTA_FORMAT_VERSION)
_STATE_DESCRIPTIONS = {"updated": "uint32 [keys, 1]: clock of the push that last updated the row (feature eviction)"}
LATEST = "latest"
BEST = "best"  # a pointer like latest: the cut whose validation logloss was lowest (train.early_stopping)


@dataclass(kw_only=True)
class ShardState:
    """Everything one shard holds at a checkpoint (built by keyword: its fields are many and alike)."""

    shard_id: int
    num_shards: int
    clock: int
    keys: np.ndarray  # uint64 [n]
    values: np.ndarray  # float32 [n, width]
    state: dict[str, np.ndarray]  # optimizer state name -> float32 [n, width]; "updated" -> uint32 [n, 1] stamps
    clock_table: np.ndarray  # int64 [groups]: steps each group finished
    finished: np.ndarray  # bool [groups]: group finished training
    optimizer: str
    hyperparameters: dict[str, float]
    away: np.ndarray | None = None  # bool [groups]: group dropped (silent) or absent at the cut; None = none
    base: int | None = None  # a delta: only the rows changed since this shard's file of the cut at ``base``
    admission: tuple[np.ndarray, int] | None = None  # feature admission: the count sketch's uint8 counters, and the
    # keys added to it since its last halving (a resume on the same shards counts on exactly where it stopped)


def partial_dir(root: str | Path, clock: int) -> Path:
    """Where the checkpoint of ``clock`` is written before it is published."""
    return Path(root) / f"ckpt-{clock}.partial"


def write_shard_file(directory: str | Path, shard: ShardState) -> Path:
    """Write ``shard-<id>.h5`` into ``directory`` (created if needed); returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"shard-{shard.shard_id}.h5"
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as f:
        f.attrs.update(
            format_version=FORMAT_VERSION if shard.base is None else DELTA_FORMAT_VERSION, kind="hybrid_ps shard",
            shard_id=shard.shard_id, num_shards=shard.num_shards, clock=shard.clock, width=shard.values.shape[1],
            optimizer=shard.optimizer, library_version=__version__,
        )
        if shard.base is not None:
            f.attrs["base"] = f"ckpt-{shard.base}"
        for name, value in shard.hyperparameters.items():
            f.attrs[f"optimizer.{name}"] = value
        _dataset(f, "keys", shard.keys, "uint64 feature keys held by this shard (slot order)")
        _dataset(f, "values", shard.values, "float32 [keys, width] parameter values")
        for name, array in shard.state.items():
            _dataset(f, f"state/{name}", array, _STATE_DESCRIPTIONS.get(name, f"float32 [keys, width] optimizer state "
                                                                               f"'{name}'"))
        _dataset(f, "clock_table", shard.clock_table, "int64 [groups]: steps each worker group had finished")
        _dataset(f, "finished", shard.finished, "bool [groups]: worker group had finished training")
        away = np.zeros_like(shard.finished) if shard.away is None else shard.away
        _dataset(f, "away", away, "bool [groups]: worker group was dropped (silent) or absent at the cut")
        if shard.admission is not None:
            counts, added = shard.admission
            f.create_dataset("admission", data=counts, compression="gzip", compression_opts=1)  # mostly zeros
            f["admission"].attrs.update(added=added, description="uint8 counters of keys not admitted yet (feature "
                                        "admission's count sketch); 'added': keys counted since its last halving")
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
                hyperparameters={k.split(".", 1)[1]: float(v) for k, v in f.attrs.items()
                                 if k.startswith("optimizer.")},
                away=f["away"][()] if "away" in f else None,
                base=_base_clock(f, path),
                admission=(f["admission"][()], int(f["admission"].attrs["added"])) if "admission" in f else None,
            )
        except (KeyError, OSError) as e:
            raise CheckpointError(f"{path}: incomplete shard file: {e}") from None


def _base_clock(f: h5py.File, path: str | Path) -> int | None:
    if "base" not in f.attrs:
        return None
    name = str(f.attrs["base"])
    if not name.startswith("ckpt-") or not name[5:].isdigit():
        raise CheckpointError(f"{path}: attribute 'base' is {name!r}, not the name of a checkpoint (ckpt-<clock>)")
    return int(name[5:])


def shard_chain(path: str | Path) -> list[Path]:
    """The files that make up a shard file: itself if it is full; for a delta, its base's chain (in the sibling
    ``ckpt-<base>`` directory, same file name), then itself. Oldest first: later rows replace earlier ones.

    Raises:
        CheckpointError: a file of the chain is missing (its checkpoint deleted, or never published) or not a
            shard file of a format this build reads.
    """
    chain = [Path(path)]
    while True:
        with _open(chain[-1]) as f:
            _check_format(f, chain[-1], "hybrid_ps shard")
            base = _base_clock(f, chain[-1])
        if base is None:
            return chain[::-1]
        below = chain[-1].parent.parent / f"ckpt-{base}" / chain[-1].name
        if not below.is_file():
            raise CheckpointError(f"{chain[-1]}: the checkpoint it extends, {below.parent.name}, is gone "
                                  f"({below} is missing)")
        chain.append(below)


def newest_positions(keys: np.ndarray) -> np.ndarray:
    """The position of each distinct key's last occurrence in ``keys`` (a chain read oldest first), sorted by key."""
    return keys.size - 1 - np.unique(keys[::-1], return_index=True)[1]


def merge_chain(states: list[ShardState]) -> ShardState:
    """A shard file's chain (``shard_chain``'s files, oldest first) as one state: each key's latest row."""
    if len(states) == 1:
        return states[0]
    keys = np.concatenate([s.keys for s in states])
    newest = newest_positions(keys)
    last = states[-1]
    merged = {name: np.concatenate([s.state[name] for s in states])[newest] for name in last.state}
    return dataclasses.replace(last, keys=keys[newest], values=np.concatenate([s.values for s in states])[newest],
                               state=merged, base=None)


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
    if version not in _READABLE:
        raise CheckpointError(f"{path}: checkpoint format {version}, this hybrid_ps reads "
                              f"{' and '.join(map(str, _READABLE))}")

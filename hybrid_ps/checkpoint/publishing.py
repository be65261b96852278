"""Publishing a checkpoint: the shards' files joined by ``model.h5``, the directory renamed, ``latest`` moved last."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..atomic import atomic_path, atomic_write, fsync_dir
from ..errors import CheckpointError
from .files import BEST, DELTA_FORMAT_VERSION, FORMAT_VERSION, LATEST, _open, partial_dir, shard_chain

__all__ = ["publish", "mark_best"]


def publish(root: str | Path, clock: int, info: dict[str, Any], keep: int = 3) -> Path | None:
    """Join the shard files of ``ckpt-<clock>.partial`` into ``model.h5`` and publish it.

    Args:
        root: the checkpoint root.
        clock: the cut's clock (names the directory).
        info: ``config`` (dict), ``model`` (dict: kind, width, ...), ``metrics``
            (dict of numbers) and ``data`` (dict) recorded in ``model.h5``; ``feature_scales``
            (``(keys, scales)`` arrays, optional) as ``/model/scale_keys`` and ``/model/scales``.
        keep: how many published checkpoints to keep (older ones are removed).

    Returns:
        The published directory, or ``None`` if another leader is publishing
        (or has published) this cut: publishing is idempotent across leaders.
    """
    root = Path(root)
    partial = partial_dir(root, clock)
    final = root / f"ckpt-{clock}"
    if final.exists():  # published already: a shard file written late (a shard restarted during the cut) is
        shutil.rmtree(partial, ignore_errors=True)  # only part of the cut, and never replaces the whole one
        _prune(root, keep)
        return None
    _wait_for_bases(root, partial)
    lock = partial / ".publishing"
    try:
        lock.mkdir()
    except (FileExistsError, FileNotFoundError):
        return None
    shard_paths = sorted(partial.glob("shard-*.h5"), key=lambda p: int(p.stem.split("-")[1]))
    if not shard_paths:
        raise CheckpointError(f"{partial}: no shard files to publish")
    shards = []  # every file the model reads, each shard's chain oldest first (a delta's bases, then itself)
    for path in shard_paths:
        for link in shard_chain(path):
            name = link.name if link.parent == partial else f"../{link.parent.name}/{link.name}"
            with _open(link) as f:
                shards.append((name, f["keys"].shape[0], f["values"].shape[1], f["clock_table"][()], dict(f.attrs)))
    _write_model_file(partial / "model.h5", clock, shards, info)  # fsyncs partial/ too
    os.replace(partial, final)  # the lock goes along: a late leader finds no .partial, or a locked one
    (final / lock.name).rmdir()
    fsync_dir(root)
    with atomic_write(root / LATEST) as handle:
        handle.write(final.name + "\n")
    _prune(root, keep)
    return final


def mark_best(root: str | Path, clock: int) -> None:
    """Point ``best`` at the cut at ``clock`` (published, or being published by another leader); pruning
    keeps it."""
    root = Path(root)
    with atomic_write(root / BEST) as handle:
        handle.write(f"ckpt-{clock}\n")


def _write_model_file(path: Path, clock: int, shards: list, info: dict[str, Any]) -> None:
    total = sum(count for _, count, _, _, _ in shards)
    width = shards[0][2]
    own = [name for name, *_ in shards if "/" not in name]
    bases = sorted({name.split("/")[1] for name, *_ in shards if "/" in name}, key=lambda n: int(n.split("-")[1]))
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as f:
        f.attrs.update(
            format_version=DELTA_FORMAT_VERSION if bases else FORMAT_VERSION, kind="hybrid_ps model",
            library_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), clock=clock,
            num_shards=len(own), total_keys=_distinct_keys(path.parent, shards) if bases else total,
        )
        if bases:  # a delta: /model/keys lists a key once per file of the chain that holds it; the last row counts
            f.attrs["bases"] = json.dumps(bases)
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
        scale_keys, scales = info.get("feature_scales") or (np.zeros(0, np.uint64), np.zeros(0, np.float32))
        model.create_dataset("scale_keys", data=np.asarray(scale_keys, dtype=np.uint64))
        model.create_dataset("scales", data=np.asarray(scales, dtype=np.float32))
        model["scales"].attrs["description"] = ("float32 divisors of the feature values of /model/scale_keys "
                                                "(sorted uint64), applied before the model (data.feature_scaling)")
        group = f.create_group("shards")
        for name in own:
            group[name.removesuffix(".h5")] = h5py.ExternalLink(name, "/")
        f.create_dataset("clock_table", data=shards[-1][3])
        f["clock_table"].attrs["description"] = "int64 [groups]: steps each worker group had finished"
        for section in ("metrics", "data"):
            f.create_group(section).attrs.update(_attrs(info.get(section, {})))
        config = f.create_group("config")
        config.attrs["json"] = json.dumps(info.get("config", {}), default=str)
        for name, values_ in info.get("config", {}).items():
            config.create_group(name).attrs.update(_attrs(values_))


def _wait_for_bases(root: Path, partial: Path, timeout: float = 60.0) -> None:
    """Wait while a checkpoint a delta of ``partial`` extends is still being published (by another leader)."""
    bases = set()
    for path in partial.glob("shard-*.h5"):
        with _open(path) as f:
            if "base" in f.attrs:
                bases.add(str(f.attrs["base"]))
    deadline = time.monotonic() + timeout
    while any(not (root / b).is_dir() and (root / f"{b}.partial").is_dir() for b in bases):
        if time.monotonic() > deadline:
            return  # shard_chain names what is missing
        time.sleep(0.05)


def _distinct_keys(directory: Path, shards: list) -> int:
    """How many distinct keys the files of ``shards`` (named relative to ``directory``) hold together."""
    keys = []
    for name, *_ in shards:
        with _open(directory / name) as f:
            keys.append(f["keys"][()])
    return int(np.unique(np.concatenate(keys)).size)


def _attrs(mapping: dict[str, Any]) -> dict[str, Any]:
    """HDF5-storable attribute values (None and nested values become strings)."""
    return {k: (v if isinstance(v, (int, float, str, bool, np.number)) else json.dumps(v, default=str))
            for k, v in mapping.items()}


def _prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` published checkpoints, the one ``best`` names, and the checkpoints any
    of those (or a delta still being written) extends."""
    best = (root / BEST).read_text().strip() if (root / BEST).is_file() else None
    published = sorted(
        (p for p in root.glob("ckpt-*") if p.is_dir() and not p.name.endswith(".partial")),
        key=lambda p: int(p.name.split("-")[1]),
    )
    kept = published[max(len(published) - keep, 0):] + [p for p in published if p.name == best]
    needed = {p.name for p in kept}
    for directory in kept + [p for p in root.glob("ckpt-*.partial") if p.is_dir()]:
        needed |= _bases_of(directory)
    for old in published:
        if old.name not in needed:
            shutil.rmtree(old, ignore_errors=True)


def _bases_of(directory: Path) -> set[str]:
    """The checkpoints a checkpoint directory's shard files extend (deltas), by name."""
    bases = set()
    for path in directory.glob("shard-*.h5"):
        try:
            bases |= {link.parent.name for link in shard_chain(path)[:-1]}
        except CheckpointError:
            continue  # a chain already broken is no reason to keep anything
    return bases

"""HDF5 checkpoints (the package's API): one file per shard, a ``model.h5`` that joins them, atomic publish, ``latest``.

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
The format is a contract, described in docs/checkpoints.md.
"""

from .files import (
    BEST,
    FORMAT_VERSION,
    LATEST,
    ShardState,
    partial_dir,
    read_shard_file,
    write_shard_file,
)
from .publishing import mark_best, publish
from .read import (
    SavedModel,
    check_resumable,
    checkpoint_info,
    cut_parts,
    load_saved_model,
    read_feature_scales,
    resolve_checkpoint,
    restore_shard,
    resume_clocks,
)

__all__ = [
    "BEST",
    "FORMAT_VERSION",
    "LATEST",
    "ShardState",
    "partial_dir",
    "write_shard_file",
    "read_shard_file",
    "publish",
    "mark_best",
    "resolve_checkpoint",
    "SavedModel",
    "load_saved_model",
    "read_feature_scales",
    "checkpoint_info",
    "check_resumable",
    "restore_shard",
    "cut_parts",
    "resume_clocks",
]

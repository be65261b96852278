"""Data sources: the file reader (parts, compression, line formats; sharded by rank) and the synthetic default."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import DataConfig
    from .batch import Batch
    from .reader import DataShard
    from .synthetic import SyntheticShard

__all__ = ["open_data_shard", "batch_source"]

log = logging.getLogger(__name__)


def open_data_shard(config: DataConfig, rank: int, num_ranks: int) -> DataShard | SyntheticShard:
    """This rank's share of the configured data: the files of ``path`` if it is set, else synthetic rows."""
    if config.path:
        from .reader import DataShard

        return DataShard(config.path, rank, num_ranks, format=config.format)
    from .synthetic import SyntheticShard, SyntheticSpec

    spec = SyntheticSpec.from_config(config)
    return SyntheticShard(spec, rank, num_ranks)


def batch_source(config: DataConfig, batch_size: int, rank: int, num_ranks: int) -> Callable[[], Iterable[Batch]]:
    """A function that returns one pass over this rank's minibatches.

    With ``config.preload`` the rows are read (or generated) once, here, and every
    pass replays them from memory; otherwise every pass streams them again.
    """
    shard = open_data_shard(config, rank, num_ranks)
    if not config.preload:
        return lambda: shard.batches(batch_size)
    started = time.monotonic()
    held = list(shard.batches(batch_size))
    log.debug("rank %d: %d rows in memory in %.2fs", rank, sum(b.num_rows for b in held), time.monotonic() - started)
    return lambda: iter(held)

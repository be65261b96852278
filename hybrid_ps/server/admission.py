"""Feature admission: a shard gives a key a row only once it was pushed ``after`` times.

Click logs bring new ids for ever, most of them seen a handful of times; a row for
each would grow a shard without bound for keys that never learn anything. Until a
key is admitted, its pushes only count (in a ``CountSketch``: a bounded counting
Bloom filter, halved as the stream goes on) and its pulls read the model's initial
value (a key without a row reads as zeros). The acting primary decides, and forwards
only the admitted keys of a push, so every replica holds the same rows.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ConfigError
from ..tables import CountSketch

__all__ = ["Admission", "DEFAULT_SKETCH_BYTES"]

log = logging.getLogger(__name__)

DEFAULT_SKETCH_BYTES = 16 << 20
_HASHES = 3
_HALVE_SHARE = 8  # the counters are halved once this share of them (1/8) was added: about 1 in 3 is then in use


class Admission:
    """Which keys of a push get (or have) a row.

    Args:
        after: pushes of a key before it gets a row (1: at its first push; at most 255).
        sketch_bytes: memory of the counts of keys not admitted yet (one byte a counter).

    Raises:
        ConfigError: ``after`` out of [1, 255], or ``sketch_bytes`` below 1 KiB.
    """

    def __init__(self, *, after: int, sketch_bytes: int = DEFAULT_SKETCH_BYTES) -> None:
        if not 1 <= after <= 255:
            raise ConfigError(f"cluster.admit_after must be in [1, 255], got {after!r}")
        if sketch_bytes < 1024:
            raise ConfigError(f"cluster.admit_sketch_mb must give at least 1 KiB, got {sketch_bytes} bytes")
        self.after = after
        self.sketch = CountSketch(sketch_bytes, _HASHES, halve_every=sketch_bytes // _HALVE_SHARE)
        self.admitted = 0  # keys given a row
        self.counted = 0  # pushes of keys not admitted (yet)

    def admit(self, keys: np.ndarray, held: np.ndarray) -> np.ndarray:
        """Of a push's distinct ``keys`` (``held``: which have a row), those to apply (a bool mask): the held ones,
        and those whose count reaches ``after`` with this push."""
        if held.all():
            return held
        new = ~held
        counts = self.sketch.add(np.ascontiguousarray(keys[new]))
        admitted = counts >= self.after
        keep = held.copy()
        keep[new] = admitted
        taken = int(admitted.sum())
        self.admitted += taken
        self.counted += admitted.size - taken
        return keep

    def saved(self) -> tuple[np.ndarray, int]:
        """What a checkpoint keeps: the counters and the keys counted since the last halving."""
        return self.sketch.export(), self.sketch.added

    def resume(self, saved: dict[int, tuple[np.ndarray, int]], *, shard_id: int) -> None:
        """Count on from a checkpoint's sketches (``saved``: by the shard that wrote each, negative ids for a
        checkpoint of other shards): this shard's own, exactly; else, re-sharded, every counter's largest value
        among them (no key is counted lower than it was; a few more are admitted early)."""
        if shard_id in saved:
            counts, added = saved[shard_id]
            if counts.size == self.sketch.counters:
                self.sketch.load(counts, added)
                return
        fitting = [counts for counts, _ in saved.values() if counts.size == self.sketch.counters]
        if fitting:
            self.sketch.load(np.maximum.reduce(fitting))
        elif saved:
            log.warning("the checkpoint's admission counts are of another size (cluster.admit_sketch_mb changed): "
                        "counting afresh")

"""What a group reports at the end: its sums as named fields, and as the vector the job sums over the world."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..net.link_model import NETWORK_FIELDS

__all__ = ["GroupResult", "TRAFFIC_FIELDS", "NETWORK_FIELDS"]

TRAFFIC_FIELDS = ("sent", "received", "push_raw", "push_filtered", "keys_in", "keys_after_cache", "keys_out",
                  "values_in", "values_out")
"""A leader's PS traffic in bytes: on the wire both ways; pushes before and after the filters and encoding
(float32 keys + values, one replica); key frames before the key cache, after it and after compression;
pushed value frames before and after compression."""


@dataclass
class GroupResult:
    """What a group reports at the end (sums over the group; the leader's copy is authoritative)."""

    steps: int = 0
    samples: int = 0
    train_loss_sum: float = 0.0
    eval_loss_sum: float = 0.0
    eval_correct: float = 0.0
    eval_rows: int = 0
    seconds: float = 0.0
    preempted: bool = False
    train_seconds: float = 0.0
    ps_seconds: float = 0.0  # the leader's time blocked on the PS tier during training
    early_stopped: bool = False  # the evaluating group's leader asked to stop (train.early_stopping)
    validation_logloss: float = 0.0  # the evaluating group's: the last held-out logloss
    best_clock: int = 0  # ... the cut with the lowest held-out logloss (train.early_stopping)
    best_logloss: float = 0.0  # ... and that logloss
    traffic: np.ndarray = field(default_factory=lambda: np.zeros(len(TRAFFIC_FIELDS)))  # bytes, TRAFFIC_FIELDS
    network: np.ndarray = field(default_factory=lambda: np.zeros(len(NETWORK_FIELDS)))  # the simulated network's

    def as_array(self) -> np.ndarray:
        """The numbers as one float64 vector (for a world-level sum): the fields in order, then the traffic
        and the simulated network's counters."""
        numbers = [getattr(self, name) for name in _NUMBERS]
        return np.concatenate([np.array(numbers, dtype=np.float64), self.traffic, self.network])

    @classmethod
    def from_array(cls, array: np.ndarray) -> GroupResult:
        """The inverse of ``as_array`` (of a sum of them: counts come back as whole numbers, flags as any-true)."""
        size = len(_NUMBERS) + len(TRAFFIC_FIELDS) + len(NETWORK_FIELDS)
        if array.size != size:
            raise ValueError(f"a group result has {size} numbers, got {array.size}")
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}  # int, bool or float, as the field's type says
        for name, number in zip(_NUMBERS, array[: len(_NUMBERS)].tolist(), strict=True):
            kind = kinds[name]
            values[name] = int(number) if kind == "int" else bool(number) if kind == "bool" else float(number)
        traffic_end = len(_NUMBERS) + len(TRAFFIC_FIELDS)
        return cls(**values, traffic=np.array(array[len(_NUMBERS):traffic_end], dtype=np.float64),
                   network=np.array(array[traffic_end:], dtype=np.float64))


_NUMBERS = tuple(f.name for f in fields(GroupResult) if f.name not in ("traffic", "network"))
"""The order of ``GroupResult.as_array``'s leading numbers."""

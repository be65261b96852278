"""Model rows a group keeps itself: small dense layers replicated on every member, only allreduced.

With ``model.dense_in_group`` a model's dense blocks (``Model.dense_keys``) are not
pulled and pushed every step. Every member holds the same copy and applies the
group's allreduced gradient to it with the job's optimizer (identical inputs,
identical updates). The leader keeps the sum of those gradients and pushes it to
the blocks on the PS every ``sync_every`` clocks (and before every checkpoint cut
and at the end), and the pull of every ``sync_every``-th clock fetches the blocks
again: the copy re-anchors to the PS, where every group's updates meet. Nothing is
lost (every gradient reaches the PS once); a group's copy is at most about
``sync_every`` steps of other groups' updates behind.
"""

from __future__ import annotations

import numpy as np

from ..protocol.wire import FINAL_CLOCK
from ..tables.optimizers import Optimizer

__all__ = ["GroupRows"]


class GroupRows:
    """The group's copy of ``keys`` (sorted), its optimizer state, and (leader) the gradient not pushed yet.

    Args:
        keys: the rows kept in the group (sorted, e.g. a model's dense blocks).
        width: values per row.
        optimizer: the job's update rule, applied to the copy every step.
        sync_every: clocks between pushes of the summed gradient and re-reads from the PS (>= 2).
    """

    def __init__(self, keys: np.ndarray, width: int, optimizer: Optimizer, sync_every: int) -> None:
        self.keys = np.asarray(keys, dtype=np.uint64)
        self.optimizer = optimizer
        self.sync_every = sync_every
        self.values = np.zeros((self.keys.size, width), dtype=np.float32)
        self.state = {name: np.zeros_like(self.values) for name in optimizer.state_names}
        self.unpushed = np.zeros((self.keys.size, width), dtype=np.float64)
        self._anchored = False

    def pull_keys(self, union: np.ndarray, clock: int) -> np.ndarray:
        """What the leader pulls for ``clock``: ``union`` with the group's rows only on a sync clock."""
        if not self._anchored or clock == FINAL_CLOCK or clock % self.sync_every == 0:
            self._anchored = True
            return union
        return union[~np.isin(union, self.keys, assume_unique=True)]

    def merged(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pulled ``keys``/``values`` with the group's rows: taken from them if pulled, else inserted."""
        at = np.searchsorted(keys, self.keys)
        pulled = at < keys.size
        pulled[pulled] = keys[at[pulled]] == self.keys[pulled]
        if pulled.all():
            self.values[:] = values[at]  # a sync clock: the PS's rows are the copy from now on
            return keys, values
        return np.insert(keys, at, self.keys), np.insert(values, at, self.values, axis=0)

    def apply(self, gradient: np.ndarray, leader: bool) -> None:
        """Apply the group's mean ``gradient`` of the kept rows (``[len(keys), width]``, in ``keys`` order)."""
        self.optimizer.apply(self.values, np.asarray(gradient, dtype=np.float32), self.state)
        if leader:
            self.unpushed += gradient

    def due(self, clock: int) -> bool:
        """Whether the leader pushes the summed gradient after step ``clock`` (two before the next sync pull,
        so that the prefetched sync pull, sent during the next step, comes after it)."""
        return (clock + 2) % self.sync_every == 0

    def drain(self) -> tuple[np.ndarray, np.ndarray]:
        """(Leader) the kept keys and the gradient summed since the last push, as float32; zero afterwards."""
        summed = self.unpushed.astype(np.float32)
        self.unpushed[:] = 0.0
        return self.keys, summed

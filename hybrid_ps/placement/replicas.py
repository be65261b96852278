"""Where each key lives with replication: primary and backups on the ring, minus the shards known dead.

A key's range lives on ``R`` shards: its preference list on the hash ring
(``HashRing.preference_slots``). Pulls and pushes go to the *acting
primary*, the first live shard of the list; it forwards each push to the other
live replicas (``backup_parts``) and acknowledges it once they have it. When a shard dies, each of its
ranges is served by its next replica (the backup is promoted) and nothing
else moves. A range whose replicas are all dead is lost: ``RangeLostError``.
A dead shard restarted and filled from the others (``rejoined``) is a backup
again, but is acting primary of a range only once no other replica of it is
live (moving a primary while pushes are in flight would reorder them).

Client and shards share this class: a client routes with it, a shard checks
that a request belongs to it under its own view of the dead shards.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import RangeLostError
from ._ring_kernels import first_outside, group_by_owner
from .ring import HashRing

__all__ = ["Placement", "default_replication"]


def default_replication(setting: int, num_servers: int) -> int:
    """``cluster.replication`` with 0 = automatic: 2 replicas when there are 2 or more servers."""
    wanted = setting or (2 if num_servers >= 2 else 1)
    return min(wanted, num_servers)


class Placement:
    """The ring, the replication factor and the set of shards known dead (immutable: ``without`` makes a new one).

    Args:
        ring: the consistent-hash ring of every shard of the tier.
        replication: replicas per key range (capped at the number of shards).
        dead: shard ids known dead.
        rejoined: shard ids restarted after a death, in the order they rejoined: live backups, primaries only where
            no other replica lives (or only replicas that rejoined later).
    """

    def __init__(self, ring: HashRing, replication: int = 1, dead: Iterable[int] = (),
                 rejoined: Iterable[int] = ()) -> None:
        self.ring = ring
        self.replication = max(1, min(int(replication), ring.num_shards))
        self.dead = frozenset(int(s) for s in dead)
        self.rejoined = tuple(int(s) for s in dict.fromkeys(rejoined) if int(s) not in self.dead)
        self._preference = ring.preference_slots(self.replication)  # [points, R] slots, primary first
        live_slots = ~np.isin(ring.shard_ids, sorted(self.dead))
        alive = live_slots[self._preference]
        # the acting primary: the first live replica in preference order, those that rejoined after the others
        # (and in the order they rejoined: the earlier was filled first)
        rank = np.zeros(ring.num_shards, dtype=np.int64)
        for order, shard in enumerate(self.rejoined, start=1):
            rank[np.searchsorted(ring.shard_ids, shard)] = order
        columns = np.arange(self.replication)
        order_key = np.where(alive, rank[self._preference] * self.replication + columns, np.iinfo(np.int64).max)
        first_alive = np.argmin(order_key, axis=1)
        primary = self._preference[np.arange(self._preference.shape[0]), first_alive]
        self._primary_slot = np.where(alive.any(axis=1), primary, -1)  # per point; -1 = every replica dead
        self._live_slots = np.flatnonzero(live_slots)
        # per point: the slot a pull goes to, the slots a push goes to (-1: none), for group_by_owner
        self._pull_owners = self._primary_slot.astype(np.int32).reshape(-1, 1)
        self._push_owners = np.where(alive, self._preference, -1).astype(np.int32)
        self._allowed: dict[tuple[int, bool], np.ndarray] = {}  # (shard, primary) -> uint8 per point
        self._backup_owners: dict[int, np.ndarray] = {}  # shard -> per point, the live replicas but that shard

    @property
    def live_shards(self) -> list[int]:
        """Ids of the shards not known dead, ascending."""
        return self.ring.shard_ids[self._live_slots].tolist()

    @property
    def lost_points(self) -> int:
        """How many ring ranges have no live replica."""
        return int((self._primary_slot < 0).sum())

    def without(self, shard: int) -> Placement:
        """This placement with ``shard`` dead too."""
        return Placement(self.ring, self.replication, self.dead | {int(shard)}, self.rejoined)

    def with_rejoined(self, shard: int) -> Placement:
        """This placement with dead ``shard`` restarted (filled from the other replicas): a live backup again."""
        rejoined = [s for s in self.rejoined if s != int(shard)] + [int(shard)]
        return Placement(self.ring, self.replication, self.dead - {int(shard)}, rejoined)

    def primary_of(self, keys: np.ndarray) -> np.ndarray:
        """The acting primary shard id of every key (-1 where every replica is dead)."""
        slots = self._primary_slot[self.ring.point_of(keys)]
        return np.where(slots >= 0, self.ring.shard_ids[np.maximum(slots, 0)], -1)

    def is_primary(self, keys: np.ndarray, shard: int) -> np.ndarray:
        """Which of ``keys`` have ``shard`` as acting primary (bool mask)."""
        return self.primary_of(keys) == shard

    def is_replica(self, keys: np.ndarray, shard: int) -> np.ndarray:
        """Which of ``keys`` have ``shard`` in their preference list, dead or alive (bool mask)."""
        return self._holds(self.ring.point_of(keys), shard)

    def _holds(self, points: np.ndarray, shard: int) -> np.ndarray:
        slot = int(np.searchsorted(self.ring.shard_ids, shard))
        if slot == self.ring.num_shards or int(self.ring.shard_ids[slot]) != shard:
            return np.zeros(points.shape, dtype=bool)  # not on this ring at all
        return (self._preference[points] == slot).any(axis=1)

    def replicas_of(self, keys: np.ndarray) -> np.ndarray:
        """``[n, R]`` shard ids of every key's preference list (dead ones included), primary first."""
        return self.ring.shard_ids[self._preference[self.ring.point_of(keys)]]

    def pull_parts(self, keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(shard, positions)`` of ``keys`` by acting primary, for every shard that has some.

        Raises:
            RangeLostError: some key has no live replica.
        """
        return self._parts(self._served_points(keys), self._pull_owners)

    def push_parts(self, keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(shard, positions)`` of ``keys`` for every live replica: each key goes to all of its live replicas (a
        client writing every replica itself, as the raw baseline of benchmarks/load.py does).

        Raises:
            RangeLostError: some key has no live replica.
        """
        return self._parts(self._served_points(keys), self._push_owners)

    def backup_parts(self, keys: np.ndarray, shard: int) -> list[tuple[int, np.ndarray]]:
        """``(backup, positions)`` of ``keys`` for every live replica but ``shard`` (the primary forwarding them)."""
        owners = self._backup_owners.get(shard)
        if owners is None:
            slot = int(np.searchsorted(self.ring.shard_ids, shard))
            owners = np.where(self._push_owners == slot, -1, self._push_owners).astype(np.int32)
            self._backup_owners[shard] = owners
        return self._parts(self.ring.point_of(keys), owners)

    def _served_points(self, keys: np.ndarray) -> np.ndarray:
        """The ring points of ``keys``, checked to have a live replica each (else ``RangeLostError``)."""
        points = self.ring.point_of(keys)
        if self.dead and points.size and self._primary_slot[points].min() < 0:
            self.check_complete()
        return points

    def _parts(self, points: np.ndarray, owners: np.ndarray) -> list[tuple[int, np.ndarray]]:
        positions, bounds = group_by_owner(points.reshape(-1), owners, self.ring.num_shards)
        return [(int(self.ring.shard_ids[slot]), positions[bounds[slot] : bounds[slot + 1]])
                for slot in self._live_slots if bounds[slot + 1] > bounds[slot]]

    def first_stray(self, keys: np.ndarray, shard: int, primary: bool) -> tuple[int, str] | None:
        """The first of ``keys`` that ``shard`` must not serve, and why; ``None`` if it may serve them all.

        Args:
            keys: the keys of a request.
            shard: the shard asked.
            primary: the request needs the acting primary (a pull), not any replica (a push).
        """
        if self.ring.num_shards == 1 and not self.dead and shard == int(self.ring.shard_ids[0]):
            return None  # the only shard holds everything: no hashing
        points = self.ring.point_of(keys).reshape(-1)
        first = first_outside(points, self._allowed_points(shard, primary))
        if first < 0:
            return None
        key = int(np.asarray(keys).reshape(-1)[first])
        owners = self.ring.shard_ids[self._preference[points[first]]].tolist()
        role = "its acting primary" if primary else "one of its replicas"
        return key, f"key {key} belongs to shard(s) {owners} (dead: {sorted(self.dead)}); shard {shard} is not {role}"

    def _allowed_points(self, shard: int, primary: bool) -> np.ndarray:
        """Per ring point, whether ``shard`` serves it (as acting primary, or as any replica): uint8."""
        allowed = self._allowed.get((shard, primary))
        if allowed is None:
            every = np.arange(self.ring.num_points)
            slot = int(np.searchsorted(self.ring.shard_ids, shard))
            serves = (self._primary_slot == slot) if primary else self._holds(every, shard)
            allowed = self._allowed[(shard, primary)] = np.ascontiguousarray(serves, dtype=np.uint8)
        return allowed

    def check_complete(self) -> None:
        """Raise if some key range has no live replica.

        Raises:
            RangeLostError: naming the replicas of the first lost range.
        """
        lost = np.flatnonzero(self._primary_slot < 0)
        if lost.size:
            replicas = self.ring.shard_ids[self._preference[lost[0]]].tolist()
            raise RangeLostError(
                f"every replica of {lost.size} of the {self._primary_slot.size} key ranges is dead (one lives on "
                f"shards {replicas}; dead: {sorted(self.dead)}; replication {self.replication}): their updates "
                f"are lost; restart the job with --resume latest"
            )

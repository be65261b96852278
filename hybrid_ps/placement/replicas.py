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

__all__ = ["Placement", "default_replication", "REJOINED", "RETIRED"]

REJOINED = "rejoined"
RETIRED = "retired"


def default_replication(setting: int, num_servers: int) -> int:
    """``cluster.replication`` with 0 = automatic: 2 replicas when there are 2 or more servers."""
    wanted = setting or (2 if num_servers >= 2 else 1)
    return min(wanted, num_servers)


class Placement:
    """The ring, the replication factor, the shards known dead and the history of restarts and retirements
    (immutable: ``without``, ``with_rejoined`` and ``with_retired`` make a new one).

    Args:
        ring: the consistent-hash ring of every shard of the tier.
        replication: replicas per key range (capped at the number of shards).
        dead: shard ids known dead.
        history: ``("rejoined", shard)`` and ``("retired", shard)`` in the order they happened: a dead shard
            restarted and filled (a live backup, a primary only where no replica older in the range lives),
            and a dead shard that never comes back (its ranges go on to the next shards of the ring, which are
            filled as backups). Rejoins of shards dead again are dropped.
    """

    def __init__(self, ring: HashRing, replication: int = 1, dead: Iterable[int] = (),
                 history: Iterable[tuple[str, int]] = ()) -> None:
        self.ring = ring
        self.replication = max(1, min(int(replication), ring.num_shards))
        events = [(str(kind), int(shard)) for kind, shard in history]
        if any(kind not in (REJOINED, RETIRED) for kind, _ in events):
            raise ValueError(f"a placement history names {REJOINED!r} and {RETIRED!r} events, not {events}")
        self.retired = tuple(dict.fromkeys(shard for kind, shard in events if kind == RETIRED))
        self.dead = frozenset(int(s) for s in dead) | frozenset(self.retired)
        self.history = _without_stale_events(events, self.dead)
        self.rejoined = tuple(shard for kind, shard in self.history if kind == REJOINED)
        self._preference, epoch = self._preference_lists()  # [points, R] slots, and when each joined its range
        live_slots = ~np.isin(ring.shard_ids, sorted(self.dead))
        alive = live_slots[self._preference]
        # the acting primary: the live replica that holds its range longest (restarted and added ones rank
        # after the others, in the order they came), the first in preference order among equals
        width = self._preference.shape[1]
        order_key = np.where(alive, epoch * width + np.arange(width), np.iinfo(np.int64).max)
        first_alive = np.argmin(order_key, axis=1)
        primary = self._preference[np.arange(self._preference.shape[0]), first_alive]
        self._primary_slot = np.where(alive.any(axis=1), primary, -1)  # per point; -1 = every replica dead
        self._live_slots = np.flatnonzero(live_slots)
        # per point: the slot a pull goes to, the slots a push goes to (-1: none), for group_by_owner
        self._pull_owners = self._primary_slot.astype(np.int32).reshape(-1, 1)
        self._push_owners = np.where(alive, self._preference, -1).astype(np.int32)
        self._allowed: dict[tuple[int, bool], np.ndarray] = {}  # (shard, primary) -> uint8 per point
        self._backup_owners: dict[int, np.ndarray] = {}  # shard -> per point, the live replicas but that shard

    def _preference_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Each point's replicas (``[points, R]`` slots, the ring's preference list without the retired shards:
        the next shards of the ring take their place) and the event (index in ``history``, 1-based; 0: from the
        start) from which each replica holds the range: a later one is acting primary only after the others."""
        ring, slot_of = self.ring, {int(s): i for i, s in enumerate(self.ring.shard_ids)}
        retirements = [(at, slot_of[shard]) for at, (kind, shard) in enumerate(self.history, start=1)
                       if kind == RETIRED and shard in slot_of]
        base = ring.preference_slots(self.replication + len(retirements))
        since = np.zeros(base.shape, dtype=np.int64)
        window = np.ones(base.shape, dtype=bool)
        gone: list[int] = []
        for stage in range(len(retirements) + 1):
            if stage:
                gone.append(retirements[stage - 1][1])
            kept = ~np.isin(base, gone)
            width = max(1, min(self.replication, ring.num_shards - len(gone)))
            now = kept & (np.cumsum(kept, axis=1) <= width)
            since[now & ~window] = retirements[stage - 1][0] if stage else 0
            window = now
        width = int(window[0].sum())
        rank = np.zeros(ring.num_shards, dtype=np.int64)
        for at, (kind, shard) in enumerate(self.history, start=1):
            if kind == REJOINED and shard in slot_of:
                rank[slot_of[shard]] = at
        preference = base[window].reshape(-1, width)
        return preference, np.maximum(since[window].reshape(-1, width), rank[preference])

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
        return Placement(self.ring, self.replication, self.dead | {int(shard)}, self.history)

    def with_rejoined(self, shard: int) -> Placement:
        """This placement with dead ``shard`` restarted (filled from the other replicas): a live backup again.

        Raises:
            ValueError: ``shard`` was retired.
        """
        if int(shard) in self.retired:
            raise ValueError(f"shard {shard} was retired: its ranges live on other shards now")
        history = [event for event in self.history if event != (REJOINED, int(shard))] + [(REJOINED, int(shard))]
        return Placement(self.ring, self.replication, self.dead - {int(shard)}, history)

    def with_retired(self, shard: int) -> Placement:
        """This placement with ``shard`` gone for good: in each of its ranges the next shard of the ring takes its
        place, as a backup (the acting primaries do not change)."""
        if int(shard) in self.retired:
            return self
        if len(self.retired) + 1 >= self.ring.num_shards:
            raise ValueError(f"shard {shard} is the last shard not retired")
        return Placement(self.ring, self.replication, self.dead | {int(shard)}, [*self.history, (RETIRED, int(shard))])

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


def _without_stale_events(events: list[tuple[str, int]], dead: frozenset[int]) -> tuple[tuple[str, int], ...]:
    """``events`` with each retirement once and, per shard, only its last rejoin, and only if it is not dead."""
    last_rejoin = {shard: at for at, (kind, shard) in enumerate(events) if kind == REJOINED}
    kept: list[tuple[str, int]] = []
    for at, (kind, shard) in enumerate(events):
        fresh = (kind, shard) not in kept if kind == RETIRED else shard not in dead and last_rejoin[shard] == at
        if fresh:
            kept.append((kind, shard))
    return tuple(kept)

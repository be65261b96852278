"""Lost replicas rebuilt from the others, as a shard's service takes part in it: a dead shard restarted, or
retired and its ranges re-replicated on the next shards of the ring.

On both sides: as an acting primary, a shard answers REJOIN by filling the restarted shard
(``Forwards.start_fill``) and telling its clients (``SHARD_UP``); as the restarted shard it
takes the rows (FILL) and the clocks (FILLED). A RETIRE (from a supervisor out of restarts,
or from a peer) moves the dead shard's place in each range on to the next shard of the ring:
each acting primary tells its peers first (so that none refuses a forward or a fill for keys
it newly replicates), then its clients (``SHARD_RETIRED``), then fills each new backup. What
it says to supervisors (the shards as it knows them) and to clients new to it (every death,
restart and retirement it knows) is here too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import numpy as np

from ..errors import WireError
from ..placement.replicas import RETIRED, Placement
from ..protocol import wire
from .groups import GroupTable
from .membership import TierMembership
from .replication import AppliedPushes, Forwards, WaitingRequest
from .replies import Replies
from .request_keys import RequestKeys
from .shard import Shard

__all__ = ["Rebuild"]

log = logging.getLogger(__name__)


class Rebuild:
    """One shard's part in rebuilding restarted shards (and in its own rebuild, if it is one).

    Args:
        shard_id: this shard.
        shard: its keys and values.
        membership: its view of the tier (the dead and restarted shards).
        groups: the groups it serves (their clocks, who finished or left).
        forwards: its links to the other shards (fills go through them).
        applied: the recent pushes it applied (a fill carries those its rows hold).
        replies: how it answers.
        request_keys: reads and checks the keys of a FILL.
        endpoint: where it serves.
    """

    def __init__(self, *, shard_id: int, shard: Shard, membership: TierMembership, groups: GroupTable,
                 forwards: Forwards, applied: AppliedPushes, replies: Replies, request_keys: RequestKeys,
                 endpoint: str) -> None:
        self.shard_id, self.shard, self.membership, self.groups = shard_id, shard, membership, groups
        self.forwards, self.applied, self.replies, self.request_keys = forwards, applied, replies, request_keys
        self.endpoint = endpoint
        self._retirements: dict[int, WaitingRequest] = {}  # retired shard -> the fills of its ranges from here

    def peer_view(self) -> bytes:
        """The shards as this one knows them (JSON: endpoints by id, ids known dead), for a supervisor: its own
        list may name a restarted shard's old endpoint."""
        endpoints = {str(shard): endpoint for shard, endpoint in self.forwards.links.endpoints.items()}
        endpoints[str(self.shard_id)] = self.endpoint
        return json.dumps({"endpoints": endpoints, "dead": sorted(self.membership.placement.dead)}).encode()

    def tell_of_changes(self, identity: bytes, group: int) -> None:
        """Tell a client that is new here of every restart and retirement (in order: the acting primaries depend
        on it), then of every other shard known dead."""
        placement = self.membership.placement
        endpoints = {**self.forwards.links.endpoints, self.shard_id: self.endpoint}
        for kind, shard in placement.history:
            if kind == RETIRED:
                self.replies.shard_retired(identity, group, shard)
            else:
                self.replies.shard_up(identity, group, shard, endpoints.get(shard, ""))
        for dead in sorted(placement.dead - set(placement.retired)):
            self.replies.shard_down(identity, group, dead)

    def check_sender(self, frame: memoryview) -> None:
        """Refuse a forward or a fill from a shard known dead (fenced: it woke and sent what it had queued).

        Raises:
            WireError: the sender is dead to this shard.
        """
        sender = wire.decode_shard_id(frame)
        if sender in self.membership.placement.dead:
            raise WireError(f"shard {sender} is dead to shard {self.shard_id}: its message is refused")

    # -- as an acting primary -------------------------------------------------------------------------

    def rejoin(self, identity: bytes, header: wire.Header, body: list[memoryview], clients: dict[bytes, int]) -> None:
        """A supervisor restarted a dead shard: fill it with the rows it replicates of those this shard is acting
        primary of, forward to it from now on, tell ``clients``; the REJOIN is ACKed (with the rows sent) once it
        has them all."""
        shard = wire.decode_shard_id(body[1])
        endpoint = bytes(body[2]).decode("utf-8", errors="replace")
        if not self.membership.rejoin(shard):
            self.replies.ack_with(identity, header, 0, self.peer_view())
            return
        self.forwards.learn({shard: endpoint})
        keys = self.shard.keys()
        self.forwards.start_fill(WaitingRequest(identity, header), shard, keys, select=lambda chunk: self._serves_for(
            chunk, shard), table=self._fill_table)
        log.info("shard %d: filling rejoined shard %d (%s) from its %d keys", self.shard_id, shard, endpoint,
                 keys.size)
        for client, group in clients.items():
            self.replies.shard_up(client, group, shard, endpoint)

    def retire(self, identity: bytes, header: wire.Header, shard: int, clients: dict[bytes, int], *,
               from_a_peer: bool) -> WaitingRequest | None:
        """Dead ``shard`` never comes back: if that is new here, tell the peers (first: they must know before a
        forward or fill for keys they newly replicate reaches them) and ``clients``, and fill each new backup
        with the rows this shard is acting primary of. A supervisor's RETIRE is answered once the fills are
        done (the request to answer now, else ``None``); a peer's is ACKed now."""
        before = self.membership.placement
        if self.membership.retire(shard):
            request = WaitingRequest(b"" if from_a_peer else identity, header, value=0)  # value: the rows sent
            self._retirements[shard] = request
            self.forwards.tell_peers_retired(shard, self.membership.placement.live_shards)
            for client, group in clients.items():
                self.replies.shard_retired(client, group, shard)
            self._fill_new_backups(request, before)
        if from_a_peer:
            self.replies.ack(identity, header)
            return None
        fills = self._retirements.get(shard)
        if fills is None:  # refused (membership.retire says why)
            return WaitingRequest(identity, header, error=f"shard {self.shard_id} cannot retire shard {shard} (not "
                                  f"another shard of its ring whose ranges live on elsewhere)")
        if fills.backups:  # fills under way: answered when they end
            fills.identity, fills.header = identity, header
            return None
        return WaitingRequest(identity, header, value=fills.value, error=fills.error)

    def _fill_new_backups(self, request: WaitingRequest, before: Placement) -> None:
        """Fill every shard that replicates keys now it did not under ``before``, of those this one is acting
        primary of."""
        after, keys = self.membership.placement, self.shard.keys()
        for backup in after.live_shards:
            if backup == self.shard_id:
                continue
            if self.forwards.links.connected(backup):
                self.forwards.start_fill(request, backup, keys, select=self._new_for(backup, before), table=_no_table)
            else:  # no leader told this shard where it is: it cannot forward to it either
                log.error("shard %d does not know shard %d's endpoint: it cannot fill it", self.shard_id, backup)
        log.info("shard %d: filling shards %s with the ranges they now back up, from its %d keys", self.shard_id,
                 sorted(request.backups), keys.size)

    def _new_for(self, backup: int, before: Placement) -> Callable[[np.ndarray], np.ndarray]:
        """Which keys of a chunk ``backup`` gets: this shard is their acting primary, and it replicates them now,
        not under ``before``."""
        return lambda chunk: self._serves_for(chunk, backup) & ~before.is_replica(chunk, backup)

    def _serves_for(self, keys: np.ndarray, new: int) -> np.ndarray:
        """Which of ``keys`` this shard is acting primary of and ``new`` replicates (bool mask)."""
        placement = self.membership.placement
        return placement.is_primary(keys, self.shard_id) & placement.is_replica(keys, new)

    def fill_next(self) -> None:
        """Send every fill under way its next chunk (``Forwards.fill_next``)."""
        self.forwards.fill_next(self._rows_to_fill, self.shard.width)

    def _rows_to_fill(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``keys`` sorted, their whole rows now, and the recent pushes applied to them (``AppliedPushes.among``)."""
        mine = np.sort(keys)
        return mine, self.shard.table.pull(mine, self.shard.columns), self.applied.among(mine)

    def _fill_table(self) -> tuple[np.ndarray, dict]:
        """What a FILLED to a restarted shard carries: the clocks, and the shards dead, the placement history, the
        groups finished or left."""
        placement, clock = self.membership.placement, self.groups.clock
        return clock.clocks, {"restarted": True, "dead": sorted(placement.dead),
                              "history": [list(event) for event in placement.history],
                              "finished": clock.finished.tolist(), "left": self.groups.left.tolist()}

    # -- as the restarted shard -----------------------------------------------------------------------

    def fill(self, identity: bytes, header: wire.Header, body: list[memoryview]) -> None:
        """Set the rows an acting primary sends, with their optimizer state, and note the pushes they hold as
        applied.

        Raises:
            WireError: a malformed FILL, or one from a shard known dead.
        """
        self.check_sender(body[4])
        keys = self.request_keys.checked(identity, body[1], header, primary=False)
        columns = self.shard.columns
        if len(body[2]) != keys.size * columns * 4 or len(body[3]) % 8:
            raise WireError(f"a FILL of {keys.size} keys carries {len(body[2])} bytes of rows, expected "
                            f"{keys.size} * {columns} float32, and {len(body[3])} bytes of pushes")
        self.applied.take(np.frombuffer(body[3], dtype="<u8"))
        self.shard.load_rows(keys, np.frombuffer(body[2], dtype="<f4").reshape(keys.size, columns))

    def filled(self, body: list[memoryview]) -> None:
        """An acting primary sent all its rows: take its clocks, and the dead and restarted shards it knows.

        Raises:
            WireError: a malformed FILLED, or one from a shard known dead.
        """
        self.check_sender(body[3])
        clock = self.groups.clock
        if len(body[1]) % 8:
            raise WireError(f"a FILLED's clocks frame of {len(body[1])} bytes is not int64 clocks")
        clocks = np.frombuffer(body[1], dtype="<i8")
        try:
            table = json.loads(bytes(body[2]))
            if not table["restarted"]:
                return  # a new backup of a retired shard's ranges: the rows were all
            dead, finished, left = [int(s) for s in table["dead"]], table["finished"], table["left"]
            history = [(str(kind), int(shard)) for kind, shard in table["history"]]
        except (ValueError, KeyError, TypeError) as e:
            raise WireError(f"a bad FILLED table: {e}") from None
        if clocks.size != clock.num_groups or len(finished) != clocks.size or len(left) != clocks.size:
            raise WireError(f"a FILLED for {clocks.size} groups, this shard has {clock.num_groups}")
        np.maximum(clock.clocks, clocks, out=clock.clocks)
        clock.finished |= np.asarray(finished, dtype=bool)
        self.groups.left |= np.asarray(left, dtype=bool)
        self.membership.adopt(dead=dead, history=history)
        log.info("shard %d: filled by a primary: %d keys held, clocks %s", self.shard_id, len(self.shard),
                 clock.clocks.tolist())


def _no_table() -> tuple[np.ndarray, dict]:
    """What a FILLED to a live shard carries (a new backup of a retired shard's ranges): nothing to take."""
    return np.zeros(0, dtype=np.int64), {"restarted": False}

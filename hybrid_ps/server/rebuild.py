"""A dead shard restarted and filled from the other replicas, as a shard's service takes part in it.

On both sides: as an acting primary, a shard answers REJOIN by filling the restarted shard
(``Forwards.start_fill``) and telling its clients (``SHARD_UP``); as the restarted shard it
takes the rows (FILL) and the clocks (FILLED). What it says to supervisors (the shards as it
knows them) and to clients new to it (every death and restart it knows) is here too.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from ..errors import WireError
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

    def peer_view(self) -> bytes:
        """The shards as this one knows them (JSON: endpoints by id, ids known dead), for a supervisor: its own
        list may name a restarted shard's old endpoint."""
        endpoints = {str(shard): endpoint for shard, endpoint in self.forwards.links.endpoints.items()}
        endpoints[str(self.shard_id)] = self.endpoint
        return json.dumps({"endpoints": endpoints, "dead": sorted(self.membership.placement.dead)}).encode()

    def tell_of_changes(self, identity: bytes, group: int) -> None:
        """Tell a client that is new here of every shard known dead, then of every restarted one (in order)."""
        placement = self.membership.placement
        for dead in sorted(placement.dead):
            self.replies.shard_down(identity, group, dead)
        endpoints = {**self.forwards.links.endpoints, self.shard_id: self.endpoint}
        for shard in placement.rejoined:
            self.replies.shard_up(identity, group, shard, endpoints.get(shard, ""))

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
        keys = self.shard.rows()[0]
        self.forwards.start_fill(WaitingRequest(identity, header), shard, keys)
        log.info("shard %d: filling rejoined shard %d (%s) from its %d keys", self.shard_id, shard, endpoint,
                 keys.size)
        for client, group in clients.items():
            self.replies.shard_up(client, group, shard, endpoint)

    def fill_next(self) -> None:
        """Send every fill under way its next chunk (``Forwards.fill_next``)."""
        self.forwards.fill_next(self._rows_to_fill, self.shard.width, self._fill_table)

    def _rows_to_fill(self, new: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of ``keys``, those rejoined shard ``new`` replicates and this shard is acting primary of (sorted), their
        whole rows now, and the recent pushes applied to them (``AppliedPushes.among``)."""
        placement = self.membership.placement
        mine = np.sort(keys[placement.is_primary(keys, self.shard_id) & placement.is_replica(keys, new)])
        return mine, self.shard.table.pull(mine, self.shard.columns), self.applied.among(mine)

    def _fill_table(self) -> tuple[np.ndarray, dict]:
        """What a FILLED carries: the clocks, and the shards dead and rejoined, the groups finished or left."""
        placement, clock = self.membership.placement, self.groups.clock
        return clock.clocks, {"dead": sorted(placement.dead), "rejoined": list(placement.rejoined),
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
        clocks = np.frombuffer(body[1], dtype="<i8")
        try:
            table = json.loads(bytes(body[2]))
            dead, rejoined = [int(s) for s in table["dead"]], [int(s) for s in table["rejoined"]]
            finished, left = table["finished"], table["left"]
        except (ValueError, KeyError, TypeError) as e:
            raise WireError(f"a bad FILLED table: {e}") from None
        if clocks.size != clock.num_groups or len(finished) != clocks.size or len(left) != clocks.size:
            raise WireError(f"a FILLED for {clocks.size} groups, this shard has {clock.num_groups}")
        np.maximum(clock.clocks, clocks, out=clock.clocks)
        clock.finished |= np.asarray(finished, dtype=bool)
        self.groups.left |= np.asarray(left, dtype=bool)
        self.membership.adopt(dead=dead, rejoined=rejoined)
        log.info("shard %d: filled by a primary: %d keys held, clocks %s", self.shard_id, len(self.shard),
                 clock.clocks.tolist())

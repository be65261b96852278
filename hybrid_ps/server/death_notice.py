"""What a supervisor tells the other shards about its shard: that it died (EVICT), that it runs again (REJOIN), and
that it never comes back (RETIRE).

A supervisor that saw its shard die tells the other shards at once; each then tells
every client it serves (``SHARD_DOWN``), and the leaders fail over without waiting for
their ``failover_timeout``. The heartbeat timeout still covers hangs and partitions,
which no exit shows. Once the supervisor restarted the shard, REJOIN has every acting
primary fill it with the rows it replicates and tell the clients (``SHARD_UP``). With no
restart left, RETIRE has the next shards of the ring take its place, filled the same way.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import zmq

from ..errors import WireError
from ..net.curve import JobKeys
from ..net.sockets import connect_dealer
from ..protocol import wire

__all__ = ["tell_shards_of_death", "tell_shards_of_rejoin", "tell_shards_of_retirement", "EndpointWatch",
           "view_of_answer"]

log = logging.getLogger(__name__)


def tell_shards_of_death(endpoints: dict[int, str], dead: int, *, curve_keys: JobKeys | None,
                         timeout: float = 2.0) -> list[int]:
    """Send EVICT of ``dead`` to every other shard; returns those that acknowledged within ``timeout`` seconds (a
    shard that does not is dead or hung too: its own supervisor and the leaders' heartbeats deal with it).

    ``endpoints`` (every shard's, by id) is updated with what the answers say (a restarted shard's new endpoint).
    """
    acknowledged = _tell_the_others(endpoints, dead, wire.Op.EVICT, [wire.encode_shard_id(dead)],
                                    curve_keys=curve_keys, timeout=timeout)
    log.info("shard %d died: told shard(s) %s", dead, sorted(acknowledged))
    return sorted(acknowledged)


def tell_shards_of_rejoin(endpoints: dict[int, str], shard: int, *, curve_keys: JobKeys | None,
                          timeout: float = 600.0, cancelled: Callable[[], bool] | None = None) -> dict[int, int]:
    """Send REJOIN of restarted ``shard`` (at ``endpoints[shard]``) to every other shard and wait until each has
    filled it: the rows each sent, by shard (a shard missing did not answer within ``timeout`` seconds, or before
    ``cancelled()``)."""
    started = time.monotonic()
    frames = [wire.encode_shard_id(shard), endpoints[shard].encode()]
    filled = _tell_the_others(endpoints, shard, wire.Op.REJOIN, frames, curve_keys=curve_keys, timeout=timeout,
                              cancelled=cancelled)
    log.warning("shard %d rebuilt: %d rows from shard(s) %s in %.2fs", shard, sum(filled.values()), sorted(filled),
                time.monotonic() - started)
    return filled


def tell_shards_of_retirement(endpoints: dict[int, str], shard: int, *, curve_keys: JobKeys | None,
                              timeout: float = 600.0, cancelled: Callable[[], bool] | None = None) -> dict[int, int]:
    """Send RETIRE of dead ``shard`` to every other shard and wait until each has filled the shards that take its
    place in the ranges it is acting primary of: the rows each sent, by shard (as ``tell_shards_of_rejoin``)."""
    started = time.monotonic()
    filled = _tell_the_others(endpoints, shard, wire.Op.RETIRE, [wire.encode_shard_id(shard)], curve_keys=curve_keys,
                              timeout=timeout, cancelled=cancelled)
    log.warning("shard %d retired: its ranges re-replicated on the other shards, %d rows from shard(s) %s in %.2fs",
                shard, sum(filled.values()), sorted(filled), time.monotonic() - started)
    return filled


def view_of_answer(reply: list[bytes]) -> tuple[dict[int, str], list[int]]:
    """The shards' endpoints by id and the ids known dead, from a shard's ACK to a supervisor (none without a view).

    Raises:
        ValueError: the view frame is not such a document.
    """
    if len(reply) < 2:
        return {}, []
    try:
        view = json.loads(bytes(reply[1]))
        return {int(k): str(v) for k, v in view["endpoints"].items()}, [int(s) for s in view["dead"]]
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a view of the shards: {e}") from None


class EndpointWatch:
    """A supervisor's view of the other shards' endpoints, kept fresh by asking its own shard now and then
    (ENDPOINTS): a peer restarted meanwhile has a new one, which its REJOIN taught every live shard.

    Args:
        endpoints: every shard's endpoint by id (updated in place).
        shard_id: the supervised shard.
        curve_keys: the job's CURVE keys (``None``: plain TCP).
        every: seconds between two questions.
    """

    def __init__(self, endpoints: dict[int, str], shard_id: int, *, curve_keys: JobKeys | None,
                 every: float = 1.0) -> None:
        self.endpoints, self.shard_id, self.curve_keys, self.every = endpoints, shard_id, curve_keys, every
        self._sock: zmq.Socket | None = None
        self._asked = 0.0
        self._waiting = False

    def tick(self) -> None:
        """Read the answer if it came; ask again once ``every`` seconds passed (never blocks)."""
        if self._sock is None:
            self._sock = connect_dealer(zmq.Context.instance(), self.endpoints[self.shard_id], self.curve_keys,
                                        linger_ms=0)
        if self._waiting and self._sock.poll(0):
            self._waiting = False
            try:
                known, _ = view_of_answer(self._sock.recv_multipart())
            except ValueError as e:
                log.warning("shard %d sent a bad view: %s", self.shard_id, e)
                return
            self.endpoints.update({s: at for s, at in known.items() if s != self.shard_id})
        if not self._waiting and time.monotonic() - self._asked >= self.every:
            self._sock.send_multipart([wire.encode_header(wire.Header(wire.Op.ENDPOINTS, 0, 1))])
            self._asked, self._waiting = time.monotonic(), True

    def moved(self) -> None:
        """The supervised shard was restarted (at ``endpoints[shard_id]``): ask the new one from now on."""
        self.close()
        self._waiting = False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


class _Notice:
    """One notice (``op`` about shard ``about``) sent to every other shard, at every endpoint known for it."""

    def __init__(self, op: wire.Op, about: int, frames: list[bytes], curve_keys: JobKeys | None) -> None:
        self.message = [wire.encode_header(wire.Header(op, 0, request_id=1)), *frames]
        self.op, self.about, self.curve_keys = op, about, curve_keys
        self.poller = zmq.Poller()
        self.sent: dict[zmq.Socket, tuple[int, str]] = {}  # socket -> (shard, endpoint)
        self.answers: dict[int, int] = {}  # shard -> the clock field of its ACK
        self.refused: set[int] = set()
        self.called_dead: dict[int, int] = {}  # shard -> how many answers say it is dead

    def send(self, shard: int, endpoint: str) -> None:
        if shard == self.about or any(known == endpoint for _, known in self.sent.values()):
            return
        sock = connect_dealer(zmq.Context.instance(), endpoint, self.curve_keys, linger_ms=0)
        sock.send_multipart(self.message)
        self.poller.register(sock, zmq.POLLIN)
        self.sent[sock] = (shard, endpoint)

    def waiting(self) -> set[int]:
        """Shards that have not answered, unless every answer says they are dead."""
        dead = {s for s, count in self.called_dead.items() if self.answers and count >= len(self.answers)}
        return {shard for shard, _ in self.sent.values()} - set(self.answers) - self.refused - dead

    def take(self, sock: zmq.Socket, endpoints: dict[int, str]) -> None:
        """Read an answer: note it, learn the endpoints it names (and send there too)."""
        reply = sock.recv_multipart()
        self.poller.unregister(sock)
        shard, endpoint = self.sent[sock]
        try:
            header = wire.decode_header(reply)
            if header.op is wire.Op.ERROR:
                log.error("shard %d refused the %s of shard %d: %s", shard, self.op.name, self.about,
                          wire.error_text(reply[1]))
                self.refused.add(shard)
                return
            self.answers[shard] = header.clock
            endpoints[shard] = endpoint
            known, dead = view_of_answer(reply)
            for gone in dead:
                self.called_dead[gone] = self.called_dead.get(gone, 0) + 1
            for other, at in known.items():
                self.send(other, at)
        except (WireError, ValueError) as e:
            log.warning("shard %d sent a bad answer to the %s of shard %d: %s", shard, self.op.name, self.about, e)
            self.refused.add(shard)

    def close(self) -> None:
        for sock in self.sent:
            sock.close(0)


def _tell_the_others(endpoints: dict[int, str], about: int, op: wire.Op, frames: list[bytes], *,
                     curve_keys: JobKeys | None, timeout: float,
                     cancelled: Callable[[], bool] | None = None) -> dict[int, int]:
    """Send ``op`` with ``frames`` to every shard but ``about`` (at the endpoints the answers name, too: a restarted
    shard's new one); the clock field of each shard's ACK within ``timeout`` (checking ``cancelled`` every 0.2 s),
    by shard."""
    notice = _Notice(op, about, frames, curve_keys)
    try:
        for shard, endpoint in endpoints.items():
            notice.send(shard, endpoint)
        deadline = time.monotonic() + timeout
        while notice.waiting() and (remaining := deadline - time.monotonic()) > 0:
            if cancelled is not None and cancelled():
                break
            for sock, _ in notice.poller.poll(int(min(remaining, 0.2) * 1000) + 1):
                notice.take(sock, endpoints)
    finally:
        notice.close()
    return notice.answers

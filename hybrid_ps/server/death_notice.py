"""A supervisor that saw its shard die tells the other shards at once (EVICT naming the dead shard); each
then tells every client it serves (``SHARD_DOWN``), and the leaders fail over without waiting for their
``failover_timeout``. The heartbeat timeout still covers hangs and partitions, which no exit shows."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import zmq

from ..net.curve import JobKeys
from ..net.sockets import connect_dealer
from ..protocol import wire

__all__ = ["tell_shards_of_death"]

log = logging.getLogger(__name__)


def tell_shards_of_death(endpoints: Mapping[int, str], dead: int, *, curve_keys: JobKeys | None,
                         timeout: float = 2.0) -> list[int]:
    """Send EVICT of ``dead`` to every other shard of ``endpoints``; returns those that acknowledged within
    ``timeout`` seconds (a shard that does not is dead or hung too: its own supervisor and the leaders'
    heartbeats deal with it)."""
    context: zmq.Context = zmq.Context.instance()
    sockets = {shard: connect_dealer(context, endpoint, curve_keys, linger_ms=0)
               for shard, endpoint in endpoints.items() if shard != dead}
    acknowledged: list[int] = []
    try:
        poller = zmq.Poller()
        for shard, sock in sockets.items():
            header = wire.encode_header(wire.Header(wire.Op.EVICT, 0, request_id=shard + 1))
            sock.send_multipart([header, wire.encode_shard_id(dead)])
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while len(acknowledged) < len(sockets) and (remaining := deadline - time.monotonic()) > 0:
            for sock, _ in poller.poll(int(remaining * 1000) + 1):
                sock.recv_multipart()
                poller.unregister(sock)
                acknowledged.append(next(s for s, other in sockets.items() if other is sock))
    finally:
        for sock in sockets.values():
            sock.close(0)
    log.info("shard %d died: told shard(s) %s", dead, sorted(acknowledged))
    return sorted(acknowledged)

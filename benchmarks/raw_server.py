"""The raw pyzmq baseline the PS benchmarks compare with: a ROUTER answering with frames of the PS replies' sizes.

Runs in a spawned process (``start``). A 3-frame message (identity, header, keys) is
a pull: answered with a header, one float32 per key and the clock vector. A
4-frame message (identity, header, keys, values) is a push: answered with a
header. Anything else (a header alone) is acknowledged and ends the loop.
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import zmq

__all__ = ["serve_raw", "start", "connect_raw", "stop"]


def serve_raw(max_keys: int, groups: int, curve_keys: dict | None, conn) -> None:
    """Serve on 127.0.0.1 (as a CURVE server with ``curve_keys``, ``JobKeys.to_dict()``); sends the endpoint on ``conn``."""
    from hybrid_ps.protocol import wire

    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 1000)
    if curve_keys:
        sock.curve_secretkey = curve_keys["server_secret"].encode()
        sock.curve_publickey = curve_keys["server_public"].encode()
        sock.curve_server = True
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    conn.send(f"tcp://127.0.0.1:{port}")
    conn.close()
    values, clocks = np.zeros(max_keys, dtype=np.float32), np.zeros(groups, dtype=np.int64)
    reply, ack = (wire.encode_header(wire.Header(op)) for op in (wire.Op.PULL_REPLY, wire.Op.ACK))
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames) == 3:
            sock.send_multipart([frames[0], reply, values[: len(frames[2]) // 8], clocks], copy=False)
        else:
            sock.send_multipart([frames[0], ack], copy=False)
            if len(frames) != 4:
                break
    sock.close()
    context.term()


def connect_raw(context: zmq.Context, endpoint: str, curve_keys=None) -> zmq.Socket:
    """A DEALER to ``endpoint`` with no linger (a CURVE client with ``curve_keys``, a ``JobKeys``)."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_keys is not None:
        curve_keys.connect_as_client(sock)
    sock.connect(endpoint)
    return sock


def stop(processes: list[mp.Process]) -> None:
    """Wait up to 10 s for each process to end, then terminate it."""
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.terminate()


def start(target, *args) -> tuple[mp.Process, str]:
    """Run ``target(*args, conn)`` in a spawned process; returns it and what it sent first (its endpoint)."""
    context = mp.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    child.close()
    if not parent.poll(60):
        process.terminate()
        raise RuntimeError(f"{target.__name__} did not start")
    return process, parent.recv()

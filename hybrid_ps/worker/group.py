"""In-group collectives on numpy buffers (uppercase mpi4py, no pickle on the data path).

Members that wait while their leader talks to the PS (pulls, checkpoints)
wait on non-blocking requests with a sleeping backoff, so 32 ranks on 2 cores do not spin; the
gradient ``Allreduce`` stays a plain blocking call (all members arrive together).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from mpi4py import MPI

from ..data._key_sets import unique_sorted
from ..errors import WaitTimeoutError
from ..net.backoff import Backoff

__all__ = ["WorkerGroup", "wait_quietly"]

_STOP = -1


def wait_quietly(request: MPI.Request, timeout: float | None = None, what: str = "") -> None:
    """Complete a non-blocking MPI request, sleeping between tests instead of spinning.

    Raises:
        WaitTimeoutError: not complete after ``timeout`` seconds (``None``: wait as long as it takes).
    """
    backoff = Backoff()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not request.Test():
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeoutError(f"waited {timeout:g}s for {what or 'an MPI collective'}")
        backoff.sleep()


class WorkerGroup:
    """The collectives one worker group runs each step.

    Args:
        comm: the group's communicator; its rank 0 is the leader.
        leader_timeout: seconds a member waits for its leader's broadcast (the leader may
            be waiting on the PS meanwhile) before giving up; ``None``: no limit.
    """

    def __init__(self, comm: Any, leader_timeout: float | None = None) -> None:
        self.comm = comm
        self.leader_timeout = leader_timeout
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.is_leader = self.rank == 0
        self._counts = np.zeros(self.size, dtype=np.int64)
        self._reduce_buffer = np.zeros(0, dtype=np.float32)

    def reduce_buffer(self, size: int) -> np.ndarray:
        """A float32 buffer of ``size`` for ``allreduce_sum``: one allocation reused across steps.

        Its contents are left over from the last step: write every element. Fresh
        memory every step would cost page faults that take longer than the
        Allreduce itself (benchmarks/allreduce.py); the buffer only ever grows.
        """
        if size > self._reduce_buffer.size:
            self._reduce_buffer = np.zeros(max(size, 2 * self._reduce_buffer.size), dtype=np.float32)
        return self._reduce_buffer[:size]

    def gather_keys(self, keys: np.ndarray | None) -> np.ndarray | None:
        """Leader gets the sorted union of every member's sorted unique keys; ``None`` marks an exhausted member.

        Returns:
            On the leader: the union (empty array if members have keys but none
            touched), or ``None`` when every member is exhausted. Elsewhere ``None``.
        """
        if self.size == 1:
            return None if keys is None else np.array(keys, dtype=np.uint64)  # already sorted and unique
        local = np.ascontiguousarray(keys if keys is not None else np.zeros(0, np.uint64), dtype=np.uint64)
        count = np.array([local.size if keys is not None else _STOP], dtype=np.int64)
        wait_quietly(self.comm.Igather(count, self._counts if self.is_leader else None, root=0))
        if not self.is_leader:
            wait_quietly(self.comm.Igatherv(local, None, root=0))
            return None
        sizes = np.maximum(self._counts, 0)
        received = np.empty(int(sizes.sum()), dtype=np.uint64)
        wait_quietly(self.comm.Igatherv(local, [received, sizes], root=0))
        if (self._counts == _STOP).all():
            return None
        return unique_sorted(received)

    def broadcast_pulled(self, keys: np.ndarray | None, values: np.ndarray | None,
                         width: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Leader sends the pulled ``keys``/``values`` to every member (``None`` = stop).

        Members wait without spinning while the leader is still pulling.
        """
        if self.size == 1:  # a group of one: nothing to send
            if keys is None:
                return None
            assert values is not None, "the leader's pulled values come with its keys"
            return keys, values
        size = np.array([_STOP if keys is None else keys.size], dtype=np.int64)
        wait_quietly(self.comm.Ibcast(size, root=0), self.leader_timeout,
                     f"the leader's pulled values (group rank {self.rank}; the leader waits on the PS or died)")
        if size[0] == _STOP:
            return None
        if not self.is_leader:
            keys = np.empty(int(size[0]), dtype=np.uint64)
            values = np.empty((int(size[0]), width), dtype=np.float32)
        assert keys is not None and values is not None, "the leader's pulled values come with its keys"
        wait_quietly(self.comm.Ibcast(keys, root=0))
        wait_quietly(self.comm.Ibcast(values, root=0))
        return keys, values

    def broadcast_flag(self, flag: bool) -> bool:
        """The leader's ``flag`` on every member (members wait without spinning)."""
        return bool(self.broadcast_int(1 if flag else 0))

    def broadcast_int(self, number: int) -> int:
        """The leader's ``number`` on every member (members wait without spinning)."""
        if self.size == 1:
            return number
        value = np.array([number], dtype=np.int64)
        wait_quietly(self.comm.Ibcast(value, root=0), self.leader_timeout,
                     f"a broadcast from the leader (group rank {self.rank}; the leader waits on the PS or died)")
        return int(value[0])

    def ranks_where(self, flag: bool) -> list[int]:
        """The group ranks whose ``flag`` is set (collective; a rare path, so a pickled allgather)."""
        return [rank for rank, flagged in enumerate(self.comm.allgather(bool(flag))) if flagged]

    def allreduce_sum(self, buffer: np.ndarray) -> np.ndarray:
        """Sum ``buffer`` over the group in place (one buffer-based Allreduce)."""
        if self.size > 1:
            self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        return buffer

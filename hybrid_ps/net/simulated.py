"""A simulated network for one client: a delaying relay process (``proxy.py``) its connections go through.

The relay runs as a process of its own, never as a thread of the client: a group leader is a Python
process doing compute, and a relay thread would take the GIL from it every time a chunk is due (every
few microseconds at 10 Gbit/s), and the leader's compute would delay the chunks in turn.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
import warnings

from ..errors import SimulatedNetworkError
from .link_model import DirectionStats, LinkStats

__all__ = ["SimulatedNetwork"]

log = logging.getLogger(__name__)

_LAUNCHER_PREFIXES = ("PMI", "PMIX", "OMPI", "PRTE", "HYDRA", "MPIR", "SLURM_STEP", "I_MPI")
"""The MPI launcher's variables, kept from the relay (as from shard processes: ``server/process.py``)."""


class SimulatedNetwork:
    """Starts a relay process that delays and rate-limits one client's TCP traffic; a context manager.

    ``route(endpoint)`` gives the address to connect to instead of ``endpoint``. Every connection
    through one ``SimulatedNetwork`` shares its link: ``bandwidth_gbit`` is the client's, each way.

    Args:
        latency_ms: one-way latency added, in milliseconds.
        bandwidth_gbit: Gbit/s of each direction of the client's link (0 = unlimited).
        listen_host: the address the relay listens on (on the client's machine).
        timeout: seconds to wait for the relay to start or to answer.
        realtime: run the relay at real-time priority where allowed (``proxy.py``), so a busy machine delays
            its chunks less.

    Raises:
        SimulatedNetworkError: the relay did not start.
    """

    def __init__(self, *, latency_ms: float, bandwidth_gbit: float, listen_host: str = "127.0.0.1",
                 timeout: float = 30.0, realtime: bool = True) -> None:
        self.latency_ms = latency_ms
        self.bandwidth_gbit = bandwidth_gbit
        self.timeout = timeout
        self.final_stats: LinkStats | None = None  # what the relay forwarded in all, once closed
        command = [sys.executable, "-m", "hybrid_ps.net.proxy", "--control", "--latency-ms", repr(latency_ms),
                   "--bandwidth-gbit", repr(bandwidth_gbit), "--listen-host", listen_host]
        if not realtime:
            command.append("--no-realtime")
        environment = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment,
                                         start_new_session=True)  # a Ctrl-C reaches it through its client only
        self._buffer = b""
        try:
            ready = self._answer("the relay to start")
            self.pid, self.realtime = int(ready["pid"]), bool(ready["realtime"])
        except BaseException:
            self._process.kill()
            self._process.wait()
            raise
        log.debug("simulated network: relay pid %d, %s%s", self.pid, self.describe(),
                  "" if self.realtime else " (no real-time priority)")

    def describe(self) -> str:
        """``0.25 ms one way, 10 Gbit/s``."""
        bandwidth = f"{self.bandwidth_gbit:g} Gbit/s" if self.bandwidth_gbit else "unlimited bandwidth"
        return f"{self.latency_ms:g} ms one way, {bandwidth}"

    def __enter__(self) -> SimulatedNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "final_stats", 1) is None and self._process.poll() is None:
            warnings.warn("SimulatedNetwork left open: its relay is killed", ResourceWarning, stacklevel=1)
            self._process.kill()

    def route(self, endpoint: str) -> str:
        """The endpoint to connect to instead of ``endpoint`` (``tcp://host:port``), through the relay.

        Raises:
            SimulatedNetworkError: the relay refused it (not a tcp:// endpoint) or is gone.
        """
        return str(self._ask({"op": "route", "endpoint": endpoint}, f"a route to {endpoint}")["endpoint"])

    def stats(self) -> LinkStats:
        """What the relay forwarded so far.

        Raises:
            SimulatedNetworkError: the relay is gone.
        """
        return LinkStats.from_dict(self._ask({"op": "stats"}, "the relay's counters")["stats"])

    def close(self) -> LinkStats:
        """Stop the relay (chunks still queued get up to 2 s to leave); what it forwarded in all.

        Never raises: a relay that is gone already is logged, and its last counters are unknown (zeros).
        """
        if self.final_stats is not None:
            return self.final_stats
        try:
            self.final_stats = LinkStats.from_dict(self._ask({"op": "stop"}, "the relay to stop")["stats"])
        except SimulatedNetworkError as e:
            log.warning("simulated network: %s", e)
            self.final_stats = LinkStats(DirectionStats(), DirectionStats(), 0)
        finally:
            if self._process.stdin is not None:
                self._process.stdin.close()
            try:
                self._process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
        return self.final_stats

    # -- the control pipe ---------------------------------------------------------------------------

    def _ask(self, command: dict, what: str) -> dict:
        stdin = self._process.stdin
        if stdin is None or stdin.closed or self._process.poll() is not None:
            raise SimulatedNetworkError(f"cannot ask for {what}: the relay (pid {self._process.pid}) is gone")
        try:
            stdin.write(json.dumps(command).encode() + b"\n")
            stdin.flush()
        except OSError as e:
            raise SimulatedNetworkError(f"cannot ask for {what}: the relay is gone ({e})") from e
        return self._answer(what)

    def _answer(self, what: str) -> dict:
        """The relay's next answer line (an ``error`` answer raises)."""
        stdout = self._process.stdout
        assert stdout is not None  # stdout=PIPE
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([stdout], [], [], max(remaining, 0))
            chunk = os.read(stdout.fileno(), 65536) if ready else b""
            if not chunk:
                state = "exited" if self._process.poll() is not None else f"was silent for {self.timeout:g} s"
                raise SimulatedNetworkError(f"waiting for {what}: the relay (pid {self._process.pid}) {state}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer = json.loads(line)
        if "error" in answer:
            raise SimulatedNetworkError(f"{what}: {answer['error']}")
        return answer


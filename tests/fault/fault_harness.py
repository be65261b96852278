"""Fault-injection harness: real shard processes (``python -m hybrid_ps.server``) and background mpiexec jobs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from hybrid_ps.config import Config
from hybrid_ps.net.curve import JobKeys
from hybrid_ps.placement.replicas import default_replication
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.server.process import ShardProcess, ShardSpec
from hybrid_ps.worker.client import PSClient
from mpi_launch.detect import (
    find_mpiexec,
    idle_friendly_environment,
    mpi_implementation,
)


class Tier:
    """``servers`` shard processes of one configuration, and the clients talking to them."""

    def __init__(self, servers: int, groups: int, **cluster) -> None:
        self.config = Config()
        self.config.cluster.bind_host = "127.0.0.1"
        self.config.cluster.staleness = cluster.pop("staleness", float("inf"))
        for key, value in cluster.items():
            setattr(self.config.cluster, key, value)
        self.config.optimizer.name, self.config.optimizer.learning_rate = "sgd", 1.0
        self.config.train.checkpoint = False
        self.config.validate()
        self.groups = groups
        self.curve_keys = JobKeys.generate()
        self.shards = [ShardProcess(ShardSpec(self.config, i, list(range(servers)), groups, 1, curve_keys=self.curve_keys))
                       for i in range(servers)]
        self.ring = HashRing(range(servers), self.config.cluster.vnodes)
        self.replication = default_replication(self.config.cluster.replication, servers)
        self.context = zmq.Context()
        self._clients: list[PSClient] = []

    def client(self, group: int, failover_timeout: float = 1.5, timeout: float = 60.0) -> PSClient:
        client = PSClient([s.endpoint for s in self.shards], group, self.groups, self.ring, timeout=timeout,
                          context=self.context, replication=self.replication, failover_timeout=failover_timeout,
                          heartbeat_interval=failover_timeout / 4, curve_keys=self.curve_keys)
        self._clients.append(client)
        return client

    def kill(self, shard: int, sig: int = signal.SIGKILL) -> None:
        os.kill(self.shards[shard].pid, sig)

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for shard in self.shards:
            shard.__exit__()
        self.context.term()


class RunningJob:
    """A ``hybrid_ps.train`` job under mpiexec (or any command), started in the background so that a test can
    hurt it; its stderr goes to ``output_dir/stderr.log``."""

    def __init__(self, ranks: int, output_dir, *args: str, command: list[str] | None = None) -> None:
        mpiexec = find_mpiexec()
        env = {**os.environ, **idle_friendly_environment(mpi_implementation(mpiexec), 32)}
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._stderr_path = self.output_dir / "stderr.log"
        self._stderr = open(self._stderr_path, "w")
        command = command or [mpiexec, "-n", str(ranks), sys.executable, "-m", "hybrid_ps.train", "--output-dir",
                              str(self.output_dir), "--log-interval", "0.2", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._stderr, env=env)

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text()

    def records(self, kind: str) -> list[dict]:
        path = self.output_dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [r for r in map(json.loads, (line for line in lines if line.endswith("}"))) if r["kind"] == kind]

    def wait_for(self, condition, what: str, timeout: float = 120.0):
        """Poll ``condition()`` until it returns something true; fails naming ``what`` on timeout or job exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            if self.process.poll() is not None:
                pytest.fail(f"the job ended (exit {self.process.returncode}) before {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.05)
        pytest.fail(f"no {what} within {timeout:g}s:\n{self.stderr[-3000:]}")

    def shard_pid(self, shard: int, other_than: int | None = None) -> int:
        """The pid of shard ``shard``'s latest process (its server rank logs it; ``other_than``: wait for a restart
        of that one)."""
        pattern = re.compile(rf"shard {shard} (?:runs|restarted) as pid (\d+)")

        def latest() -> int | None:
            pids = [int(pid) for pid in pattern.findall(self.stderr)]
            return pids[-1] if pids and pids[-1] != other_than else None

        return int(self.wait_for(latest, f"shard {shard}'s pid"))

    def leader_pid(self, group: int) -> int:
        """The pid of group ``group``'s leader (it logs it)."""
        pattern = re.compile(rf"leader of group {group} runs as pid (\d+)")
        return int(self.wait_for(lambda: pattern.search(self.stderr), f"group {group}'s leader pid").group(1))

    def reached_step(self, step: int) -> dict:
        """Wait until the first leader reported a progress record at or past ``step``."""
        return self.wait_for(lambda: next((r for r in self.records("progress") if r["step"] >= step), None),
                             f"progress at step {step}")

    def finish(self, timeout: float = 300.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._stderr.close()

    @property
    def summary(self) -> dict:
        found = self.records("summary")
        assert found, f"no summary record; stderr:\n{self.stderr[-3000:]}"
        return found[-1]

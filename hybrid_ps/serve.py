"""``python -m hybrid_ps.serve --tier-file FILE --servers S --groups G``: a PS tier of its own.

Starts S shard processes with G group slots and writes the tier file once
they are up; worker jobs join with ``mpiexec -n K python -m hybrid_ps.train
--ps-tier FILE --groups g --first-group i`` (one job per group or several), so a
crashed worker job ends only its own groups: the shards drop them after
``--group-timeout`` and the others train on; a restarted job rejoins. A shard
that dies is restarted (``--shard-restarts``) and filled by the others while
the groups train, and the tier file names its new endpoint. The tier serves
until every group that joined has left, then removes the file.

Shards join and leave at run time through ``python -m hybrid_ps.tierctl``:
this process starts or retires the shard, rewrites the tier file and asks the
coordinating shard for a reshard clock; at that clock every group writes a
checkpoint cut and every shard takes the ranges the new ring gives it from
the cut's files (only ~1/S of the keys move).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from .cli import run_main
from .config import Config, build_parser, load_config
from .errors import ConfigError, HybridPSError, ShardUnavailableError
from .logs import configure_logging
from .models import build_model
from .net.curve import JobKeys
from .net.sockets import bind_router, close_router, connect_dealer, resolve_bind_host
from .placement.replicas import default_replication
from .preemption import StopRequest
from .protocol import wire
from .server.death_notice import tell_shards_of_death, tell_shards_of_rejoin, tell_shards_of_retirement
from .server.process import ShardProcess, ShardSpec, describe_exit
from .tier import TierInfo, TierView, write_tier_file

__all__ = ["TierSupervisor", "main"]

log = logging.getLogger("hybrid_ps.serve")

_POLL_MS = 200
_COORDINATOR_TIMEOUT_MS = 10_000
_DESCRIPTION = """Run a PS tier of its own for worker jobs started with --ps-tier FILE.
Takes the same settings as hybrid_ps.train: [cluster] (servers, groups = group slots, staleness,
replication, group_timeout, bind_host, security), [model], [optimizer] and the checkpoint ones of [train]."""


class TierSupervisor:
    """The shard processes of a tier, its tier file and its control socket (for ``hybrid_ps.tierctl``).

    Args:
        config: the tier's settings (``cluster.servers`` shards, ``cluster.groups`` slots).
        tier_file: where to write the tier file.
        debug: log debug messages in the shards.

    Raises:
        ShardUnavailableError: a shard did not start.
    """

    def __init__(self, config: Config, tier_file: str, debug: bool = False) -> None:
        self.config, self.tier_file, self.debug = config, tier_file, debug
        self.width = build_model(config.model).width
        self.shards: dict[int, ShardProcess] = {}  # every shard started, members or not
        self.specs: dict[int, ShardSpec] = {}
        self.restarts_left: dict[int, int] = {}  # per shard: how many more times a death is restarted
        self.members: list[int] = []  # the shards of the current view (a removed one may still be leaving)
        self.codes: dict[int, int] = {}
        self.retired: dict[int, dict[int, int]] = {}  # shard -> the rows each other shard re-replicated, once done
        self._notices: list[threading.Thread] = []  # REJOINs and RETIREs under way: the loop supervises meanwhile
        self.curve_keys = JobKeys.generate() if config.cluster.security == "curve" else None
        self._context = zmq.Context()
        self.control, self.control_endpoint = bind_router(self._context, resolve_bind_host(config.cluster.bind_host),
                                                          self.curve_keys, linger_ms=0, kind=zmq.REP)
        ids = list(range(config.cluster.servers))
        for shard_id in ids:
            self._start_shard(shard_id, ids)
        self._publish()

    def _start_shard(self, shard_id: int, shard_ids: list[int]) -> None:
        spec = ShardSpec(self.config, shard_id, shard_ids, self.config.cluster.groups, self.width,
                         coordinator=shard_id == shard_ids[0], groups_present=False, curve_keys=self.curve_keys)
        self.shards[shard_id] = ShardProcess(spec, self.debug, label=self.tier_file)
        self.specs[shard_id] = spec
        self.restarts_left[shard_id] = self.config.cluster.shard_restarts if spec.replication > 1 else 0
        self.members.append(shard_id)

    @property
    def view(self) -> TierView:
        """The tier's member shards that have not died."""
        live = {i: self.shards[i].endpoint for i in self.members if self.shards[i].process.poll() in (None, 0)}
        return TierView(live, default_replication(self.config.cluster.replication, len(live)))

    def _publish(self, view: TierView | None = None) -> None:
        """Write the tier file for ``view`` (default: the running shards)."""
        tier = TierInfo((view or self.view).endpoints, self.config.cluster.groups, self.config.to_json_dict(),
                        os.path.abspath(self.config.checkpoint_root), self.control_endpoint, self.curve_keys)
        write_tier_file(self.tier_file, tier)

    def run(self, stop: StopRequest | None = None) -> dict[int, int]:
        """Serve control requests and supervise the shards until every one exited; returns their exit codes."""
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        while len(self.codes) < len(self.shards):
            self._notices = [notice for notice in self._notices if notice.is_alive()]
            if poller.poll(_POLL_MS):
                self._serve_control()
            for shard_id, shard in list(self.shards.items()):
                if shard_id not in self.codes and (code := shard.poll(stop, self._tell_of_death)) is not None:
                    if code != 0 and self._may_restart(shard_id, stop) and self._restart(shard_id):
                        continue
                    self.codes[shard_id] = code
                    if code != 0 and self._may_retire(shard_id, stop):
                        self._retire(shard_id)
        for notice in self._notices:  # cancelled: every shard stopped
            notice.join()
        return self.codes

    def _in_background(self, notice: Callable[[], object]) -> None:
        """Send a REJOIN or RETIRE and wait for its answers in a thread: the shards answer once they filled
        another, and a death meanwhile must still be seen and told at once (or they wait for ever)."""
        thread = threading.Thread(target=notice, daemon=True, name="tier notice")
        thread.start()
        self._notices.append(thread)

    def _live_endpoints(self) -> dict[int, str]:
        return {i: self.shards[i].endpoint for i in self.members if i not in self.codes}

    def _all_exited(self) -> bool:
        return len(self.codes) == len(self.shards)

    def _may_restart(self, shard_id: int, stop: StopRequest | None) -> bool:
        """A member that died with restarts left, and no stop requested: start it again."""
        stopping = stop is not None and stop.requested
        return shard_id in self.members and self.restarts_left[shard_id] > 0 and not stopping

    def _may_retire(self, shard_id: int, stop: StopRequest | None) -> bool:
        """A replicated member that died for good, with other members running and no stop requested."""
        others = [i for i in self.members if i != shard_id and i not in self.codes]
        return (shard_id in self.members and self.specs[shard_id].replication > 1 and bool(others)
                and not (stop is not None and stop.requested))

    def _retire(self, dead: int) -> None:
        """Have the other shards re-replicate ``dead``'s ranges (RETIRE). The tier file keeps it: the ring stays
        the same, and the shards tell each new client it is retired."""
        endpoints = self._live_endpoints()
        self._in_background(lambda: self.retired.setdefault(dead, tell_shards_of_retirement(
            endpoints, dead, curve_keys=self.curve_keys, cancelled=self._all_exited)))

    def _restart(self, dead: int) -> bool:
        """Start ``dead`` again, empty, and have the other shards fill it (REJOIN); republish the tier file;
        ``False`` if it did not start."""
        self.restarts_left[dead] -= 1
        spec = dataclasses.replace(self.specs[dead], restarted=True)
        try:
            self.shards[dead] = ShardProcess(spec, self.debug, label=self.tier_file)
        except ShardUnavailableError as e:
            log.error("shard %d could not be restarted: %s", dead, e)
            return False
        log.warning("shard %d restarted as pid %d at %s (%d restart(s) left); the other replicas fill it", dead,
                    self.shards[dead].pid, self.shards[dead].endpoint, self.restarts_left[dead])
        self._publish()  # new worker jobs find it at once (the shards tell them it is a backup being filled)
        endpoints = self._live_endpoints()
        self._in_background(lambda: tell_shards_of_rejoin(endpoints, dead, curve_keys=self.curve_keys,
                                                          cancelled=self._all_exited))
        return True

    def _tell_of_death(self, dead: int) -> None:
        endpoints = {i: self.shards[i].endpoint for i in self.members}
        tell_shards_of_death(endpoints, dead, curve_keys=self.curve_keys)

    def close(self) -> None:
        """Kill what still runs, remove the tier file."""
        Path(self.tier_file).unlink(missing_ok=True)
        for shard in self.shards.values():
            shard.__exit__()
        close_router(self._context, self.control, self.curve_keys)
        self._context.term()

    def _serve_control(self) -> None:
        try:
            request = json.loads(self.control.recv())
            reply = self._change(request)
        except (ValueError, KeyError, TypeError, HybridPSError) as e:
            reply = {"ok": False, "error": str(e)}
        self.control.send(json.dumps(reply).encode())

    def _change(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"op": "add"}``, ``{"op": "remove", "shard": ID}`` or ``{"op": "status"}``."""
        old = self.view
        if request["op"] == "status":
            return {"ok": True, "shards": old.shard_ids, "exited": {str(k): v for k, v in self.codes.items()}}
        if request["op"] == "add":
            shard_id = max(self.shards) + 1
            new_ids = [*old.shard_ids, shard_id]
            self._start_shard(shard_id, new_ids)
        elif request["op"] == "remove":
            shard_id = int(request["shard"])
            if shard_id not in old.endpoints or len(old.endpoints) == 1:
                raise ValueError(f"shard {shard_id} is not one of the running shards {old.shard_ids} "
                                 "(the last shard cannot leave)")
            new_ids = [i for i in old.shard_ids if i != shard_id]
            self.members.remove(shard_id)
        else:
            raise ValueError(f"unknown op {request['op']!r} (add, remove, status)")
        new = TierView({i: self.shards[i].endpoint for i in new_ids},
                       default_replication(self.config.cluster.replication, len(new_ids)))
        try:
            clock = self._announce(old, new)
        except HybridPSError:  # nothing changes
            self.members = old.shard_ids
            if request["op"] == "add":
                self.shards.pop(shard_id).__exit__()
            raise
        self._publish(new)
        log.info("tier: shards %s -> %s at clock %d", old.shard_ids, new.shard_ids, clock)
        return {"ok": True, "shard": shard_id, "shards": new.shard_ids, "reshard_at": clock}

    def _announce(self, old: TierView, new: TierView) -> int:
        """Ask the coordinating shard (the lowest running one) for the clock every group reshards at."""
        sock = connect_dealer(self._context, old.endpoints[old.shard_ids[0]], self.curve_keys, linger_ms=0)
        try:
            sock.send_multipart([wire.encode_header(wire.Header(wire.Op.VIEW, request_id=1)), new.to_bytes()])
            if not sock.poll(_COORDINATOR_TIMEOUT_MS):
                raise HybridPSError(f"shard {old.shard_ids[0]} did not answer the view change in "
                                    f"{_COORDINATOR_TIMEOUT_MS / 1000:g}s")
            frames = sock.recv_multipart()
        finally:
            sock.close()
        header = wire.decode_header(frames)
        if header.op is wire.Op.ERROR:
            raise HybridPSError(f"shard {old.shard_ids[0]} refused the view change: {wire.error_text(frames[1])}")
        return header.clock


def main(argv: list[str] | None = None) -> int:
    """Start the shards, publish the tier file, supervise until every shard exited; returns the exit code."""
    parser = build_parser("python -m hybrid_ps.serve", _DESCRIPTION)
    parser.add_argument("--tier-file", required=True, metavar="FILE", help="where to write the tier file")
    args = parser.parse_args(argv)
    return run_main(lambda: _serve(args), prog="hybrid_ps.serve", errors={ConfigError: 2, HybridPSError: 1},
                    debug=args.debug, logs=functools.partial(configure_logging, "tier"), traceback=None)


def _serve(args: argparse.Namespace) -> int:
    """Run the tier until every shard exited; returns 1 if one of them failed."""
    config = load_config(args)
    if config.cluster.servers < 1 or config.cluster.groups < 1:
        raise ConfigError(f"a PS tier needs cluster.servers >= 1 and cluster.groups >= 1 (group slots), got "
                          f"{config.cluster.servers} and {config.cluster.groups}")
    stop = StopRequest().install()
    tier = TierSupervisor(config, args.tier_file, args.debug)
    try:
        log.info("%d shards up for %d group slots; tier file %s", len(tier.shards), config.cluster.groups,
                 args.tier_file)
        codes = tier.run(stop)
    finally:
        tier.close()
    died = [f"shard {i}: {describe_exit(c)}" for i, c in sorted(codes.items()) if c != 0]
    log.info("tier stopped%s", f"; {', '.join(died)}" if died else "")
    return 1 if died else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m hybrid_ps.serve --tier-file FILE --servers S --groups G``: a PS tier of its own.

Starts S shard processes with G group slots and writes the tier file once
they are up; worker jobs join with ``mpiexec -n K python -m hybrid_ps.train
--ps-tier FILE --groups g --first-group i`` (one job per group or several), so a
crashed worker job ends only its own groups: the shards drop them after
``--group-timeout`` and the others train on; a restarted job rejoins. The
tier serves until every group that joined has left, then removes the file.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .config import build_parser, load_config
from .errors import ConfigError, HybridPSError
from .logs import configure_logging
from .models.logistic import LogisticRegression
from .preemption import StopRequest
from .server.process import ShardProcess, ShardSpec, describe_exit, supervise
from .tier import TierInfo, write_tier_file

log = logging.getLogger("hybrid_ps.serve")

_DESCRIPTION = """Run a PS tier of its own for worker jobs started with --ps-tier FILE.
Takes the same settings as hybrid_ps.train: [cluster] (servers, groups = group slots, staleness,
replication, group_timeout, bind_host), [optimizer] and the checkpoint ones of [train]."""


def main(argv: list[str] | None = None) -> int:
    """Start the shards, publish the tier file, supervise until every shard exited; returns the exit code."""
    parser = build_parser("python -m hybrid_ps.serve", _DESCRIPTION)
    parser.add_argument("--tier-file", required=True, metavar="FILE", help="where to write the tier file")
    args = parser.parse_args(argv)
    configure_logging("tier", args.debug)
    try:
        config = load_config(args)
        if config.cluster.servers < 1 or config.cluster.groups < 1:
            raise ConfigError(f"a PS tier needs cluster.servers >= 1 and cluster.groups >= 1 (group slots), got "
                              f"{config.cluster.servers} and {config.cluster.groups}")
        shard_ids = list(range(config.cluster.servers))
        width = LogisticRegression().width
        stop = StopRequest().install()
        shards = []
        try:
            for shard_id in shard_ids:
                spec = ShardSpec(config, shard_id, shard_ids, config.cluster.groups, width,
                                 coordinator=shard_id == 0, groups_present=False)
                shards.append(ShardProcess(spec, args.debug, label=args.tier_file))
            tier = TierInfo([s.endpoint for s in shards], config.cluster.groups, config.to_json_dict(),
                            os.path.abspath(config.checkpoint_root))
            write_tier_file(args.tier_file, tier)
            log.info("%d shards up for %d group slots; tier file %s", len(shards), tier.num_groups, args.tier_file)
            codes = supervise(shards, stop)
        finally:
            Path(args.tier_file).unlink(missing_ok=True)
            for shard in shards:
                shard.__exit__()
    except HybridPSError as e:
        print(f"hybrid_ps.serve: error: {e}", file=sys.stderr, flush=True)
        return 2 if isinstance(e, ConfigError) else 1
    died = [f"shard {s.shard_id}: {describe_exit(c)}" for s, c in zip(shards, codes) if c != 0]
    log.info("tier stopped%s", f"; {', '.join(died)}" if died else "")
    return 1 if died else 0


if __name__ == "__main__":
    sys.exit(main())

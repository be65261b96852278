"""A PS tier of its own: the tier file that ``hybrid_ps.serve`` writes and worker jobs read to join it.

The file (JSON, written atomically, readable by its owner only) holds the
shards' endpoints, the number of group slots and the tier's settings. Worker
jobs started with ``--ps-tier FILE`` adopt the settings that must agree
between shards and leaders (staleness, replication, ring, checkpoints).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import ConfigError

__all__ = ["TierInfo", "write_tier_file", "read_tier_file", "adopt_tier_settings"]

_SHARED_SETTINGS = ("cluster.staleness", "cluster.replication", "cluster.vnodes", "cluster.max_keys_per_message",
                    "train.checkpoint")


@dataclass
class TierInfo:
    """What a worker job needs to join a tier."""

    endpoints: list[str]
    num_groups: int
    config: dict[str, dict[str, Any]]  # the tier's settings (Config.to_json_dict)
    checkpoint_root: str  # absolute: where the shards write, and leaders publish


def write_tier_file(path: str | Path, tier: TierInfo) -> None:
    """Write ``tier`` to ``path`` atomically (temporary file, fsync, rename), mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"kind": "hybrid_ps tier", **tier.__dict__}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_tier_file(path: str | Path) -> TierInfo:
    """Read a tier file.

    Raises:
        ConfigError: unreadable, not JSON, or missing a field (the message names the file).
    """
    try:
        data = json.loads(Path(path).read_text())
        if data.get("kind") != "hybrid_ps tier":
            raise ValueError(f"kind is {data.get('kind')!r}, not 'hybrid_ps tier'")
        tier = TierInfo([str(e) for e in data["endpoints"]], int(data["num_groups"]), dict(data["config"]),
                        str(data["checkpoint_root"]))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the tier file: {e.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path}: not a hybrid_ps tier file: {e}") from None
    if not tier.endpoints or tier.num_groups < 1:
        raise ConfigError(f"{path}: a tier file needs endpoints and group slots")
    return tier


def adopt_tier_settings(config: Config, tier: TierInfo) -> None:
    """Make a worker job's settings agree with the tier's where shards and leaders must agree."""
    tier_config = Config.from_dict(tier.config)
    for name in _SHARED_SETTINGS:
        section, key = name.split(".")
        setattr(getattr(config, section), key, getattr(getattr(tier_config, section), key))
    config.cluster.servers = len(tier.endpoints)
    config.train.checkpoint_dir = tier.checkpoint_root

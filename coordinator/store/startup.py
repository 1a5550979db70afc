"""The start-up check's wire format: check.lua's reply (which grants the Redis user lacks) and the
server's eviction policy (README.md, "Misconfiguration is not an outage"; docs/security.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Permissions:
    """check.lua's reply: what the Redis user may not do that the workers need, and how (if at all)
    it may read the server's eviction policy."""

    problem: str | None
    config: bool = False
    info: bool = False


def decode_check(raw: Any) -> Permissions:
    try:
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        missing = [name for name in str(data.get("missing") or "").split(",") if name]
    except (TypeError, ValueError, AttributeError):
        return Permissions(f"unexpected reply of the permission check: {raw!r}")
    return Permissions(_missing(missing), bool(data.get("config")), bool(data.get("info")))


def _missing(missing: list[str]) -> str | None:
    if not missing:
        return None
    grants = " ".join(f"+{name.lower()}" for name in missing)
    return (f"the Redis user may not run {', '.join(missing)} on the pools' keys and channel, which the "
            f"workers' scripts need: grant {grants} (see docs/security.md)")


def risky_policy(policy: str) -> str | None:
    """A warning when Redis' maxmemory-policy may evict the pools' state (it has no TTL, so only the
    ``allkeys-*`` policies touch it), else None."""
    if policy.startswith("allkeys-"):
        return (f"maxmemory-policy is {policy}: when memory runs out Redis may evict a pool's state, and the "
                "fleet then rebuilds it from what workers remember; use noeviction (see docs/security.md)")
    return None

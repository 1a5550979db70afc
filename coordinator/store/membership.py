"""Rolling deploys (docs/design.md, "Rolling deploys"): a worker whose configuration of a pool did not win
(``lua/lib/membership.lua`` says whose does) is served within the fleet's stored membership, and can use
only the members it holds the secret of. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coordinator.core.errors import PoolExhaustedError


def within_fleet(pool: str, members: Mapping[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """An acquire reply marked ``foreign`` as one of this worker's own: the member the script names as
    ``usable`` in place of one this worker has no secret for; the active member and the rotation only
    as far as they are this worker's."""
    out = dict(data)
    if (data.get("active") or "") not in members:
        out["active"] = ""
    rotation = [item for item in str(data.get("rotation") or "").split(",") if item.partition(":")[0] in members]
    out["rotation"] = ",".join(rotation)
    if (data.get("member") or "") not in members:
        usable, ready = str(data.get("usable") or ""), float(data.get("usable_ready") or 0)
        if not usable:
            raise PoolExhaustedError(pool, None, f"pool {pool!r}: the fleet's membership (another configuration's, "
                                     "see docs/design.md \"Rolling deploys\") has no member of this worker's")
        out.update(member=usable, lease="", probing=False, degraded=ready != 0, retry_at=ready if ready > 0 else -1)
        if ready != 0:
            out["valid_until"] = 0
    return out

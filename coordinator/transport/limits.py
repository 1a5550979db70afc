"""The pool's time limits as httpx/httpx2 per-request timeouts (docs/design.md, "Timeouts and streams").

httpcore reads ``request.extensions["timeout"]`` when it sends the request (``connect``, ``write``,
``pool``, and ``read`` for the response headers) and again when the body is first read (``read`` for
every later read). The transport sets the header-phase limits before each attempt and the body-phase
limits once the headers are in, before anything reads the body. The SDK's own timeout stays in
force: each limit is the smaller of the two, and of what is left of the call's deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from coordinator.core.config import Timeouts

_KEYS = ("connect", "read", "write", "pool")


def _smallest(*values: Any) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and v is not None]
    finite = [max(0.0, v) for v in numbers if math.isfinite(v)]
    return min(finite) if finite else None


def header_phase(sdk: Mapping[str, Any] | None, limits: Timeouts, streaming: bool,
                 remaining: float | None) -> dict[str, float | None]:
    """Timeouts for sending a request and waiting for its headers."""
    sdk = sdk or {}
    out = {key: _smallest(sdk.get(key), remaining) for key in _KEYS}
    out["connect"] = _smallest(out["connect"], limits.connect)
    out["read"] = _smallest(out["read"], limits.header_limit(streaming))
    return out


def body_phase(sdk: Mapping[str, Any] | None, limits: Timeouts, event_stream: bool,
               remaining: float | None, *, timers: bool) -> dict[str, float | None]:
    """Timeouts for reading the body. For an event stream the read limit is ``idle``. Without timers
    of its own (``timers``: the async guard has them) a sync client cannot stop one read early, so a
    ``first_token`` shorter than ``idle`` bounds every read of its streams."""
    sdk = sdk or {}
    out = {key: _smallest(sdk.get(key), remaining) for key in _KEYS}
    if event_stream:
        out["read"] = _smallest(out["read"], limits.idle, None if timers else limits.first_token)
    else:
        out["read"] = _smallest(out["read"], limits.header_limit(False))
    return out


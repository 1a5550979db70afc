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
#: Phase limits computed for calls without a deadline, by what they depend on: the SDK's four values,
#: the pool's ``Timeouts`` (kept with its id, so the id cannot be reused), and the phase's flags.
_cache: dict[tuple[Any, ...], tuple[Timeouts, dict[str, float | None]]] = {}
_CACHE_SIZE = 256


def _smallest(*values: Any) -> float | None:
    """The smallest finite number among ``values`` (negative ones count as 0); None when there is none."""
    best: float | None = None
    for value in values:
        if value is None or value.__class__ is bool or not isinstance(value, int | float):
            continue
        number = float(value)
        if not math.isfinite(number):
            continue
        if number < 0.0:
            number = 0.0
        if best is None or number < best:
            best = number
    return best


def _cached(phase: str, sdk: Mapping[str, Any] | None, limits: Timeouts, flag: bool,
            remaining: float | None) -> tuple[tuple[Any, ...] | None, dict[str, float | None] | None]:
    """The cache key for a call without a deadline (None otherwise) and the limits found under it."""
    if remaining is not None:
        return None, None
    if sdk:
        key: tuple[Any, ...] = (phase, sdk.get("connect"), sdk.get("read"), sdk.get("write"), sdk.get("pool"),
                                id(limits), flag)
    else:
        key = (phase, None, None, None, None, id(limits), flag)
    try:
        found = _cache.get(key)
    except TypeError:  # an SDK value that is no number: computed every time
        return None, None
    if found is not None and found[0] is limits:
        return key, dict(found[1])
    return key, None


def _keep(key: tuple[Any, ...] | None, limits: Timeouts, out: dict[str, float | None]) -> dict[str, float | None]:
    if key is not None:
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[key] = (limits, dict(out))
    return out


def header_phase(sdk: Mapping[str, Any] | None, limits: Timeouts, streaming: bool,
                 remaining: float | None) -> dict[str, float | None]:
    """Timeouts for sending a request and waiting for its headers."""
    key, found = _cached("header", sdk, limits, streaming, remaining)
    if found is not None:
        return found
    sdk = sdk or {}
    out = {key: _smallest(sdk.get(key), remaining) for key in _KEYS}
    out["connect"] = _smallest(out["connect"], limits.connect)
    out["read"] = _smallest(out["read"], limits.header_limit(streaming))
    return _keep(key, limits, out)


def body_phase(sdk: Mapping[str, Any] | None, limits: Timeouts, event_stream: bool,
               remaining: float | None, *, timers: bool) -> dict[str, float | None]:
    """Timeouts for reading the body. For an event stream the read limit is ``idle``. Without timers
    of its own (``timers``: the async guard has them) a sync client cannot stop one read early, so a
    ``first_token`` shorter than ``idle`` bounds every read of its streams."""
    key, found = _cached("body" if timers else "body, no timers", sdk, limits, event_stream, remaining)
    if found is not None:
        return found
    sdk = sdk or {}
    out = {key: _smallest(sdk.get(key), remaining) for key in _KEYS}
    if event_stream:
        out["read"] = _smallest(out["read"], limits.idle, None if timers else limits.first_token)
    else:
        out["read"] = _smallest(out["read"], limits.header_limit(False))
    return _keep(key, limits, out)


#: ``phases`` by the SDK's four values, the pool's ``Timeouts`` (kept, so its id cannot be reused) and
#: whether the request asks for a stream.
_both: dict[tuple[Any, ...], tuple[Timeouts, dict[str, float | None], dict[str, float | None]]] = {}


def phases(sdk: Mapping[str, Any] | None, limits: Timeouts,
           streaming: bool) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """``header_phase`` and, for a body that is no event stream, ``body_phase`` of a call without a
    deadline, in one look-up: the transport's happy path needs both and nothing else (fresh dicts)."""
    if sdk:
        key: tuple[Any, ...] = (sdk.get("connect"), sdk.get("read"), sdk.get("write"), sdk.get("pool"), id(limits),
                                streaming)
    else:
        key = (None, None, None, None, id(limits), streaming)
    try:
        found = _both.get(key)
    except TypeError:  # an SDK value that is no number
        return header_phase(sdk, limits, streaming, None), body_phase(sdk, limits, False, None, timers=True)
    if found is None or found[0] is not limits:
        found = (limits, header_phase(sdk, limits, streaming, None), body_phase(sdk, limits, False, None, timers=True))
        if len(_both) >= _CACHE_SIZE:
            _both.clear()
        _both[key] = found
    return dict(found[1]), dict(found[2])

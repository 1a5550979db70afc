"""Provider hints: how long a member should rest, read from response headers. Pure functions, no I/O.

Every value comes from a server we do not control, so nothing here raises on bad input: a value
that cannot be read is ignored, one that is too large is clamped to ``MAX_HINT``. Absolute times
(HTTP dates, RFC 3339, unix timestamps) become durations measured against the response's own
``Date`` header when it has one, so a worker whose clock is off still waits the right length.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

#: No hint is trusted beyond this: a typo or a hostile header must not park a member for years.
MAX_HINT = 30 * 86400.0

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_NUMBER = re.compile(r"[+]?(\d+(?:\.\d*)?|\.\d+)")
# Plain numbers this large are unix timestamps, not durations (1e9 s is 2001-09-09).
_EPOCH_SECONDS = 1e9
_EPOCH_MILLISECONDS = 1e12

# OpenAI (and Groq, Azure, most OpenAI-compatible servers): x-ratelimit-reset-requests: 6m0s.
_OPENAI_RESET = re.compile(r"x-ratelimit-reset-(.+)")
# Anthropic: anthropic-ratelimit-tokens-reset: 2024-05-01T12:00:30Z (also input-/output-tokens, unified...).
_ANTHROPIC_RESET = re.compile(r"anthropic-ratelimit-(.+)-reset")
# The IETF draft and GitHub style: one window, no name (RateLimit-Reset: 30, X-RateLimit-Reset: 1714564830).
_PLAIN_RESET = re.compile(r"(x-ratelimit|ratelimit)-reset")
_WINDOWS = (
    (_OPENAI_RESET, "x-ratelimit-remaining-{}"),
    (_ANTHROPIC_RESET, "anthropic-ratelimit-{}-remaining"),
    (_PLAIN_RESET, "{}-remaining"),
)


def normalize_headers(headers: Any) -> dict[str, str]:
    """Lower-cased header names to values, from any mapping or list of pairs; junk entries are dropped."""
    if headers is None:
        return {}
    items: Iterable[Any]
    if isinstance(headers, Mapping) or hasattr(headers, "items"):
        try:
            items = list(headers.items())
        except Exception:
            return {}
    elif isinstance(headers, Iterable) and not isinstance(headers, str | bytes):
        items = headers
    else:
        return {}
    out: dict[str, str] = {}
    for item in items:
        try:
            key, value = item
        except (TypeError, ValueError):
            continue
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(key, str) and isinstance(value, str | int | float):
            out[key.strip().lower()] = str(value).strip()
    return out


def _clamp(seconds: float) -> float | None:
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_HINT)


def _plain_number(value: str | None) -> float | None:
    if not value:
        return None
    match = _NUMBER.fullmatch(value.strip())
    return float(match.group(1)) if match else None


def parse_seconds(value: str | None) -> float | None:
    """A plain non-negative number of seconds (``"2"``, ``"1.5"``); None for anything else."""
    number = _plain_number(value)
    return None if number is None else _clamp(number)


def parse_go_duration(value: str | None) -> float | None:
    """Seconds from a Go-style duration as OpenAI sends it: ``1s``, ``6m0s``, ``12ms``, ``1h2m3.5s``.

    A bare number counts as seconds. Negative, empty or malformed values give None.
    """
    if not value:
        return None
    text = value.strip().lower()
    plain = parse_seconds(text)
    if plain is not None:
        return plain
    pos, total = 0, 0.0
    for match in _GO_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        return None
    return _clamp(total)


def parse_timestamp(value: str | None) -> float | None:
    """Unix seconds from RFC 3339 / ISO 8601, an HTTP date, or a unix timestamp in s or ms."""
    if not value:
        return None
    text = value.strip()
    match = _NUMBER.fullmatch(text)
    if match:
        number = float(match.group(1))
        if number >= _EPOCH_MILLISECONDS:
            return number / 1000.0
        if number >= _EPOCH_SECONDS:
            return number
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if parsed.tzinfo is None:
        # RFC 3339 requires an offset; a server that leaves it out almost always means UTC.
        parsed = parsed.replace(tzinfo=UTC)
    try:
        stamp = parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return stamp if math.isfinite(stamp) else None


def server_time(headers: Mapping[str, str], now: float | None = None) -> float:
    """The server's clock when it answered (its ``Date`` header), else ``now``, else this host's clock."""
    stamp = parse_timestamp(headers.get("date"))
    if stamp is not None:
        return stamp
    return time.time() if now is None else now


def _until(stamp: float | None, reference: float) -> float | None:
    if stamp is None:
        return None
    # A reset already in the past means "now", not "ignore": the server did say when.
    return _clamp(max(0.0, stamp - reference))


def parse_reset(value: str | None, reference: float) -> float | None:
    """Seconds until a rate-limit window resets, whatever form the server chose.

    Durations (``6m0s``, ``20``) are relative; timestamps (RFC 3339, HTTP date, unix s/ms) are measured
    from ``reference``, the server's own time.
    """
    if not value:
        return None
    text = value.strip()
    match = _NUMBER.fullmatch(text)
    if match and float(match.group(1)) >= _EPOCH_SECONDS:
        return _until(parse_timestamp(text), reference)
    duration = parse_go_duration(text)
    if duration is not None:
        return duration
    return _until(parse_timestamp(text), reference)


def parse_retry_after(value: str | None, reference: float) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP date (RFC 9110 10.2.3)."""
    seconds = parse_seconds(value)
    if seconds is not None:
        return seconds
    if not value or _NUMBER.fullmatch(value.strip().lstrip("-")):
        return None  # a negative number is garbage, not a date
    return _until(parse_timestamp(value), reference)


def explicit_retry_after(headers: Any, now: float | None = None) -> float | None:
    """The server's explicit instruction: ``retry-after-ms`` (preferred, finer), else ``retry-after``."""
    h = normalize_headers(headers)
    # Clamped once it is seconds: clamping the milliseconds would cut 40 days to 43 minutes.
    millis = _plain_number(h.get("retry-after-ms"))
    if millis is not None:
        return _clamp(millis / 1000.0)
    return parse_retry_after(h.get("retry-after"), server_time(h, now))


def rate_limit_buckets(headers: Any, now: float | None = None) -> list[tuple[str, float | None, float]]:
    """Every rate-limit window the headers describe: ``(name, remaining or None, seconds until reset)``."""
    h = normalize_headers(headers)
    reference = server_time(h, now)
    buckets: list[tuple[str, float | None, float]] = []
    for key, value in h.items():
        for pattern, remaining_key in _WINDOWS:
            match = pattern.fullmatch(key)
            if not match:
                continue
            reset = parse_reset(value, reference)
            if reset is not None:
                name = match.group(1)
                buckets.append((name, parse_seconds(h.get(remaining_key.format(name))), reset))
    return buckets


def rate_limit_hint(headers: Any, now: float | None = None) -> float | None:
    """How long to rest after a 429: the explicit retry-after, else the reset of the exhausted window.

    When several windows report ``remaining: 0`` the member is blocked until the last of them resets.
    When none says which window ran out, the soonest reset is taken: a too-short guess costs one more
    429 and the store's escalation, a too-long one (a daily window) idles a healthy key for hours.
    """
    explicit = explicit_retry_after(headers, now)
    if explicit is not None:
        return explicit
    buckets = rate_limit_buckets(headers, now)
    spent = [reset for _, remaining, reset in buckets if remaining is not None and remaining <= 0]
    if spent:
        return max(spent)
    resets = [reset for _, _, reset in buckets]
    return min(resets) if resets else None


def _says_spent(headers: Any) -> bool:
    """Cheap pre-check on every success: does any "...remaining..." header hold zero?"""
    try:
        # httpx's raw pairs are bytes as received: no decoding of the headers that do not matter.
        raw = getattr(headers, "raw", None)
        items = raw if isinstance(raw, list) else headers.items() if hasattr(headers, "items") else headers
        for key, value in items:
            if isinstance(key, bytes):
                if b"remaining" not in key.lower():
                    continue
            elif "remaining" not in str(key).lower():
                continue
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            # Only signs, zeros and dots can read as 0: anything else is not worth parsing.
            if not text.strip().strip("+0.") and parse_seconds(text) == 0:
                return True
    except Exception:
        return True  # odd shapes get the full reading, which is careful about them
    return False


def preemptive_cooldown(headers: Any, now: float | None = None) -> float | None:
    """After a SUCCESSFUL response: seconds until the member can take another request, when a window
    says ``remaining: 0``; None when every window has room (or nothing can be read)."""
    if headers is None or not _says_spent(headers):
        return None
    buckets = rate_limit_buckets(headers, now)
    spent = [reset for _, remaining, reset in buckets if remaining is not None and remaining <= 0]
    if not spent:
        return None
    longest = max(spent)
    return longest if longest > 0 else None

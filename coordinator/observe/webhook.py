"""What ``coordinator alerts`` sends and how: the payloads, the POST with its retries, and the webhook
URL kept out of every line it prints.

A webhook URL is a credential as a whole: Slack's carries its token in the path, others put one in the
query string or in ``user:password@``. So output only ever shows ``scheme://host[:port]``, with ``/***``
when there was more, and every error text is scrubbed of the URL's parts before it is shown.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx

from coordinator import ConfigError, FailoverEvent

Format = Literal["json", "slack"]
FORMATS: tuple[Format, ...] = ("json", "slack")
USER_AGENT = "coordinator-alerts/1"


# -- the URL -----------------------------------------------------------------------------------------


def check_webhook_url(url: str) -> str:
    """The URL when it is one an alert can be POSTed to; ``ConfigError`` (printed, exit 2) otherwise."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"--webhook {redact_url(url)!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--webhook must be an http:// or https:// URL with a host, not {redact_url(url)!r}")
    return url


def redact_url(url: str) -> str:
    """``scheme://host[:port]``, plus ``/***`` when the URL had a path, query or credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "***"
    if not parts.scheme or not host:
        return "***"
    shown = f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{f':{port}' if port else ''}"
    hidden = (parts.path not in ("", "/")) or parts.query or parts.fragment or parts.username or parts.password
    return shown + ("/***" if hidden else "")


def url_secrets(url: str) -> list[str]:
    """Every part of the URL that may be a credential, longest first (so the whole goes before its parts)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = {url, url.split("#", 1)[0]}
    for piece in (parts.username, parts.password, parts.query, parts.fragment):
        if piece:
            found |= {piece, unquote(piece)}
    if parts.path not in ("", "/"):
        found |= {parts.path, unquote(parts.path)}
        found |= {segment for segment in parts.path.split("/") if len(segment) >= 6}
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def scrubber(url: str) -> Callable[[str], str]:
    secrets = url_secrets(url)

    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return scrub


# -- the payloads ------------------------------------------------------------------------------------


def iso(stamp: float | None) -> str | None:
    if stamp is None or not math.isfinite(stamp):
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def finite(stamp: float | None) -> float | None:
    return stamp if stamp is not None and math.isfinite(stamp) else None


def event_json(event: FailoverEvent) -> dict[str, Any]:
    """The event as ``coordinator events --json`` prints it (README: CLI JSON output)."""
    until = finite(event.until)
    return {
        "id": event.id,
        "pool": event.pool,
        "type": event.type,
        "time": event.time,
        "time_iso": iso(event.time),
        "epoch": event.epoch,
        "generation": event.generation,
        "from": event.from_member,
        "to": event.to_member,
        "member": event.member,
        "kind": event.kind,
        "reason": event.reason or None,
        "until": until,
        "until_iso": iso(until),
        "forever": event.until is not None and math.isinf(event.until),
        "retry_at": finite(event.retry_at),
        "retry_at_iso": iso(finite(event.retry_at)),
    }


def slack_text(event: FailoverEvent) -> str:
    """One readable line: pool, from -> to, kind, until, reason. Times in UTC: the reader's zone is unknown."""
    words = [f"*{event.pool}*: {event.type}"]
    if event.from_member and event.to_member:
        words.append(f"{event.from_member} -> {event.to_member}")
    elif event.to_member:
        words.append(f"active {event.to_member}")
    if event.member and event.member not in (event.from_member, event.to_member):
        words.append(f"member {event.member}")
    if event.kind:
        words.append(f"({event.kind})")
    if event.until is not None:
        words.append("until unparked" if math.isinf(event.until) else f"until {_utc(event.until)}")
    if event.retry_at is not None and math.isfinite(event.retry_at):
        words.append(f"recovers {_utc(event.retry_at)}")
    if event.reason:
        words.append(f"reason: {event.reason}")
    return " ".join(words) + f"  (generation {event.generation}, {_utc(event.time)})"


def _utc(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def idempotency_key(prefix: str, event: FailoverEvent) -> str:
    """Stable for one stream entry, across replicas and redeliveries. Entry ids are unique per stream
    only, so the key names the pool (and the key prefix, for tenants sharing one webhook)."""
    return f"{prefix}:{event.pool}:{event.id}"


def body(event: FailoverEvent, fmt: Format, key: str) -> bytes:
    if fmt == "slack":
        document: dict[str, Any] = {"text": slack_text(event)}
    else:
        document = {**event_json(event), "idempotency_key": key}
    return json.dumps(document, allow_nan=False, ensure_ascii=False).encode()


def decode_event(pool: str, entry_id: str, fields: Mapping[str, str]) -> FailoverEvent | None:
    """A stream entry as an event; None for an entry the coordinator's scripts did not write."""
    try:
        generation = int(fields["generation"])
        kind, epoch = fields["type"], fields["epoch"]
        millis = int(entry_id.split("-", 1)[0])
    except (KeyError, ValueError):
        return None

    def deadline(name: str) -> float | None:
        raw = fields.get(name)
        if not raw or raw == "0":
            return None
        if raw == "forever" or raw == "-1":
            return math.inf
        try:
            return float(raw) / 1000.0
        except ValueError:
            return None

    return FailoverEvent(
        id=entry_id, pool=pool, type=kind, time=millis / 1000.0, epoch=epoch, generation=generation,
        from_member=fields.get("from"), to_member=fields.get("to"), member=fields.get("member"),
        kind=fields.get("kind"), reason=fields.get("reason"), until=deadline("until"), retry_at=deadline("retry_at"),
    )


# -- the POST ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    #: "delivered" after a 2xx; "stopped" when the consumer is stopping; "lost" when another replica
    #: took the entry over meanwhile (it delivers it, with the same key).
    result: Literal["delivered", "stopped", "lost"]
    tries: int
    status: int | None = None
    seconds: float = 0.0


def full_jitter(tries: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """AWS-style full jitter: uniform in [0, min(cap, base * 2^(tries-1))]."""
    return rng() * min(cap, base * 2.0 ** min(tries - 1, 30))


class Webhook:
    """POSTs one alert until the webhook answers 2xx: any other answer and every connection error or
    timeout is retried with full-jitter backoff, without limit (an alert is never dropped)."""

    def __init__(
        self,
        url: str,
        fmt: Format,
        *,
        timeout: float,
        retry_base: float,
        retry_max: float,
        on_retry: Callable[[FailoverEvent, int, str, float], None],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = check_webhook_url(url)
        self.shown = redact_url(url)
        self.fmt = fmt
        self.retry_base = retry_base
        self.retry_max = retry_max
        #: Removes the URL's parts from a text before it is printed.
        self.scrub = scrubber(url)
        self._on_retry = on_retry
        # No redirects: a 3xx is an answer to fix, and following it could carry the alert elsewhere.
        self._client = httpx.Client(timeout=timeout, follow_redirects=False, transport=transport,
                                    headers={"user-agent": USER_AGENT})

    def deliver(self, event: FailoverEvent, key: str, stop: threading.Event, lost: Callable[[], bool]) -> Delivery:
        content = body(event, self.fmt, key)
        headers = {"content-type": "application/json", "idempotency-key": key}
        started = time.monotonic()
        tries = 0
        while True:
            if stop.is_set():
                return Delivery("stopped", tries)
            if lost():
                return Delivery("lost", tries)
            tries += 1
            try:
                response = self._client.post(self.url, content=content, headers=headers)
                response.close()
            except httpx.HTTPError as exc:
                problem = self.scrub(f"{type(exc).__name__}: {exc}".rstrip(": ")[:300])
            else:
                if 200 <= response.status_code < 300:
                    return Delivery("delivered", tries, response.status_code, time.monotonic() - started)
                problem = f"HTTP {response.status_code}"
            wait = full_jitter(tries, self.retry_base, self.retry_max)
            self._on_retry(event, tries, problem, wait)
            stop.wait(wait)

    def close(self) -> None:
        self._client.close()

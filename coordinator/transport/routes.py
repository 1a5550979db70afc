"""What a member adds to a request, and what the transport reads of requests and responses: shared by
its generic path (``failover.py``) and its happy path (``happy.py``)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from coordinator.core.config import Member, PoolConfig

#: Per-request choice of pools, as a header an SDK can send with ``extra_headers``; never forwarded.
POOLS_HEADER = "x-coordinator-pools"
#: Headers that carry the caller's placeholder credential; replaced by the member's own.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")


def http_library(request: Any) -> ModuleType:
    """``httpx`` or ``httpx2``: whichever library made this request."""
    return sys.modules[type(request).__module__.partition(".")[0]]


@dataclass(frozen=True)
class Route:
    """What a member adds to every request it sends that does not change between requests: made once
    per member by the transport (configs are frozen), so an attempt only reads the secret."""

    member: Member
    pool: PoolConfig
    #: The header that carries the secret (lower case), and whether its value is ``Bearer <secret>``.
    auth: str
    bearer: bool
    #: The member's own headers, names in lower case.
    headers: tuple[tuple[str, str], ...]
    #: Nothing but the credential to set: no headers, base URL or model of its own.
    plain: bool


def route(member: Member, pool: PoolConfig) -> Route:
    auth = pool.auth_header.lower()
    headers = tuple((name.lower(), value) for name, value in member.headers.items())
    return Route(member, pool, auth, auth == "authorization", headers,
                 not headers and not member.base_url and not member.model)


def content_type(response: Any) -> bytes:
    """The (first) content-type header as sent, read from the raw pairs: no decoding of the others."""
    for key, value in response.headers.raw:
        if key.lower() == b"content-type":
            return bytes(value)
    return b""


#: Content types whose reads get the body-phase ``idle`` limit (docs/design.md, "Timeouts and streams"):
#: the event streams the guard reads, and AWS Bedrock's binary event stream, which it does not.
EVENT_STREAM = b"text/event-stream"
TIMED_TYPES = (EVENT_STREAM, b"application/vnd.amazon.eventstream")


def asks_for_stream(body: bytes | None) -> bool:
    """The JSON body says ``"stream": true`` (OpenAI and Anthropic alike)."""
    if not body or b'"stream"' not in body:
        return False
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("stream") is True

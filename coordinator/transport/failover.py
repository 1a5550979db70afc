"""An httpx transport that fails over across a pool (or chain) for any httpx-based SDK.

``coord.transport("openai")`` wraps an inner transport (httpx's own by default). Per attempt it asks
the coordinator for a member, sets that member's credential (and optional base URL, model and
headers) on a copy of the request, and lets the executor judge the response: status and headers
always, the body for error statuses only. A successful stream is handed back untouched, never
replayed. The decisions live in the executor; this module only prepares requests and finishes
responses, for the sync and the async driver alike.

It works with ``httpx`` and with ``httpx2`` (the fork the newest openai and anthropic SDKs are built
on): requests, headers and responses are made by the library the caller's request came from.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import httpx

from coordinator.core.config import Member, PoolConfig
from coordinator.core.errors import AllMembersFailedError
from coordinator.core.kinds import Failure


class Caller(Protocol):
    """What the transport needs of a coordinator: its pools' configs and ``call`` (awaitable when
    ``is_async``). ``Coordinator`` and ``AsyncCoordinator`` are both one."""

    is_async: bool

    def pool_config(self, name: str) -> PoolConfig: ...

    def call(self, pools: Sequence[str], fn: Any, **options: Any) -> Any: ...

#: Per-request choice of pools, as a header an SDK can send with ``extra_headers``; never forwarded.
POOLS_HEADER = "x-coordinator-pools"
#: Headers that carry the caller's placeholder credential; replaced by the member's own.
_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")
_DROPPED_RAW = frozenset(name.encode("latin-1") for name in (*_CREDENTIAL_HEADERS, POOLS_HEADER))


class NotReplayableError(Exception):
    """The request body was a one-shot stream: it was sent once and cannot be sent again."""


def http_library(request: Any) -> ModuleType:
    """``httpx`` or ``httpx2``: whichever library made this request."""
    return sys.modules[type(request).__module__.partition(".")[0]]


@dataclass
class _Call:
    """One request's journey through the pools: what to send and what happened."""

    request: httpx.Request
    lib: ModuleType
    body: bytes | None
    pools: list[str]
    owners: dict[int, PoolConfig]
    attempts: int = 0
    last_error_response: httpx.Response | None = None
    last_error: Exception | None = None
    tried: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.url = self.request.url
        self.stream = self.request.stream
        self.headers = self.request.headers
        # The caller's headers without the ones a member replaces, in one pass for all attempts.
        self.base = [(key, value) for key, value in self.headers.raw if key.lower() not in _DROPPED_RAW]

    def prepare(self, member: Member) -> httpx.Request:
        """The caller's request as ``member`` sends it. The request gets a headers object of its own,
        built in one pass over the caller's (cheaper than editing them field by field), and ``restore``
        puts the caller's back, so the caller never sees a member's secret in it."""
        if self.body is None and self.attempts > 0:
            raise NotReplayableError("the request body is a stream that was already sent once")
        if self.attempts:
            self.restore()
        pool = self.owners[id(member)]
        self.attempts += 1
        self.tried.append({"pool": pool.name, "member": member.id})
        request = self.request
        extra: dict[str, str] = {}
        secret = member.secret()
        if secret:
            header = pool.auth_header.lower()
            extra[header] = f"Bearer {secret}" if header == "authorization" else secret
        for name, value in member.headers.items():
            extra[name.lower()] = value
        if member.base_url:
            base = self.lib.URL(member.base_url)
            request.url = self.url.copy_with(scheme=base.scheme, host=base.host, port=base.port,
                                             path=base.path.rstrip("/") + self.url.path)
            extra["host"] = base.netloc.decode("ascii")
        if self.body is not None and member.model:
            content = _with_model(self.body, member.model, self.headers)
            if content is not self.body:
                request.stream = self.lib.ByteStream(content)
                extra["content-length"] = str(len(content))
        replaced = {name.encode("latin-1") for name in extra}
        raw = [(key, value) for key, value in self.base if key.lower() not in replaced]
        raw.extend((name.encode("latin-1"), value.encode("utf-8")) for name, value in extra.items())
        request.headers = self.lib.Headers(raw)
        return request

    def restore(self) -> None:
        """Undoes what ``prepare`` changed in the caller's request."""
        request = self.request
        request.headers = self.headers
        request.url = self.url
        request.stream = self.stream

    def classify(self, error: object) -> Failure | None:
        """Seen first by the executor for every failure; leaves the judgement to the built-in rules."""
        if isinstance(error, NotReplayableError):
            # "request" touches no state and makes the executor hand the error back at once.
            return Failure(kind="request", message="body not replayable")
        if isinstance(error, Exception):
            self.last_error = error
        return None

    def note(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            self.last_error_response = response
        return response

    def finish(self, response: httpx.Response) -> httpx.Response:
        """Records where the request went on the response the caller gets."""
        last = self.tried[-1] if self.tried else {}
        response.extensions = {
            **response.extensions,
            "coordinator": {"pool": last.get("pool"), "member": last.get("member"), "attempts": self.attempts,
                            "tried": list(self.tried), "replayable": self.body is not None},
        }
        return response

    def fallback(self, error: Exception) -> httpx.Response:
        """The response for a call that could not be served: the last real error response the caller's
        SDK understands (its own 429, 401, ...), or a 429 naming when to retry when nothing was sent."""
        last = self.last_error_response
        if last is None and isinstance(error, NotReplayableError) and self.last_error is not None:
            raise self.last_error
        if last is not None:
            response = self.lib.Response(last.status_code, headers=last.headers, content=last.content,
                                         request=self.request)
        else:
            retry_at = getattr(error, "retry_at", None)
            headers = {"content-type": "application/json"}
            if retry_at is not None:
                headers["retry-after"] = str(max(0, round(retry_at - time.time())))
            body = {"error": {"message": f"coordinator: {error}".splitlines()[0], "type": "coordinator_exhausted",
                              "code": "pool_exhausted", "param": None}}
            response = self.lib.Response(429, headers=headers, content=json.dumps(body).encode(),
                                         request=self.request)
        response = self.finish(response)
        response.extensions["coordinator"]["error"] = str(error)
        return response


def _with_model(body: bytes, model: str, headers: Any) -> bytes:
    if "json" not in headers.get("content-type", ""):
        return body
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if not isinstance(payload, dict) or "model" not in payload:
        return body
    payload["model"] = model
    return json.dumps(payload, separators=(",", ":")).encode()


class FailoverTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Sync and async transport for httpx and httpx2 clients; get one from ``coord.transport(...)``.

    Per-request pools: ``request.extensions["coordinator"] = {"pools": [...]}`` or the header
    ``x-coordinator-pools: a,b`` (stripped before sending).
    """

    def __init__(
        self,
        coordinator: Caller,
        pools: str | Sequence[str],
        inner: Any = None,
        **call_options: Any,
    ) -> None:
        self._coordinator = coordinator
        self._async = coordinator.is_async
        self.pools = [pools] if isinstance(pools, str) else list(pools)
        for name in self.pools:
            coordinator.pool_config(name)
        self._inner = inner
        # Default inner transports, one per HTTP library (httpx, httpx2), made on first use.
        self._defaults: dict[str, Any] = {}
        self._options = call_options
        self._owner_cache: dict[tuple[str, ...], dict[int, PoolConfig]] = {}

    def _inner_for(self, lib: ModuleType) -> Any:
        if self._inner is not None:
            return self._inner
        if lib.__name__ not in self._defaults:
            self._defaults[lib.__name__] = lib.AsyncHTTPTransport() if self._async else lib.HTTPTransport()
        return self._defaults[lib.__name__]

    def _start(self, request: Any, body: bytes | None) -> _Call:
        pools = self.pools
        override = request.extensions.get("coordinator")
        header = request.headers.get(POOLS_HEADER)
        if isinstance(override, dict) and override.get("pools"):
            chosen = override["pools"]
            pools = [chosen] if isinstance(chosen, str) else list(chosen)
        elif header:
            pools = [p.strip() for p in header.split(",") if p.strip()]
        return _Call(request, http_library(request), body, pools, self._owners(pools))

    def _owners(self, pools: list[str]) -> dict[int, PoolConfig]:
        """Which pool each member object belongs to; built once per chain (configs do not change)."""
        key = tuple(pools)
        owners = self._owner_cache.get(key)
        if owners is None:
            configs = [self._coordinator.pool_config(name) for name in pools]
            owners = {id(member): cfg for cfg in configs for member in cfg.members}
            if len(self._owner_cache) < 64:
                self._owner_cache[key] = owners
        return owners

    @staticmethod
    def _replayable(request: Any) -> bool:
        return isinstance(request.stream, http_library(request).ByteStream)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        coordinator = self._coordinator
        if coordinator.is_async:
            raise TypeError("this transport belongs to an AsyncCoordinator: use it with an AsyncClient")
        call = self._start(request, request.read() if self._replayable(request) else None)
        inner = self._inner_for(call.lib)
        try:
            response = coordinator.call(
                call.pools, lambda member: call.note(inner.handle_request(call.prepare(member))),
                classifier=call.classify, **self._options,
            )
        except (NotReplayableError, AllMembersFailedError) as exc:
            return call.fallback(exc)
        finally:
            call.restore()
        return call.finish(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        coordinator = self._coordinator
        if not coordinator.is_async:
            raise TypeError("this transport belongs to a sync Coordinator: use it with a sync Client")
        call = self._start(request, await request.aread() if self._replayable(request) else None)
        inner = self._inner_for(call.lib)

        async def attempt(member: Member) -> httpx.Response:
            return call.note(await inner.handle_async_request(call.prepare(member)))

        try:
            response = await coordinator.call(call.pools, attempt, classifier=call.classify, **self._options)
        except (NotReplayableError, AllMembersFailedError) as exc:
            return call.fallback(exc)
        finally:
            call.restore()
        return call.finish(response)

    def close(self) -> None:
        for inner in [self._inner, *self._defaults.values()]:
            if inner is not None and hasattr(inner, "handle_request"):
                inner.close()

    async def aclose(self) -> None:
        for inner in [self._inner, *self._defaults.values()]:
            if inner is not None and hasattr(inner, "handle_async_request"):
                await inner.aclose()

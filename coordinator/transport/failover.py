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
from coordinator.rules.sse import SseFormat, detect_format
from coordinator.transport import continuation, limits
from coordinator.transport.stream_guard import GuardState, Primed, aprime, guarded_stream, prime


class Caller(Protocol):
    """What the transport needs of a coordinator: its pools' configs and ``call`` (awaitable when
    ``is_async``). ``Coordinator`` and ``AsyncCoordinator`` are both one."""

    is_async: bool
    hooks: list[Any]
    classifier: Any

    def pool_config(self, name: str) -> PoolConfig: ...

    def pool(self, name: str) -> Any: ...

    def call(self, pools: Sequence[str], fn: Any, **options: Any) -> Any: ...

#: Per-request choice of pools, as a header an SDK can send with ``extra_headers``; never forwarded.
POOLS_HEADER = "x-coordinator-pools"
#: An attempt with less of the call's deadline left than this is not started (it could only time out).
_SHORTEST_ATTEMPT = 0.01
#: Headers that carry the caller's placeholder credential; replaced by the member's own.
_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")
_DROPPED_RAW = frozenset(name.encode("latin-1") for name in (*_CREDENTIAL_HEADERS, POOLS_HEADER))


class NotReplayableError(Exception):
    """The request body was a one-shot stream: it was sent once and cannot be sent again."""


class DeadlineReachedError(Exception):
    """The call's deadline passed before the next attempt could start: nothing is sent."""


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
    #: Seconds the whole call may take (the call's ``deadline``, else the first pool's), or None.
    deadline: float | None = None
    #: The coordinator and the inner transport, for a continuation of a stream that broke later.
    coordinator: Any = None
    inner: Any = None

    def __post_init__(self) -> None:
        self.url = self.request.url
        self.stream = self.request.stream
        self.started = time.monotonic()
        #: The SDK's own per-request timeouts; the pool's limits only ever shorten them.
        self.sdk_timeouts = self.request.extensions.get("timeout")
        self.streaming = _asks_for_stream(self.body)
        self.format: SseFormat | None = detect_format(self.url.path)
        self.headers = self.request.headers
        # The caller's headers without the ones a member replaces, in one pass for all attempts.
        self.base = [(key, value) for key, value in self.headers.raw if key.lower() not in _DROPPED_RAW]

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - (time.monotonic() - self.started)

    def prepare(self, member: Member, body: bytes | None = None) -> httpx.Request:
        """The caller's request as ``member`` sends it (with ``body`` instead of the caller's: a
        continuation). The request gets a headers object of its own, built in one pass over the
        caller's (cheaper than editing them field by field), and ``restore`` puts the caller's back, so
        the caller never sees a member's secret in it."""
        if self.body is None and self.attempts > 0:
            raise NotReplayableError("the request body is a stream that was already sent once")
        remaining = self.remaining()
        if remaining is not None and remaining < _SHORTEST_ATTEMPT:
            raise DeadlineReachedError(f"the call's deadline ({self.deadline:g}s) has passed")
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
            url = self.url.copy_with(scheme=base.scheme, host=base.host, port=base.port,
                                     path=join_paths(base.path, self.url.path))
            request.url = url.copy_merge_params(base.params) if base.query else url
            extra["host"] = base.netloc.decode("ascii")
        source = self.body if body is None else body
        if source is not None and (member.model or body is not None):
            content = _with_model(source, member.model, self.headers) if member.model else source
            if content is not self.body:
                request.stream = self.lib.ByteStream(content)
                extra["content-length"] = str(len(content))
        replaced = {name.encode("latin-1") for name in extra}
        raw = [(key, value) for key, value in self.base if key.lower() not in replaced]
        raw.extend((name.encode("latin-1"), value.encode("utf-8")) for name, value in extra.items())
        request.headers = self.lib.Headers(raw)
        request.extensions["timeout"] = limits.header_phase(self.sdk_timeouts, pool.timeouts, self.streaming,
                                                            self.remaining())
        return request

    def _guard_for(self, response: httpx.Response, member: Member, *, timers: bool,
                   after: continuation.Resuming | None = None) -> GuardState | None:
        """Sets the body-phase timeouts; for a successful event stream of a known API, its guard (for a
        continuation: one that goes on from ``after``, the guard of the stream that broke)."""
        pool = self.owners[id(member)]
        content_type = response.headers.get("content-type", "") if response.status_code < 400 else ""
        event_stream = content_type.startswith("text/event-stream")
        # AWS Bedrock's binary event stream is not read by the guard, but its reads get ``idle`` too.
        timed = event_stream or content_type.startswith("application/vnd.amazon.eventstream")
        self.request.extensions["timeout"] = limits.body_phase(self.sdk_timeouts, pool.timeouts, timed,
                                                               self.remaining(), timers=timers or not event_stream)
        if not event_stream or self.format is None:
            return None
        remaining = self.remaining()
        return GuardState(self.format, first_token=pool.timeouts.first_token, idle=pool.timeouts.idle,
                          deadline_at=None if remaining is None else time.monotonic() + remaining,
                          pool=pool.name, member=member.id, **continuation.guard_options(self, after))

    def guard(self, response: httpx.Response, member: Member,
              after: continuation.Resuming | None = None) -> httpx.Response:
        """Hands an event stream over only once it has content; its failures until then are this attempt's."""
        state = self._guard_for(response, member, timers=False, after=after)
        if state is None:
            return response
        original = response.stream
        chunks = iter(original)  # type: ignore[arg-type]
        try:
            head, ended = prime(state, chunks)
        except BaseException:
            response.close()
            raise
        primed = Primed(state, head, ended, chunks, original)
        response.stream = guarded_stream(self.lib, primed, continuation.recovery(self, response, after))
        return response

    async def aguard(self, response: httpx.Response, member: Member,
                     after: continuation.Resuming | None = None) -> httpx.Response:
        state = self._guard_for(response, member, timers=True, after=after)
        if state is None:
            return response
        original = response.stream
        chunks = original.__aiter__()  # type: ignore[union-attr]
        try:
            head, ended = await aprime(state, chunks)
        except BaseException:
            await response.aclose()
            raise
        primed = Primed(state, head, ended, chunks, original)
        response.stream = guarded_stream(self.lib, primed, continuation.recovery(self, response, after))
        return response

    def restore(self) -> None:
        """Undoes what ``prepare`` changed in the caller's request."""
        request = self.request
        request.headers = self.headers
        request.url = self.url
        request.stream = self.stream

    def classify(self, error: object) -> Failure | None:
        """Seen first by the executor for every failure; leaves the judgement to the built-in rules."""
        if isinstance(error, NotReplayableError | DeadlineReachedError):
            # "request" touches no state and makes the executor hand the error back at once.
            return Failure(kind="request", message=str(error))
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
        if last is None and self.last_error is not None:
            # Every try raised (a timeout, a refused connection, a broken stream): the caller's SDK
            # gets the last of those errors, as it would without the coordinator.
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


def join_paths(base: str, path: str) -> str:
    """A member's ``base_url`` path in front of the SDK's request path, without repeating the part they
    share: the longest tail of ``base`` that ``path`` starts with is written once. So ``/v1`` and
    ``/v1/chat/completions`` give ``/v1/chat/completions``, ``/openai/v1`` and ``/v1/chat/completions``
    give ``/openai/v1/chat/completions``, ``/api`` and ``/v1/messages`` give ``/api/v1/messages``."""
    head = [part for part in base.split("/") if part]
    tail = [part for part in path.split("/") if part]
    for overlap in range(min(len(head), len(tail)), 0, -1):
        if head[-overlap:] == tail[:overlap]:
            tail = tail[overlap:]
            break
    joined = "/" + "/".join(head + tail)
    return joined + "/" if path.endswith("/") and not joined.endswith("/") else joined


def _asks_for_stream(body: bytes | None) -> bool:
    """The JSON body says ``"stream": true`` (OpenAI and Anthropic alike)."""
    if not body or b'"stream"' not in body:
        return False
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("stream") is True


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
        owners = self._owners(pools)
        configs = [self._coordinator.pool_config(name) for name in pools]
        deadline = self._options.get("deadline")
        if deadline is None and configs:
            deadline = configs[0].timeouts.deadline
        return _Call(request, http_library(request), body, pools, owners, deadline=deadline)

    def _call_options(self, call: _Call) -> dict[str, Any]:
        return {**self._options, "deadline": call.deadline}

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
        inner = call.inner = self._inner_for(call.lib)
        call.coordinator = coordinator

        def attempt(member: Member) -> httpx.Response:
            return call.guard(call.note(inner.handle_request(call.prepare(member))), member)

        try:
            response = coordinator.call(call.pools, attempt, classifier=call.classify, **self._call_options(call))
        except (NotReplayableError, DeadlineReachedError, AllMembersFailedError) as exc:
            return call.fallback(exc)
        finally:
            call.restore()
        return call.finish(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        coordinator = self._coordinator
        if not coordinator.is_async:
            raise TypeError("this transport belongs to a sync Coordinator: use it with a sync Client")
        call = self._start(request, await request.aread() if self._replayable(request) else None)
        inner = call.inner = self._inner_for(call.lib)
        call.coordinator = coordinator

        async def attempt(member: Member) -> httpx.Response:
            return await call.aguard(call.note(await inner.handle_async_request(call.prepare(member))), member)

        try:
            response = await coordinator.call(call.pools, attempt, classifier=call.classify,
                                              **self._call_options(call))
        except (NotReplayableError, DeadlineReachedError, AllMembersFailedError) as exc:
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

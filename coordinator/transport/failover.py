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

import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import httpx

from coordinator.core.config import Member, PoolConfig
from coordinator.core.errors import AllMembersFailedError
from coordinator.core.kinds import Failure
from coordinator.core.types import Selection
from coordinator.rules.plan import ATTEMPT_SELECTION
from coordinator.rules.sse import SseFormat, detect_format
from coordinator.transport import continuation, limits
from coordinator.transport.happy import Fast, HappyPath
from coordinator.transport.routes import (
    CREDENTIAL_HEADERS,
    EVENT_STREAM,
    POOLS_HEADER,
    TIMED_TYPES,
    Route,
    asks_for_stream,
    content_type,
    http_library,
)
from coordinator.transport.routes import route as route_of
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

    # Internal, for the transport's happy path (transport/happy.py): what ``call`` does first (bind to
    # the running event loop), and ``call`` carried on from an attempt the transport already made.
    def _enter(self) -> None: ...

    def _carry_on(self, pools: Sequence[str], fn: Any, selection: Selection, first: Any, **options: Any) -> Any: ...

__all__ = ["POOLS_HEADER", "Caller", "FailoverTransport", "http_library", "join_paths"]

#: An attempt with less of the call's deadline left than this is not started (it could only time out).
_SHORTEST_ATTEMPT = 0.01
#: The headers a member replaces, each as a line of the caller's header names (lower case) would hold it.
_DROPPED_RAW = tuple((f"\n{name}\n".encode("latin-1"), name) for name in (*CREDENTIAL_HEADERS, POOLS_HEADER))


class NotReplayableError(Exception):
    """The request body was a one-shot stream: it was sent once and cannot be sent again."""


class DeadlineReachedError(Exception):
    """The call's deadline passed before the next attempt could start: nothing is sent."""


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
    #: Which of the headers a member replaces (credentials, the pools header) the caller sent, lower case.
    present: Sequence[str] = ()
    #: Each member's ``Route``, by ``id(member)`` (the transport's, shared by its calls).
    routes: dict[int, Route] = field(default_factory=dict)

    def __post_init__(self) -> None:
        request = self.request
        self.url = request.url
        self.stream = request.stream
        self.started = time.monotonic()
        #: The SDK's own per-request timeouts; the pool's limits only ever shorten them.
        self.sdk_timeouts = request.extensions.get("timeout")
        self.streaming = self.body is not None and b'"stream"' in self.body and asks_for_stream(self.body)
        self.headers = request.headers
        #: The request the next response answers (its extensions carry the body-phase timeouts).
        self.sent: httpx.Request = request
        self._format: SseFormat | bool | None = False

    @property
    def format(self) -> SseFormat | None:
        """The API the request path belongs to (read only for an event stream)."""
        if self._format is False:
            self._format = detect_format(self.url.path)
        return self._format  # type: ignore[return-value]

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - (time.monotonic() - self.started)

    def prepare(self, member: Member, body: bytes | None = None) -> httpx.Request:
        """The caller's request as ``member`` sends it. An attempt of the call itself edits the caller's
        request: it gets a headers object of its own (a copy of the caller's, without their credential
        and pools headers, with the member's), and ``restore`` puts the caller's back when the call
        returns. A continuation (``body`` instead of the caller's) runs while the caller holds the
        response, so it is sent as a request of its own: the caller never sees a member's secret."""
        if self.body is None and self.attempts > 0:
            raise NotReplayableError("the request body is a stream that was already sent once")
        remaining = None if self.deadline is None else self.remaining()
        if remaining is not None and remaining < _SHORTEST_ATTEMPT:
            raise DeadlineReachedError(f"the call's deadline ({self.deadline:g}s) has passed")
        fresh = body is not None
        if self.attempts and not fresh:
            self.restore()
        pool = self.owners[id(member)]
        route = self.routes.get(id(member))
        if route is None or route.member is not member or route.pool is not pool:
            route = self.routes[id(member)] = route_of(member, pool)
        self.attempts += 1
        self.tried.append({"pool": pool.name, "member": member.id})
        request = self.request if not fresh else self.lib.Request(
            self.request.method, self.url, stream=self.stream, extensions=dict(self.request.extensions))
        secret = member.secret()
        extra: dict[str, str] = {route.auth: f"Bearer {secret}" if route.bearer else secret} if secret else {}
        if not route.plain or fresh:
            self._member_changes(request, member, route, extra, body)
        headers = self.lib.Headers(self.headers)  # a copy of the caller's list, not a new parse
        for name in self.present:
            if name not in extra:
                with contextlib.suppress(KeyError):  # a name that only seemed to be there
                    del headers[name]
        for name, value in extra.items():
            headers[name] = value
        request.headers = headers
        request.extensions["timeout"] = limits.header_phase(self.sdk_timeouts, pool.timeouts, self.streaming,
                                                            remaining)
        self.sent = request
        return request

    def adopt(self, fast: Fast, coordinator: Caller, inner: Any) -> None:
        """Takes on the attempt the happy path already sent (transport/happy.py) as if ``prepare`` had
        made it: the caller's request goes on carrying that member's headers until ``restore``."""
        request = self.request
        self.attempts = 1
        self.tried.append({"pool": fast.cfg.name, "member": fast.selection.member.id})
        self.coordinator, self.inner = coordinator, inner
        self.sent = request

    def _member_changes(self, request: httpx.Request, member: Member, route: Route, extra: dict[str, str],
                        body: bytes | None) -> None:
        """A member's own headers, base URL and model, and a continuation's ``body``: into ``extra``
        (headers to set) and ``request``."""
        for name, value in route.headers:
            extra[name] = value
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

    def _guard_for(self, response: httpx.Response, member: Member, *, timers: bool,
                   after: continuation.Resuming | None = None) -> GuardState | None:
        """Sets the body-phase timeouts; for a successful event stream of a known API, its guard (for a
        continuation: one that goes on from ``after``, the guard of the stream that broke)."""
        pool = self.owners[id(member)]
        kind = content_type(response) if response.status_code < 400 else b""
        event_stream = kind.startswith(EVENT_STREAM)
        # AWS Bedrock's binary event stream is not read by the guard, but its reads get ``idle`` too.
        timed = kind.startswith(TIMED_TYPES)
        remaining = None if self.deadline is None else self.remaining()
        self.sent.extensions["timeout"] = limits.body_phase(self.sdk_timeouts, pool.timeouts, timed,
                                                               remaining, timers=timers or not event_stream)
        if not event_stream or self.format is None:
            return None
        selection = ATTEMPT_SELECTION.get()
        return GuardState(self.format, first_token=pool.timeouts.first_token, idle=pool.timeouts.idle,
                          deadline_at=None if remaining is None else time.monotonic() + remaining,
                          pool=pool.name, member=member.id,
                          selection=selection if selection is not None and selection.pool == pool.name
                          and selection.member.id == member.id else None,
                          **continuation.guard_options(self, after))

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
        #: What goes to every ``call`` besides the deadline (the call's own, see ``_start``).
        self._options = {key: value for key, value in call_options.items() if key != "deadline"}
        self._deadline = call_options.get("deadline")
        self._chain_cache: dict[tuple[str, ...], tuple[dict[int, PoolConfig], float | None]] = {}
        #: Each member's ``Route`` by ``id(member)``; the member objects live as long as the coordinator's configs.
        self._routes: dict[int, Route] = {}
        self._happy = HappyPath(coordinator, self.pools, self._chain(self.pools)[0], self._routes, self._options,
                                self._deadline)

    def _inner_for(self, lib: ModuleType) -> Any:
        if self._inner is not None:
            return self._inner
        if lib.__name__ not in self._defaults:
            self._defaults[lib.__name__] = lib.AsyncHTTPTransport() if self._async else lib.HTTPTransport()
        return self._defaults[lib.__name__]

    def _start(self, request: Any, body: bytes | None, lib: ModuleType) -> _Call:
        # Which of the headers a member replaces (and the pools header) the caller sent, in one look.
        names = b"\n" + b"\n".join([key for key, _ in request.headers.raw]).lower() + b"\n"
        present = [name for raw, name in _DROPPED_RAW if raw in names]
        asked = POOLS_HEADER in present
        pools = self.pools
        override = request.extensions.get("coordinator")
        header = request.headers.get(POOLS_HEADER) if asked else None
        if isinstance(override, dict) and override.get("pools"):
            chosen = override["pools"]
            pools = [chosen] if isinstance(chosen, str) else list(chosen)
        elif header:
            pools = [p.strip() for p in header.split(",") if p.strip()]
        owners, first_deadline = self._chain(pools)
        deadline = self._deadline
        if deadline is None:
            deadline = first_deadline
        return _Call(request, lib, body, pools, owners, deadline=deadline, present=present,
                     routes=self._routes)

    def _chain(self, pools: list[str]) -> tuple[dict[int, PoolConfig], float | None]:
        """Which pool each member object belongs to, and the first pool's deadline; built once per
        chain (configs do not change)."""
        key = tuple(pools)
        found = self._chain_cache.get(key)
        if found is None:
            configs = [self._coordinator.pool_config(name) for name in pools]
            owners = {id(member): cfg for cfg in configs for member in cfg.members}
            found = (owners, configs[0].timeouts.deadline if configs else None)
            if len(self._chain_cache) < 64:
                self._chain_cache[key] = found
        return found

    def _taken_over(self, fast: Fast, inner: Any) -> _Call:
        """The generic call that carries on from the happy path's attempt (transport/happy.py)."""
        request = fast.request
        sent, phase = request.headers, request.extensions["timeout"]
        request.headers, request.extensions["timeout"] = fast.caller, fast.sdk
        call = self._start(request, fast.body, fast.lib)
        request.headers, request.extensions["timeout"] = sent, phase
        call.adopt(fast, self._coordinator, inner)
        return call

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        coordinator = self._coordinator
        if coordinator.is_async:
            raise TypeError("this transport belongs to an AsyncCoordinator: use it with an AsyncClient")
        lib = http_library(request)
        inner = self._inner_for(lib)
        fast = self._happy.begin(request, lib)
        if fast is None:
            call = self._start(request, request.read() if isinstance(request.stream, lib.ByteStream) else None, lib)
            call.inner, call.coordinator = inner, coordinator
            attempt = self._attempt(call, inner)
            return self._serve(call, lambda: coordinator.call(call.pools, attempt, classifier=call.classify,
                                                              deadline=call.deadline, **self._options))
        try:
            response = inner.handle_request(request)
            if self._happy.settle(fast, response):
                return response  # type: ignore[no-any-return]
            result: httpx.Response | Exception = response
        except Exception as exc:
            result = exc
        except BaseException:
            fast.restore()
            raise
        call = self._taken_over(fast, inner)

        def rest(member: Member) -> httpx.Response:
            if isinstance(result, Exception):
                raise result
            return call.guard(call.note(result), member)

        attempt = self._attempt(call, inner)
        return self._serve(call, lambda: coordinator._carry_on(call.pools, attempt, fast.selection, rest,
                                                               classifier=call.classify))

    @staticmethod
    def _attempt(call: _Call, inner: Any) -> Callable[[Member], httpx.Response]:
        def attempt(member: Member) -> httpx.Response:
            return call.guard(call.note(inner.handle_request(call.prepare(member))), member)

        return attempt

    @staticmethod
    def _serve(call: _Call, run: Callable[[], httpx.Response]) -> httpx.Response:
        try:
            response = run()
        except (NotReplayableError, DeadlineReachedError, AllMembersFailedError) as exc:
            return call.fallback(exc)
        finally:
            call.restore()
        return call.finish(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        coordinator = self._coordinator
        if not coordinator.is_async:
            raise TypeError("this transport belongs to a sync Coordinator: use it with a sync Client")
        lib = http_library(request)
        inner = self._inner_for(lib)
        fast = self._happy.begin(request, lib)
        if fast is None:
            body = await request.aread() if isinstance(request.stream, lib.ByteStream) else None
            call = self._start(request, body, lib)
            call.inner, call.coordinator = inner, coordinator
            attempt = self._aattempt(call, inner)
            return await self._aserve(call, lambda: coordinator.call(call.pools, attempt, classifier=call.classify,
                                                                     deadline=call.deadline, **self._options))
        try:
            response = await inner.handle_async_request(request)
            if self._happy.settle(fast, response):
                return response  # type: ignore[no-any-return]
            result: httpx.Response | Exception = response
        except Exception as exc:
            result = exc
        except BaseException:
            fast.restore()
            raise
        call = self._taken_over(fast, inner)

        async def rest(member: Member) -> httpx.Response:
            if isinstance(result, Exception):
                raise result
            return await call.aguard(call.note(result), member)

        attempt = self._aattempt(call, inner)
        return await self._aserve(call, lambda: coordinator._carry_on(call.pools, attempt, fast.selection, rest,
                                                                      classifier=call.classify))

    @staticmethod
    def _aattempt(call: _Call, inner: Any) -> Callable[[Member], Awaitable[httpx.Response]]:
        async def attempt(member: Member) -> httpx.Response:
            return await call.aguard(call.note(await inner.handle_async_request(call.prepare(member))), member)

        return attempt

    @staticmethod
    async def _aserve(call: _Call, run: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        try:
            response = await run()
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

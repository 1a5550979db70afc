"""Review probes of the transport's happy path (coordinator/transport/happy.py): for each kind of
request and each way an attempt can end, the happy path and the generic path (``_happy.name = None``)
must send the same bytes, leave the caller's request and Redis in the same state, and give the caller
the same response or exception. Sync and async, against a scripted inner transport (no sockets):
headers, timeouts, exceptions; test_transport_happy_upstream.py goes on against FakeUpstream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from test_transport_happy import spy

import coordinator as co

SECRETS = ["sk-secret-aaaa1111", "sk-secret-bbbb2222", "sk-secret-cccc3333"]
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
URL = "http://upstream.invalid/v1/chat/completions"

Script = Callable[[httpx.Request, int], httpx.Response]


def ok(request: httpx.Request, n: int) -> httpx.Response:
    return httpx.Response(200, json={"ok": n}, request=request)


class Scripted(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An inner transport that answers from ``script`` and keeps what each request carried when sent."""

    def __init__(self, script: Script = ok) -> None:
        self.script = script
        self.sent: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None
        self.entered: asyncio.Event | None = None

    def _note(self, request: httpx.Request) -> httpx.Response:
        self.sent.append({"headers": list(request.headers.raw), "timeout": dict(request.extensions["timeout"]),
                          "body": request.content if isinstance(request.stream, httpx.ByteStream) else None})
        return self.script(request, len(self.sent))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._note(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.gate is not None and self.entered is not None:
            self.entered.set()
            await self.gate.wait()
        return self._note(request)


def pool_config(name: str = "p", secrets: list[str] = SECRETS, **kwargs: Any) -> co.PoolConfig:
    members = kwargs.pop("members", None) or [co.Member(id=f"{name}-{i + 1}", api_key=s) for i, s in enumerate(secrets)]
    kwargs.setdefault("cooldown", co.CooldownPolicy(min=0.001))
    kwargs.setdefault("backoff_base", 0.001)
    kwargs.setdefault("backoff_cap", 0.002)
    return co.PoolConfig(name=name, members=members, **kwargs)


class Rig:
    """A coordinator, a transport over a ``Scripted`` inner and a client, warmed up until the
    happy path takes requests (or with the happy path switched off)."""

    def __init__(self, happy: bool, pools: list[co.PoolConfig] | None = None, *, is_async: bool = False,
                 url: str | None = None, chain: list[str] | None = None, client_headers: dict[str, str] | None = None,
                 **options: Any) -> None:
        self.pools = pools or [pool_config()]
        cls = co.AsyncCoordinator if is_async else co.Coordinator
        self.coord = cls(url or f"memory://{uuid.uuid4().hex}", self.pools, prefix=f"r{uuid.uuid4().hex[:10]}")
        self.inner = Scripted()
        self.transport = self.coord.transport(chain or [self.pools[0].name], inner=self.inner, **options)
        if not happy:
            self.transport._happy.name = None
        self.happy = happy
        self.taken = spy(self.transport)
        headers = client_headers if client_headers is not None else {"authorization": "Bearer unused"}
        if is_async:
            self.aclient = httpx.AsyncClient(transport=self.transport, headers=headers)
        else:
            self.client = httpx.Client(transport=self.transport, headers=headers)

    def warm(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            assert self.client.post(URL, json=BODY).status_code == 200
            if not self.happy or (self.taken and self.taken[-1]) or time.monotonic() > deadline:
                break
            time.sleep(0.002)
        assert not self.happy or self.taken[-1], "the happy path never took a request"
        for _ in range(2):
            self.client.post(URL, json=BODY)
        del self.taken[:]
        del self.inner.sent[:]

    async def awarm(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            assert (await self.aclient.post(URL, json=BODY)).status_code == 200
            if not self.happy or (self.taken and self.taken[-1]) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.002)
        assert not self.happy or self.taken[-1], "the happy path never took a request"
        for _ in range(2):
            await self.aclient.post(URL, json=BODY)
        del self.taken[:]
        del self.inner.sent[:]

    def close(self) -> None:
        self.client.close()
        self.coord.close()

    async def aclose(self) -> None:
        await self.aclient.aclose()
        await self.coord.aclose()


def no_secret(*texts: object, secrets: list[str] = SECRETS) -> bool:
    """No member's secret in any of ``texts`` (headers are read raw: their repr masks credentials)."""
    shown = [str(list(text.raw)) if isinstance(text, httpx.Headers) else str(text) for text in texts]
    return not any(secret in text for text in shown for secret in secrets)


# -- headers ---------------------------------------------------------------------------------------


HEADER_SETS = {
    "none": [],
    "bearer": [("Authorization", "Bearer unused")],
    "mixed case": [("AUTHORIZATION", "Bearer a"), ("X-Api-Key", "k"), ("Api-Key", "z")],
    "duplicated": [("authorization", "Bearer a"), ("x-sdk", "1"), ("Authorization", "Bearer b"),
                   ("x-api-key", "k1"), ("X-API-KEY", "k2"), ("x-sdk", "2")],
    "only x-api-key": [("x-sdk", "1"), ("X-Api-Key", "k"), ("x-other", "2")],
    "custom auth placeholder": [("x-sdk", "1"), ("X-Custom-Key", "placeholder"), ("x-other", "2"),
                                ("x-custom-key", "again")],
}
AUTH_HEADERS = ["authorization", "x-api-key", "api-key", "X-Custom-Key"]


def sent_headers(happy: bool, auth: str, is_async: bool) -> list[tuple[Any, ...]]:
    """For each of HEADER_SETS, through one warmed transport: the headers sent, whether the caller's
    request has its own back, its ``extensions["coordinator"]``, and whether it took the happy path."""
    cfg = pool_config(auth_header=auth)

    async def amain() -> list[tuple[Any, ...]]:
        rig = Rig(happy, [cfg], is_async=True, client_headers={})
        await rig.awarm()
        out = []
        for caller in HEADER_SETS.values():
            request = rig.aclient.build_request("POST", URL, json=BODY, headers=caller)
            before = list(request.headers.raw)
            response = await rig.aclient.send(request)
            out.append((rig.inner.sent[-1]["headers"], list(response.request.headers.raw) == before,
                        response.extensions["coordinator"], rig.taken[-1]))
        await rig.aclose()
        return out

    if is_async:
        return asyncio.run(amain())
    rig = Rig(happy, [cfg], client_headers={})
    rig.warm()
    out = []
    for caller in HEADER_SETS.values():
        request = rig.client.build_request("POST", URL, json=BODY, headers=caller)
        before = list(request.headers.raw)
        response = rig.client.send(request)
        out.append((rig.inner.sent[-1]["headers"], list(response.request.headers.raw) == before,
                    response.extensions["coordinator"], rig.taken[-1]))
    rig.close()
    return out


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("auth", AUTH_HEADERS)
def test_the_happy_path_sends_the_headers_the_generic_path_sends(auth, is_async):
    fast, generic = sent_headers(True, auth, is_async), sent_headers(False, auth, is_async)
    for caller, mine, theirs in zip(HEADER_SETS, fast, generic, strict=True):
        assert mine[3] is True and theirs[3] is False, caller
        assert mine[:3] == theirs[:3], caller
        assert mine[1], f"{caller}: the caller's request has its own headers back"
        names = [name.lower() for name, _ in mine[0]]
        assert b"x-coordinator-pools" not in names, caller
        assert names.count(auth.lower().encode()) == 1, f"{caller}: one credential header, the member's"


# -- timeouts --------------------------------------------------------------------------------------


SDK_TIMEOUTS = {
    "none": None,
    "httpx default": httpx.Timeout(5.0),
    "sdk": httpx.Timeout(600.0, connect=2.0),
    "short read": httpx.Timeout(connect=50.0, read=0.5, write=7.0, pool=3.0),
    "unlimited": httpx.Timeout(None),
}
POOL_TIMEOUTS = {
    "default": co.Timeouts(),
    "tight": co.Timeouts(connect=1.0, first_byte=2.0, first_byte_unary=4.0, first_token=3.0, idle=1.5),
    "none": co.Timeouts(connect=None, first_byte=None, first_byte_unary=None, idle=None),
}
CONTENT_TYPES = ["application/json", "text/event-stream", "application/vnd.amazon.eventstream", "text/plain"]


#: Every request shape a pool's limits tell apart: unary or streaming body, and the response's type.
SHAPES = [(stream, kind) for stream in (False, True) for kind in CONTENT_TYPES]


def timeouts_seen(happy: bool, sdk: httpx.Timeout | None, limits: co.Timeouts, is_async: bool) -> list[tuple[Any, ...]]:
    """For each of SHAPES, through one warmed transport: the header-phase and body-phase timeouts the
    request carried, its ``extensions["coordinator"]``, and whether it took the happy path."""
    cfg = pool_config(timeouts=limits)
    shape: list[str] = [""]

    def script(request: httpx.Request, n: int) -> httpx.Response:
        if shape[0] == "text/event-stream":
            content = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: [DONE]\n\n'
        else:
            content = b'{"ok": 1}'
        return httpx.Response(200, headers={"content-type": shape[0]}, content=content, request=request)

    def build(client: Any, stream: bool) -> Any:
        body = {**BODY, "stream": True} if stream else BODY
        request = client.build_request("POST", URL, json=body, **({"timeout": sdk} if sdk else {}))
        if sdk is None:
            request.extensions.pop("timeout", None)
        return request

    async def amain() -> list[tuple[Any, ...]]:
        rig = Rig(happy, [cfg], is_async=True)
        await rig.awarm()
        rig.inner.script = script
        out = []
        for stream, kind in SHAPES:
            shape[0] = kind
            response = await rig.aclient.send(build(rig.aclient, stream), stream=True)
            body_phase = dict(response.request.extensions["timeout"])
            await response.aread()
            out.append((rig.inner.sent[-1]["timeout"], body_phase, response.extensions["coordinator"], rig.taken[-1]))
        await rig.aclose()
        return out

    if is_async:
        return asyncio.run(amain())
    rig = Rig(happy, [cfg])
    rig.warm()
    rig.inner.script = script
    out = []
    for stream, kind in SHAPES:
        shape[0] = kind
        response = rig.client.send(build(rig.client, stream), stream=True)
        body_phase = dict(response.request.extensions["timeout"])
        response.read()
        out.append((rig.inner.sent[-1]["timeout"], body_phase, response.extensions["coordinator"], rig.taken[-1]))
    rig.close()
    return out


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("limits", list(POOL_TIMEOUTS))
@pytest.mark.parametrize("sdk", list(SDK_TIMEOUTS))
def test_the_happy_path_sets_the_timeouts_the_generic_path_sets(sdk, limits, is_async):
    fast = timeouts_seen(True, SDK_TIMEOUTS[sdk], POOL_TIMEOUTS[limits], is_async)
    generic = timeouts_seen(False, SDK_TIMEOUTS[sdk], POOL_TIMEOUTS[limits], is_async)
    for (stream, kind), mine, theirs in zip(SHAPES, fast, generic, strict=True):
        assert mine[3] is True and theirs[3] is False, (stream, kind)
        assert mine[:3] == theirs[:3], (stream, kind)


# -- exceptions and the caller's request -----------------------------------------------------------


ERRORS: dict[str, Callable[[httpx.Request], BaseException]] = {
    "connect": lambda request: httpx.ConnectError("refused", request=request),
    "read timeout": lambda request: httpx.ReadTimeout("timed out", request=request),
    "value error": lambda request: ValueError(f"bad {request.headers}"),
}


def raising(make: Callable[[httpx.Request], BaseException], times: int | None = None) -> Script:
    def script(request: httpx.Request, n: int) -> httpx.Response:
        if times is None or n <= times:
            raise make(request)
        return ok(request, n)

    return script


def error_seen(happy: bool, error: str, is_async: bool, times: int | None) -> tuple[Any, ...]:
    cfg = pool_config(attempts_per_member=2)

    def observe(request: httpx.Request, before: list[Any], timeout: Any, outcome: Any, rig: Rig) -> tuple[Any, ...]:
        if isinstance(outcome, BaseException):
            exc_request = getattr(outcome, "_request", None)
            shown = (type(outcome).__name__, str(outcome), repr(outcome),
                     exc_request is request if exc_request is not None else None)
            assert no_secret(str(outcome), repr(outcome), exc_request.headers if exc_request else "")
        else:
            shown = (outcome.status_code, outcome.extensions["coordinator"])
        assert list(request.headers.raw) == before, "the caller's headers are back"
        assert no_secret(request.headers)
        return shown, len(rig.inner.sent), [s["headers"] for s in rig.inner.sent], rig.taken

    async def amain() -> tuple[Any, ...]:
        rig = Rig(happy, [cfg], is_async=True)
        await rig.awarm()
        rig.inner.script = raising(ERRORS[error], times)
        request = rig.aclient.build_request("POST", URL, json=BODY)
        before, timeout = list(request.headers.raw), request.extensions.get("timeout")
        try:
            outcome: Any = await rig.aclient.send(request)
        except Exception as exc:
            outcome = exc
        seen = observe(request, before, timeout, outcome, rig)
        snap = await rig.coord.pool("p").snapshot()
        await rig.aclose()
        return (*seen, [(m.id, m.failures, m.cooling_kind) for m in snap.members])

    if is_async:
        return asyncio.run(amain())
    rig = Rig(happy, [cfg])
    rig.warm()
    rig.inner.script = raising(ERRORS[error], times)
    request = rig.client.build_request("POST", URL, json=BODY)
    before, timeout = list(request.headers.raw), request.extensions.get("timeout")
    try:
        outcome: Any = rig.client.send(request)
    except Exception as exc:
        outcome = exc
    seen = observe(request, before, timeout, outcome, rig)
    snap = rig.coord.pool("p").snapshot()
    rig.close()
    return (*seen, [(m.id, m.failures, m.cooling_kind) for m in snap.members])


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("times", [1, 2, None], ids=["once", "one member", "always"])
@pytest.mark.parametrize("error", list(ERRORS))
def test_an_error_of_the_inner_transport_ends_as_on_the_generic_path(error, times, is_async):
    fast = error_seen(True, error, is_async, times)
    generic = error_seen(False, error, is_async, times)
    assert fast[3][:1] == [True] and not any(generic[3])
    assert (fast[0], fast[1], fast[2], fast[4]) == (generic[0], generic[1], generic[2], generic[4])


@pytest.mark.parametrize("happy", [True, False], ids=["happy", "generic"])
def test_a_keyboard_interrupt_in_the_inner_transport_leaves_no_secret_on_the_callers_request(happy):
    rig = Rig(happy)
    rig.warm()
    rig.inner.script = raising(lambda request: KeyboardInterrupt())
    request = rig.client.build_request("POST", URL, json=BODY)
    before = list(request.headers.raw)
    with pytest.raises(KeyboardInterrupt):
        rig.client.send(request)
    assert rig.taken == [happy]
    assert list(request.headers.raw) == before
    assert no_secret(request.headers)
    rig.close()


@pytest.mark.parametrize("happy", [True, False], ids=["happy", "generic"])
def test_a_task_cancelled_mid_request_leaves_no_secret_on_the_callers_request(happy):
    async def main() -> None:
        rig = Rig(happy, is_async=True)
        await rig.awarm()
        rig.inner.gate, rig.inner.entered = asyncio.Event(), asyncio.Event()
        request = rig.aclient.build_request("POST", URL, json=BODY)
        before = list(request.headers.raw)
        task = asyncio.create_task(rig.aclient.send(request))
        await rig.inner.entered.wait()
        assert not no_secret(request.headers), "the member's secret is on the request while it is sent"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rig.taken == [happy]
        assert list(request.headers.raw) == before
        assert no_secret(request.headers)
        rig.inner.gate.set()
        rig.inner.gate = None
        assert (await rig.aclient.post(URL, json=BODY)).status_code == 200
        await rig.aclose()

    asyncio.run(main())

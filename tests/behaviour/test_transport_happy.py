"""The transport's happy path (coordinator/transport/happy.py) hands every attempt it cannot finish to
the generic path without sending it again: each fault on that attempt ends exactly as it does when the
generic path makes the attempt itself, the upstream sees each request once, and the caller's request
never carries a member's secret. Sync and async, on real Redis and memory://."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

import coordinator as co
from coordinator.testing import FakeUpstream

KEYS = ["sk-test-aaaa1111", "sk-test-bbbb2222", "sk-test-cccc3333"]
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
#: What one run saw, and whether each of its requests took the happy path's attempt.
Seen = tuple[dict[str, Any], list[bool]]
CALLER = {"authorization": "Bearer unused", "x-api-key": "also-unused", "x-sdk": "1"}


def pool(name: str = "openai", keys: list[str] = KEYS) -> co.PoolConfig:
    members = [co.Member(id=f"{name}-{i + 1}" if name != "openai" else f"acct-{i + 1}", api_key=key)
               for i, key in enumerate(keys)]
    return co.PoolConfig(name=name, members=members, cooldown=co.CooldownPolicy(min=0.001),
                         backoff_base=0.001, backoff_cap=0.002)


@pytest.fixture(params=["redis", "memory"])
def url(request):
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


class Refusing:
    """An inner transport that refuses the connection for one key, ``times`` times, and otherwise sends;
    it keeps every request's headers as sent."""

    def __init__(self, lib_transport: Any, key: str | None = None, times: int = 0) -> None:
        self.inner, self.key, self.left = lib_transport, key, times
        self.sent: list[list[tuple[bytes, bytes]]] = []
        self.refused = 0

    def _check(self, request: httpx.Request) -> None:
        self.sent.append(list(request.headers.raw))
        if self.left and request.headers.get("authorization") == f"Bearer {self.key}":
            self.left -= 1
            self.refused += 1
            raise httpx.ConnectError("refused", request=request)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._check(request)
        return self.inner.handle_request(request)  # type: ignore[no-any-return]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._check(request)
        return await self.inner.handle_async_request(request)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()


def spy(transport: Any) -> list[bool]:
    """Whether each request took the happy path's attempt."""
    taken: list[bool] = []
    begin = transport._happy.begin

    def begin_and_note(request: Any, lib: Any) -> Any:
        fast = begin(request, lib)
        taken.append(fast is not None)
        return fast

    transport._happy.begin = begin_and_note
    return taken


def settled(upstream: FakeUpstream) -> Counter[Any]:
    """The upstream's statuses once every request that arrived is counted (it counts after answering)."""
    deadline = time.monotonic() + 5
    stats = upstream.stats
    while sum(stats.statuses.values()) < sum(stats.requests.values()) and time.monotonic() < deadline:
        time.sleep(0.005)
    return Counter(stats.statuses)


def observe(upstream: FakeUpstream, before: Counter[Any], response: httpx.Response, inner: Refusing,
            snap: Any, body: bytes, error: str | None) -> dict[str, Any]:
    request = response.request
    return {
        "status": response.status_code,
        "coordinator": response.extensions["coordinator"],
        "statuses": dict(settled(upstream) - before),
        "refused": inner.refused,
        "active": snap.active,
        "cooling": {m.id: m.cooling_kind for m in snap.members if m.cooling_until is not None},
        "failures": {m.id: m.failures for m in snap.members if m.failures},
        # The caller's own headers, never a member's secret.
        "request": sorted(item for item in request.headers.items() if item[0] != "host"),  # a port per upstream
        "secret_seen": any(key in str(request.headers) for key in KEYS),
        "body": re.sub(rb'"created": \d+', b"", body),  # the fake's clock
        "error": error,
    }


def run_sync(url: str | None, behaviour: str, refuse: bool, happy: bool, body: dict[str, Any],
             chain: bool = False) -> Seen:
    with FakeUpstream({key: "ok" for key in KEYS}, retry_after=30) as upstream:
        # A chain: the first pool has the first key only, the next one the others.
        pools = [pool("openai", KEYS[:1]), pool("backup", KEYS[1:])] if chain else [pool()]
        coord = co.Coordinator(url or f"memory://{uuid.uuid4().hex}", pools, prefix=f"h{uuid.uuid4().hex[:10]}")
        inner = Refusing(httpx.HTTPTransport())
        transport = coord.transport([p.name for p in pools], inner=inner)
        if not happy:
            transport._happy.name = None
        taken = spy(transport)
        client = httpx.Client(base_url=upstream.url, headers=CALLER, transport=transport)
        deadline = time.monotonic() + 10
        while not (taken and taken[-1]) and happy and time.monotonic() < deadline:  # until the view decides
            assert client.post("/v1/chat/completions", json=BODY).status_code == 200
        for _ in range(2):
            client.post("/v1/chat/completions", json=BODY)  # the generic path's views as warm
        upstream.set(KEYS[0], behaviour)
        inner.key, inner.left = KEYS[0], int(refuse)
        before = settled(upstream)
        del taken[:]
        response = client.send(client.build_request("POST", "/v1/chat/completions", json=body), stream=True)
        chunks, error = [], None
        try:
            chunks.extend(response.iter_raw())
        except Exception as exc:  # a stream broken after its hand-over: the caller's
            error = type(exc).__name__
        seen = observe(upstream, before, response, inner, coord.pool("openai").snapshot(), b"".join(chunks), error)
        client.close()
        coord.close()
        return seen, taken


def run_async(url: str | None, behaviour: str, refuse: bool, happy: bool, body: dict[str, Any]) -> Seen:
    async def main() -> Seen:
        with FakeUpstream({key: "ok" for key in KEYS}, retry_after=30) as upstream:
            async with co.AsyncCoordinator(url or f"memory://{uuid.uuid4().hex}", [pool()],
                                           prefix=f"h{uuid.uuid4().hex[:10]}") as coord:
                inner = Refusing(httpx.AsyncHTTPTransport())
                transport = coord.transport("openai", inner=inner)
                if not happy:
                    transport._happy.name = None
                taken = spy(transport)
                async with httpx.AsyncClient(base_url=upstream.url, headers=CALLER, transport=transport) as client:
                    deadline = time.monotonic() + 10
                    while not (taken and taken[-1]) and happy and time.monotonic() < deadline:
                        assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
                    for _ in range(2):
                        await client.post("/v1/chat/completions", json=BODY)
                    upstream.set(KEYS[0], behaviour)
                    inner.key, inner.left = KEYS[0], int(refuse)
                    before = settled(upstream)
                    del taken[:]
                    request = client.build_request("POST", "/v1/chat/completions", json=body)
                    response = await client.send(request, stream=True)
                    chunks, error = [], None
                    try:
                        chunks.extend([chunk async for chunk in response.aiter_raw()])
                    except Exception as exc:
                        error = type(exc).__name__
                    snap = await coord.pool("openai").snapshot()
                    return observe(upstream, before, response, inner, snap, b"".join(chunks), error), taken

    return asyncio.run(main())


CASES = {
    # behaviour on the first member, refuse its connection once, what the upstream then saw.
    "server error": ("first:1:server_error", False, {(KEYS[0], 500): 1, (KEYS[0], 200): 1}),
    "rate limited": ("rate_limited", False, {(KEYS[0], 429): 1, (KEYS[1], 200): 1}),
    "refused": ("ok", True, {(KEYS[0], 200): 1}),
    "spent window": ("ok_last_request", False, {(KEYS[0], 200): 1}),
    "plain success": ("ok", False, {(KEYS[0], 200): 1}),
    # An event stream is handed over for its guard, which fails a broken one over (a transient failure).
    "stream": ("ok", False, {(KEYS[0], 200): 1}),
    "broken stream": ("malformed", False, {(KEYS[0], 200): 3, (KEYS[1], 200): 1}),  # attempts_per_member
    # A stream that breaks after its hand-over is reported under the attempt's selection.
    "stream broken later": ("stream_break", False, {(KEYS[0], 200): 1}),
}
STREAMS = {"stream", "broken stream", "stream broken later"}


@pytest.mark.parametrize("run", [run_sync, run_async], ids=["sync", "async"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_happy_paths_attempt_ends_as_the_generic_paths_does(url, run, case):
    behaviour, refuse, statuses = CASES[case]
    body = {**BODY, "stream": True} if case in STREAMS else BODY
    fast, taken = run(url, behaviour, refuse, True, body)
    generic, not_taken = run(url, behaviour, refuse, False, body)
    assert taken[:1] == [True], "the faulty attempt was the happy path's"
    assert not any(not_taken)
    assert fast == generic
    assert fast["statuses"] == statuses, "each attempt reached the upstream once"
    assert not fast["secret_seen"]
    assert dict(fast["request"])["authorization"] == "Bearer unused"
    if case in STREAMS - {"stream broken later"}:
        assert b"data: [DONE]" in fast["body"]
    if case == "stream broken later":
        assert fast["error"] == "StreamInterruptedError" and fast["failures"] == {"acct-1": 1}
    if case == "spent window":
        assert fast["cooling"] == {"acct-1": "rate_limited"} and fast["coordinator"]["attempts"] == 1


@pytest.mark.parametrize("case", ["rate limited", "server error", "plain success"])
def test_a_chains_first_pool_takes_the_happy_path_and_hands_over_to_the_chain(url, case):
    behaviour, refuse, _ = CASES[case]
    fast, taken = run_sync(url, behaviour, refuse, True, BODY, chain=True)
    generic, _ = run_sync(url, behaviour, refuse, False, BODY, chain=True)
    assert taken[:1] == [True]
    assert fast == generic
    if case == "rate limited":
        assert fast["statuses"] == {(KEYS[0], 429): 1, (KEYS[1], 200): 1}
        assert fast["coordinator"]["pool"] == "backup" and fast["coordinator"]["attempts"] == 2


def test_the_happy_path_sends_the_callers_headers_with_the_members_credential_in_place():
    with FakeUpstream({key: "ok" for key in KEYS}) as upstream:
        coord = co.Coordinator(f"memory://{uuid.uuid4().hex}", [pool()], prefix="hp")
        inner = Refusing(httpx.HTTPTransport())
        transport = coord.transport("openai", inner=inner)
        taken = spy(transport)
        client = httpx.Client(base_url=upstream.url, headers=CALLER, transport=transport)
        deadline = time.monotonic() + 10
        while not (taken and taken[-1]) and time.monotonic() < deadline:
            response = client.post("/v1/chat/completions", json=BODY)
        assert taken[-1]
        names = [key.lower() for key, _ in inner.sent[-1]]
        generic = [key.lower() for key, _ in inner.sent[0]]
        assert names == generic, "the same headers in the same order as the generic path sends"
        sent = dict(inner.sent[-1])
        assert sent[b"authorization"] == f"Bearer {KEYS[0]}".encode()
        assert b"x-api-key" not in sent and b"x-coordinator-pools" not in sent
        assert response.request.headers["x-api-key"] == "also-unused"
        assert response.extensions["coordinator"] == {"pool": "openai", "member": "acct-1", "attempts": 1,
                                                      "tried": [{"pool": "openai", "member": "acct-1"}],
                                                      "replayable": True}
        client.close()
        coord.close()


@pytest.mark.parametrize("lib_name", ["httpx", "httpx2"])
def test_the_happy_path_knows_the_header_layout_of_each_http_library(lib_name):
    # The happy path reads and writes Headers._list (raw name, lower-case name, value); an upgrade of
    # httpx or httpx2 that keeps headers otherwise must fail here, not send a garbled request.
    from coordinator.transport import happy

    lib = pytest.importorskip(lib_name)
    assert happy._known_layout(lib)


def test_a_header_layout_it_does_not_know_takes_the_generic_path(monkeypatch):
    from coordinator.transport import happy

    with FakeUpstream({key: "ok" for key in KEYS}) as upstream:
        coord = co.Coordinator(f"memory://{uuid.uuid4().hex}", [pool()], prefix="hp")
        transport = coord.transport("openai")
        taken = spy(transport)
        client = httpx.Client(base_url=upstream.url, headers=CALLER, transport=transport)
        deadline = time.monotonic() + 10
        while not (taken and taken[-1]) and time.monotonic() < deadline:
            assert client.post("/v1/chat/completions", json=BODY).status_code == 200
        assert taken[-1], "the known layout takes the happy path"
        sent = upstream.stats.requests[KEYS[0]]
        monkeypatch.setitem(happy._LAYOUT, "httpx", False)
        response = client.post("/v1/chat/completions", json=BODY)
        assert taken[-1] is False and response.status_code == 200
        assert response.extensions["coordinator"]["member"] == "acct-1"
        assert upstream.stats.requests[KEYS[0]] == sent + 1
        client.close()
        coord.close()

"""Review probes of the transport's happy path (coordinator/transport/happy.py), continued: faults on
its attempt against FakeUpstream, sequences of requests and the Redis state they leave, threads and
tasks sharing one transport, secrets that change, hooks added later, one-shot bodies, per-request
pools and the real SDKs. The happy path and the generic path (``_happy.name = None``) must end alike.
The helpers are those of test_transport_happy_review.py."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from test_transport_happy import spy
from test_transport_happy_review import BODY, SECRETS, URL, Rig, Script, no_secret, pool_config

import coordinator as co
from coordinator.testing import FakeUpstream

# -- hand-over, against FakeUpstream ---------------------------------------------------------------


HANDOVER = ["auth", "quota", "overloaded", "unavailable", "bad_request", "context_length", "content_policy",
            "model_not_found", "rate_limited_retry_after", "rate_limited_openai", "too_large", "first:2:server_error",
            "no_terminal", "error_event", "cut"]


#: Each fault, unary and streaming, one of them through the sync transport and the other through the
#: async one (in turn), so both drivers meet every fault without the whole cross product.
FAULT_CASES = [pytest.param(behaviour, stream, ("sync", "async")[(i + stream) % 2],
                            id=f"{behaviour}-{'stream' if stream else 'unary'}-{('sync', 'async')[(i + stream) % 2]}")
               for i, behaviour in enumerate(HANDOVER) for stream in (False, True)]


@pytest.mark.parametrize(("behaviour", "stream", "run"), FAULT_CASES)
def test_each_fault_on_the_happy_paths_attempt_ends_as_on_the_generic_path(redis_url, run, behaviour, stream):
    # On real Redis only: test_transport_happy.py runs its faults on memory:// as well, and the hand-over
    # does not depend on the store.
    from test_transport_happy import run_async, run_sync

    url = redis_url

    runner = run_sync if run == "sync" else run_async
    body = {**BODY, "stream": True} if stream else BODY
    fast, taken = runner(url, behaviour, False, True, body)
    generic, not_taken = runner(url, behaviour, False, False, body)
    assert taken[:1] == [True] and not any(not_taken)
    for seen in (fast, generic):  # the soonest recovery is the clock's, a second apart or not
        info = seen["coordinator"]
        if "error" in info:
            info["error"] = re.sub(r"soonest recovery: .*", "soonest recovery", info["error"])
    assert fast == generic
    assert not fast["secret_seen"]


# -- sequences of requests: Redis ends the same ----------------------------------------------------


def in_turn(statuses: list[int], spent: bool = False) -> Script:
    """The step's requests, as they reach the upstream, answer ``statuses`` in turn, then 200s; with
    ``spent`` the first 200 says its member's rate-limit window is spent."""
    left = list(statuses)
    spend = [spent]

    def script(request: httpx.Request, n: int) -> httpx.Response:
        status = left.pop(0) if left else 200
        headers = {"retry-after": "30"} if status == 429 else {}
        if status == 200 and spend[0]:
            spend[0] = False
            headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}
        body = {"error": {"message": "x", "type": "server_error", "code": None}} if status >= 400 else {"n": n}
        return httpx.Response(status, json=body, headers=headers, request=request)

    return script


STEPS = {
    # a member with a transient failure on its record: its next success is news (quiet_success False)
    "failure then success": [([500], 1), ([], 3)],
    "rate limited then back": [([429], 1), ([], 3)],
    "auth": [([401], 1), ([], 2)],
    "spent window": [([], 1, "spent"), ([], 2)],
    "all fail": [([500, 500, 500], 1), ([], 2)],
}


def sequence_seen(happy: bool, steps: list[Any], url: str | None, strategy: str) -> tuple[Any, ...]:
    rig = Rig(happy, [pool_config(attempts_per_member=1, strategy=strategy)], url=url)
    rig.warm()
    seen = []
    for step in steps:
        statuses, count, *flags = step
        rig.inner.script = in_turn(statuses, "spent" in flags)
        for _ in range(count):
            mark = len(rig.inner.sent)
            response = rig.client.post(URL, json=BODY)
            sent = [s["headers"] for s in rig.inner.sent[mark:]]
            members = [next(v for k, v in h if k.lower() == b"authorization") for h in sent]
            seen.append((response.status_code, response.extensions["coordinator"].get("member"),
                         response.extensions["coordinator"]["attempts"], members))
    snap = rig.coord.pool("p").snapshot()
    state = (snap.active, [(m.id, m.failures, m.cooling_kind, m.ejections) for m in snap.members])
    taken = list(rig.taken)
    rig.close()
    if strategy == "round_robin":  # where the rotation stands after the warm-up is the warm-up's
        return relative(seen, state), taken
    return seen, state, taken


def relative(seen: list[Any], state: Any) -> tuple[Any, Any]:
    """``seen`` and ``state`` with members renamed by their place after the first member sent."""
    first = SECRETS.index(seen[0][3][0].decode().removeprefix("Bearer "))
    ids = {f"p-{(first + i) % 3 + 1}": f"m{i}" for i in range(3)}
    keys = {f"Bearer {SECRETS[(first + i) % 3]}".encode(): f"m{i}" for i in range(3)}
    seen = [(status, ids.get(member), attempts, [keys[m] for m in members])
            for status, member, attempts, members in seen]
    _active, members = state
    return seen, (sorted((ids[m], *rest) for m, *rest in members),)


@pytest.mark.parametrize("strategy", ["sticky", "round_robin"])
@pytest.mark.parametrize("steps", list(STEPS))
def test_a_sequence_of_requests_leaves_redis_as_the_generic_path_does(redis_url, steps, strategy):
    fast = sequence_seen(True, STEPS[steps], redis_url, strategy)
    generic = sequence_seen(False, STEPS[steps], redis_url, strategy)
    assert fast[-1][:1] == [True] and not any(generic[-1])
    assert fast[:-1] == generic[:-1]


# -- concurrency, secrets that change, hooks added later, bodies, per-request pools ----------------


def echo(request: httpx.Request, n: int) -> httpx.Response:
    """Answers with the credentials the request carried."""
    sent = [value.decode() for key, value in request.headers.raw
            if key.lower() in (b"authorization", b"x-api-key", b"api-key")]
    return httpx.Response(200, json={"sent": sent}, request=request)


def check_echo(request: httpx.Request, before: list[Any], response: httpx.Response) -> str:
    assert response.status_code == 200
    sent = response.json()["sent"]
    member = response.extensions["coordinator"]["member"]
    assert sent == [f"Bearer {SECRETS[int(member[-1]) - 1]}"], "one credential, the member's named on the response"
    assert list(request.headers.raw) == before and list(response.request.headers.raw) == before
    return member


def in_threads(work: Callable[[], None], count: int) -> list[BaseException]:
    """Runs ``work`` in ``count`` threads at once and waits for them; what any of them raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_many_threads_share_one_sync_transport():
    rig = Rig(True, [pool_config(strategy="round_robin")], client_headers={"x-api-key": "unused"})
    rig.warm()
    rig.inner.script = echo
    members: list[str] = []

    def work() -> None:
        for _ in range(60):
            request = rig.client.build_request("POST", URL, json=BODY)
            before = list(request.headers.raw)
            members.append(check_echo(request, before, rig.client.send(request)))

    errors = in_threads(work, 12)
    assert not errors, errors[:1]
    assert len(members) == 720 and set(members) == {"p-1", "p-2", "p-3"}
    assert sum(rig.taken) > 600, "most requests took the happy path"
    rig.close()


def test_many_tasks_share_one_async_transport():
    async def main() -> None:
        rig = Rig(True, [pool_config(strategy="round_robin")], is_async=True)
        await rig.awarm()
        rig.inner.script = echo

        async def one() -> str:
            request = rig.aclient.build_request("POST", URL, json=BODY)
            before = list(request.headers.raw)
            await asyncio.sleep(0)
            return check_echo(request, before, await rig.aclient.send(request))

        members = await asyncio.gather(*[one() for _ in range(600)])
        assert set(members) == {"p-1", "p-2", "p-3"}
        assert sum(rig.taken) > 500
        await rig.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("happy", [True, False], ids=["happy", "generic"])
def test_a_secret_that_changes_in_the_environment_is_sent_as_it_is_now(happy, monkeypatch):
    name = f"COORD_REVIEW_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(name, "sk-env-one")
    cfg = pool_config(members=[co.Member(id="p-1", api_key_env=name)])
    rig = Rig(happy, [cfg], client_headers={"Authorization": "Bearer unused"})
    rig.warm()
    rig.inner.script = echo
    seen = []
    for value in ["sk-env-one", "sk-env-two", None, "sk-env-three", "sk-env-three"]:
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
        response = rig.client.post(URL, json=BODY)
        seen.append(response.json()["sent"])
    assert seen == [["Bearer sk-env-one"], ["Bearer sk-env-two"], [], ["Bearer sk-env-three"], ["Bearer sk-env-three"]]
    assert all(rig.taken) if happy else not any(rig.taken)
    rig.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_hook_added_after_the_transport_was_made_sees_every_call(is_async):
    events: list[Any] = []

    def script(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(500 if n == 1 else 200, json={}, request=request)

    async def amain() -> None:
        rig = Rig(True, is_async=True)
        await rig.awarm()
        rig.coord.hooks.append(events.append)
        rig.inner.script = script
        assert (await rig.aclient.post(URL, json=BODY)).status_code == 200
        assert (await rig.aclient.post(URL, json=BODY)).status_code == 200
        assert rig.taken == [False, False]
        await rig.aclose()

    if is_async:
        asyncio.run(amain())
    else:
        rig = Rig(True)
        rig.warm()
        rig.coord.hooks.append(events.append)
        rig.inner.script = script
        assert rig.client.post(URL, json=BODY).status_code == 200
        assert rig.client.post(URL, json=BODY).status_code == 200
        assert rig.taken == [False, False]
        rig.close()
    attempts = [(e.member, e.kind, e.next) for e in events if isinstance(e, co.AttemptEvent)]
    assert attempts == [("p-1", "transient", "retry"), ("p-1", None, "return"), ("p-1", None, "return")]


@pytest.mark.parametrize("happy", [True, False], ids=["happy", "generic"])
def test_a_one_shot_body_is_sent_once_and_never_again(happy):
    rig = Rig(happy)
    rig.warm()
    rig.inner.script = lambda request, n: httpx.Response(500, json={}, request=request)

    def body() -> Any:
        yield b'{"model": "gpt-test", "stream": true}'

    response = rig.client.post(URL, content=body())
    assert response.status_code == 500
    assert len(rig.inner.sent) == 1 and rig.taken == [False]
    assert response.extensions["coordinator"]["replayable"] is False
    rig.close()


@pytest.mark.parametrize("how", ["extension", "header", "header mixed case"])
@pytest.mark.parametrize("happy", [True, False], ids=["happy", "generic"])
def test_per_request_pools_take_the_generic_path_and_are_never_forwarded(happy, how):
    pools = [pool_config("p"), pool_config("q", secrets=SECRETS[1:])]
    rig = Rig(happy, pools)
    rig.warm()
    rig.inner.script = echo
    request = rig.client.build_request("POST", URL, json=BODY,
                                       headers={"X-Coordinator-Pools" if "mixed" in how else "x-coordinator-pools": "q"}
                                       if how != "extension" else {},
                                       extensions={"coordinator": {"pools": ["q"]}} if how == "extension" else {})
    response = rig.client.send(request)
    assert response.extensions["coordinator"]["pool"] == "q"
    assert response.json()["sent"] == [f"Bearer {SECRETS[1]}"]
    assert not any(key.lower() == b"x-coordinator-pools" for key, _ in rig.inner.sent[-1]["headers"])
    assert rig.taken == [False]
    rig.close()


# -- the real SDKs ---------------------------------------------------------------------------------


class Recording:
    """Wraps the SDK's HTTP library's own transport; keeps each request's headers as sent."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[list[tuple[bytes, bytes]]] = []

    def handle_request(self, request: Any) -> Any:
        self.sent.append(list(request.headers.raw))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_the_sdks_requests_are_sent_alike_on_both_paths(sdk, stream):
    import anthropic
    import anthropic._base_client
    import openai
    import openai._base_client

    module = openai if sdk == "openai" else anthropic
    lib = getattr(module._base_client, "httpx2", None) or httpx
    keys = ["sk-test-aaaa1111", "sk-test-bbbb2222"]

    def run(happy: bool) -> tuple[Any, ...]:
        with FakeUpstream({key: "ok" for key in keys}) as upstream:
            cfg = pool_config(secrets=keys, auth_header="authorization" if sdk == "openai" else "x-api-key")
            coord = co.Coordinator(f"memory://{uuid.uuid4().hex}", [cfg], prefix="sdk")
            inner = Recording(lib.HTTPTransport())
            transport = coord.transport("p", inner=inner)
            if not happy:
                transport._happy.name = None
            taken = spy(transport)
            http = lib.Client(transport=transport)
            if sdk == "openai":
                client: Any = openai.OpenAI(api_key="unused", base_url=upstream.url + "/v1", max_retries=0,
                                            http_client=http)

                def ask() -> Any:
                    return client.chat.completions.with_raw_response.create(
                        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=stream,
                        extra_headers={"X-Api-Key": "also", "api-key": "more"})
            else:
                client = anthropic.Anthropic(api_key="unused", base_url=upstream.url, max_retries=0, http_client=http)

                def ask() -> Any:
                    return client.messages.with_raw_response.create(
                        model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                        stream=stream, extra_headers={"Authorization": "Bearer also"})
            deadline = time.monotonic() + 10
            while True:
                raw = ask()
                raw.http_response.read()
                if not happy or taken[-1] or time.monotonic() > deadline:
                    break
            raw = ask()
            raw.http_response.read()
            request = raw.http_response.request
            seen = ([(k.lower(), v) for k, v in inner.sent[-1]
                     if k.lower() not in (b"host", b"x-stainless-retry-count", b"x-stainless-read-timeout")],
                    raw.http_response.extensions["coordinator"], no_secret(request.headers, secrets=keys),
                    [k.lower() for k, _ in request.headers.raw], taken[-1])
            http.close()
            coord.close()
            return seen

    fast, generic = run(True), run(False)
    assert fast[-1] is True and generic[-1] is False
    assert fast[:-1] == generic[:-1]


@pytest.mark.parametrize("is_async", [False, True], ids=["threads", "tasks"])
def test_concurrent_hand_overs_each_send_one_credential_and_restore_the_callers_headers(is_async):
    bad = f"Bearer {SECRETS[0]}"
    flaky = pool_config(attempts_per_member=1, cooldown=co.CooldownPolicy(min=0.001, transient_threshold=1000))

    def script(request: httpx.Request, n: int) -> httpx.Response:
        sent = [value.decode() for key, value in request.headers.raw if key.lower() == b"authorization"]
        status = 500 if sent == [bad] and n % 2 else 200
        return httpx.Response(status, json={"sent": sent}, request=request)

    def check(request: httpx.Request, before: list[Any], response: httpx.Response) -> None:
        info = response.extensions["coordinator"]
        assert response.status_code == 200, info
        assert response.json()["sent"] == [f"Bearer {SECRETS[int(info['member'][-1]) - 1]}"]
        assert list(request.headers.raw) == before

    if is_async:
        async def main() -> None:
            rig = Rig(True, [flaky], is_async=True)
            await rig.awarm()
            rig.inner.script = script

            async def one() -> None:
                request = rig.aclient.build_request("POST", URL, json=BODY)
                before = list(request.headers.raw)
                check(request, before, await rig.aclient.send(request))

            await asyncio.gather(*[one() for _ in range(300)])
            assert any(rig.taken)
            await rig.aclose()

        asyncio.run(main())
        return
    rig = Rig(True, [flaky])
    rig.warm()
    rig.inner.script = script
    def work() -> None:
        for _ in range(30):
            request = rig.client.build_request("POST", URL, json=BODY)
            before = list(request.headers.raw)
            check(request, before, rig.client.send(request))

    errors = in_threads(work, 10)
    assert not errors, errors[:1]
    assert any(rig.taken)
    rig.close()

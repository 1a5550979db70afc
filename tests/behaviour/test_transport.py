"""The httpx transport against a real local HTTP server that behaves like the OpenAI and Anthropic
endpoints, with the real openai and anthropic SDKs (sync and async) and plain httpx, on real Redis
and memory://."""

from __future__ import annotations

import asyncio
import re
import uuid

import anthropic
import anthropic._base_client
import httpx
import openai
import openai._base_client
import pytest

import coordinator as co
from coordinator.store.connect import connect
from coordinator.testing import FakeUpstream

# The newest SDKs are built on httpx2 (an API-compatible fork) and only accept its clients; older
# ones take httpx clients. The transport serves both.
OPENAI_HTTP = getattr(openai._base_client, "httpx2", None) or httpx
ANTHROPIC_HTTP = getattr(anthropic._base_client, "httpx2", None) or httpx

KEYS = ["sk-test-aaaa1111", "sk-test-bbbb2222", "sk-test-cccc3333"]


@pytest.fixture
def upstream():
    with FakeUpstream({key: "ok" for key in KEYS}, retry_after=30) as server:
        yield server


@pytest.fixture(params=["redis", "memory"])
def store(request):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else f"memory://{uuid.uuid4().hex}"
    return url, f"t{uuid.uuid4().hex[:10]}"


def pool(name="openai", keys=KEYS, **kwargs):
    members = [co.Member(id=f"acct-{i + 1}", api_key=key) for i, key in enumerate(keys)]
    return co.PoolConfig(name=name, members=members, cooldown=co.CooldownPolicy(min=0.001), **kwargs)


def openai_client(coord, upstream, pools="openai"):
    http = OPENAI_HTTP.Client(transport=coord.transport(pools))
    return openai.OpenAI(api_key="unused", base_url=upstream.url + "/v1", max_retries=0, http_client=http)


def ask(client, **kwargs):
    return client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}], **kwargs)


def test_openai_sdk_fails_over_within_one_call(store, upstream):
    url, prefix = store
    upstream.set(KEYS[0], "quota")
    upstream.set(KEYS[1], "rate_limited")
    coord = co.Coordinator(url, [pool()], prefix=prefix)
    client = openai_client(coord, upstream)
    response = client.chat.completions.with_raw_response.create(model="gpt-test", messages=[])
    info = response.http_response.extensions["coordinator"]
    assert response.parse().choices[0].message.content == "Hello from the fake upstream."
    assert (info["pool"], info["member"], info["attempts"]) == ("openai", "acct-3", 3)
    assert upstream.stats.requests == {KEYS[0]: 1, KEYS[1]: 1, KEYS[2]: 1}
    snap = coord.pool("openai").snapshot()
    assert snap.active == "acct-3"
    assert snap.member("acct-1").cooling_kind == "quota_exhausted"
    assert snap.member("acct-2").cooling_until == pytest.approx(snap.now + 30, abs=2)


def test_anthropic_sdk_uses_x_api_key_and_fails_over(store, upstream):
    url, prefix = store
    upstream.set(KEYS[0], "overloaded")
    coord = co.Coordinator(url, [pool("claude", auth_header="x-api-key", attempts_per_member=1)], prefix=prefix)
    http = ANTHROPIC_HTTP.Client(transport=coord.transport("claude"))
    client = anthropic.Anthropic(api_key="unused", base_url=upstream.url, max_retries=0, http_client=http)
    message = client.messages.create(model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert message.content[0].text == "Hello from the fake upstream."
    assert upstream.stats.requests == {KEYS[0]: 1, KEYS[1]: 1}
    with client.messages.stream(model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "x"}]) as s:
        assert "".join(s.text_stream) == "Hello from the fake upstream."


def test_async_clients_fail_over(store, upstream):
    url, prefix = store
    upstream.set(KEYS[0], "auth")

    async def main():
        async with co.AsyncCoordinator(url, [pool(), pool("claude", auth_header="x-api-key")], prefix=prefix) as ac:
            oa = openai.AsyncOpenAI(api_key="unused", base_url=upstream.url + "/v1", max_retries=0,
                                    http_client=OPENAI_HTTP.AsyncClient(transport=ac.transport("openai")))
            completion = await oa.chat.completions.create(model="gpt-test", messages=[])
            chunks = [c.choices[0].delta.content async for c in await oa.chat.completions.create(
                model="gpt-test", messages=[], stream=True) if c.choices and c.choices[0].delta.content]
            an = anthropic.AsyncAnthropic(api_key="unused", base_url=upstream.url, max_retries=0,
                                          http_client=ANTHROPIC_HTTP.AsyncClient(transport=ac.transport("claude")))
            message = await an.messages.create(model="claude-test", max_tokens=5, messages=[])
            return completion, chunks, message, await ac.pool("openai").snapshot()

    completion, chunks, message, snap = asyncio.run(main())
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert "".join(chunks) == "Hello from the fake upstream."
    assert message.content[0].text == "Hello from the fake upstream."
    assert snap.active == "acct-2" and snap.member("acct-1").cooling_kind == "auth"


def test_openai_stream_arrives_intact_and_is_never_replayed(store, upstream):
    url, prefix = store
    coord = co.Coordinator(url, [pool()], prefix=prefix)
    pieces = [c.choices[0].delta.content for c in ask(openai_client(coord, upstream), stream=True)
              if c.choices and c.choices[0].delta.content]
    assert pieces == ["Hello", " from", " the", " fake", " upstream."]
    upstream.set(KEYS[0], "stream_break")
    stream = ask(openai_client(coord, upstream), stream=True)
    got = []
    with pytest.raises(co.StreamInterruptedError) as info:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["Hello"] and info.value.reason == "incomplete" and info.value.content_events == 1
    assert upstream.stats.requests[KEYS[0]] == 2 and upstream.stats.requests[KEYS[1]] == 0
    assert coord.pool("openai").snapshot().active == "acct-1", "a started stream is the caller's, not a failover"


@pytest.mark.parametrize(
    ("behaviour", "error", "code"),
    [("bad_request", openai.BadRequestError, None),
     ("context_length", openai.BadRequestError, "context_length_exceeded"),
     ("content_policy", openai.BadRequestError, "content_policy_violation")],
)
def test_fail_fast_errors_surface_as_the_sdks_own_and_touch_nothing(store, upstream, behaviour, error, code):
    url, prefix = store
    coord = co.Coordinator(url, [pool()], prefix=prefix)
    client = openai_client(coord, upstream)
    ask(client)
    before = coord.pool("openai").snapshot()
    upstream.set(KEYS[0], behaviour)
    with pytest.raises(error) as info:
        ask(client)
    assert info.value.code == code
    after = coord.pool("openai").snapshot()
    assert after.members == before.members and after.generation == before.generation
    assert upstream.stats.requests[KEYS[1]] == 0


def test_anthropic_fail_fast_error_is_the_sdks_own(store, upstream):
    url, prefix = store
    upstream.set(KEYS[0], "context_length")
    coord = co.Coordinator(url, [pool("claude", auth_header="x-api-key")], prefix=prefix)
    client = anthropic.Anthropic(api_key="unused", base_url=upstream.url, max_retries=0,
                                 http_client=ANTHROPIC_HTTP.Client(transport=coord.transport("claude")))
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        client.messages.create(model="claude-test", max_tokens=5, messages=[])
    assert upstream.stats.requests == {KEYS[0]: 1}


@pytest.mark.parametrize(
    "behaviour",
    ["rate_limited_retry_after", "rate_limited_http_date", "rate_limited_ms", "rate_limited_openai",
     "rate_limited_anthropic"],
)
def test_each_kind_of_reset_header_sets_the_cooldown(store, upstream, behaviour):
    url, prefix = store
    upstream.set(KEYS[0], behaviour, retry_after=90)
    coord = co.Coordinator(url, [pool()], prefix=prefix)
    ask(openai_client(coord, upstream))
    snap = coord.pool("openai").snapshot()
    assert snap.member("acct-1").cooling_until == pytest.approx(snap.now + 90, abs=2)
    assert snap.active == "acct-2"


def test_500_then_success_retries_the_same_member(store, upstream):
    url, prefix = store
    upstream.set(KEYS[0], "first:1:server_error")
    coord = co.Coordinator(url, [pool(backoff_base=0.001, backoff_cap=0.002)], prefix=prefix)
    ask(openai_client(coord, upstream))
    assert upstream.stats.statuses == {(KEYS[0], 500): 1, (KEYS[0], 200): 1}
    snap = coord.pool("openai").snapshot()
    assert snap.active == "acct-1" and snap.member("acct-1").cooling_until is None
    # The success in between restarts the count: the next 500 there is the first of a new run, not the
    # second (docs/design.md, "Failure counts"). Whether the success itself was sent (it resets the count
    # at once) or only noted (it restarts the count with the next report) depends on whether the local
    # view is trusted yet, which a loaded machine decides.
    upstream.set(KEYS[0], "first:1:server_error")
    ask(openai_client(coord, upstream))
    assert upstream.stats.statuses == {(KEYS[0], 500): 2, (KEYS[0], 200): 2}
    snap = coord.pool("openai").snapshot()
    assert snap.active == "acct-1" and snap.member("acct-1").failures == 1


def test_persistent_500_and_529_move_on_after_the_attempts(store, upstream):
    url, prefix = store
    upstream.set(KEYS[0], "server_error")
    upstream.set(KEYS[1], "overloaded")
    coord = co.Coordinator(url, [pool(backoff_base=0.001, backoff_cap=0.002)], prefix=prefix)
    ask(openai_client(coord, upstream))
    assert upstream.stats.statuses[(KEYS[0], 500)] == 3, "attempts_per_member tries of the same member"
    assert upstream.stats.statuses[(KEYS[1], 529)] == 3
    assert upstream.stats.requests[KEYS[2]] == 1
    assert coord.pool("openai").snapshot().active == "acct-3"


def test_preemptive_cooldown_when_remaining_is_zero(store, upstream):
    url, prefix = store
    upstream.set(KEYS[0], "ok_last_request", retry_after=120)
    coord = co.Coordinator(url, [pool()], prefix=prefix)
    ask(openai_client(coord, upstream))
    snap = coord.pool("openai").snapshot()
    assert snap.active == "acct-2", "cooled before the next request could meet a 429"
    assert snap.member("acct-1").cooling_until == pytest.approx(snap.now + 120, abs=2)


def test_everything_failed_gives_the_sdk_its_own_rate_limit_error(store, upstream):
    url, prefix = store
    for key in KEYS:
        upstream.set(key, "quota")
    coord = co.Coordinator(url, [pool(on_exhausted="fail")], prefix=prefix)
    with pytest.raises(openai.RateLimitError) as info:
        ask(openai_client(coord, upstream))
    assert info.value.code == "insufficient_quota"
    assert sum(upstream.stats.requests.values()) == 3
    with pytest.raises(openai.RateLimitError) as info:
        ask(openai_client(coord, upstream))
    assert info.value.code == "pool_exhausted", "nothing was sent: the coordinator answers itself"
    assert int(info.value.response.headers["retry-after"]) > 0
    assert sum(upstream.stats.requests.values()) == 3


def test_member_model_base_url_and_headers_are_applied(store, upstream):
    url, prefix = store
    with FakeUpstream({KEYS[1]: "ok"}) as other:
        members = [co.Member(id="a", api_key=KEYS[0], model="gpt-override"),
                   co.Member(id="b", api_key=KEYS[1], base_url=other.url, headers={"x-team": "blue"})]
        coord = co.Coordinator(url, [co.PoolConfig(name="openai", members=members)], prefix=prefix)
        completion = ask(openai_client(coord, upstream))
        assert completion.model == "gpt-override"
        coord.pool("openai").park("a", reason="test")
        completion = ask(openai_client(coord, upstream))
        assert completion.model == "gpt-test"
        assert other.stats.requests == {KEYS[1]: 1}


def test_per_request_pool_override(store, upstream):
    url, prefix = store
    upstream.set(KEYS[0], "quota")
    cfgs = [pool("first", keys=[KEYS[0]], on_exhausted="fail"), pool("second", keys=[KEYS[2]])]
    coord = co.Coordinator(url, cfgs, prefix=prefix)
    with httpx.Client(transport=coord.transport("first"), base_url=upstream.url) as client:
        response = client.post("/v1/chat/completions", json={"model": "m"}, headers={co.POOLS_HEADER: "second"})
        assert response.status_code == 200 and response.extensions["coordinator"]["pool"] == "second"
        request = client.build_request("POST", "/v1/chat/completions", json={"model": "m"},
                                       extensions={"coordinator": {"pools": ["first", "second"]}})
        response = client.send(request)
        assert response.status_code == 200
        assert [t["pool"] for t in response.extensions["coordinator"]["tried"]] == ["first", "second"]
    assert upstream.stats.requests[KEYS[0]] == 1
    assert "x-coordinator-pools" not in str(upstream.stats)


def test_a_body_that_cannot_be_replayed_is_sent_once(store, upstream):
    url, prefix = store
    upstream.set(KEYS[0], "rate_limited")
    coord = co.Coordinator(url, [pool()], prefix=prefix)

    def body():
        yield b'{"model": "m", "messages": []}'

    with httpx.Client(transport=coord.transport("openai"), base_url=upstream.url) as client:
        response = client.post("/v1/chat/completions", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 429
    assert response.extensions["coordinator"]["replayable"] is False
    assert upstream.stats.requests == {KEYS[0]: 1}
    assert coord.pool("openai").snapshot().active == "acct-2", "its failure still counts"


def test_no_api_key_reaches_redis(redis_url, upstream):
    prefix = f"t{uuid.uuid4().hex[:10]}"
    upstream.set(KEYS[0], "quota")
    upstream.set(KEYS[1], "auth")
    coord = co.Coordinator(redis_url, [pool()], prefix=prefix)
    ask(openai_client(coord, upstream))
    coord.pool("openai").park("acct-3", seconds=60, reason="check")
    raw = connect(redis_url)
    dump = []
    for key in raw.scan_iter(f"{prefix}:*"):
        kind = raw.type(key)
        if kind == "hash":
            dump += [f"{k}={v}" for k, v in raw.hgetall(key).items()]
        elif kind == "stream":
            dump += [str(fields) for _, fields in raw.xrange(key)]
        dump.append(key)
    text = "\n".join(dump)
    assert len(dump) > 10
    for key in KEYS:
        assert key not in text and key[-8:] not in text
    assert not re.search(r"sk-[A-Za-z0-9-]{6,}", text)


def test_readme_example_works_against_the_local_server(upstream, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("```python\n# transport example") + len("```python\n")
    code = readme[start: readme.index("```", start)]
    monkeypatch.setenv("OPENAI_KEY_1", KEYS[0])
    monkeypatch.setenv("OPENAI_KEY_2", KEYS[1])
    monkeypatch.setenv("FAKE_UPSTREAM_URL", upstream.url)
    upstream.set(KEYS[0], "rate_limited")
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert upstream.stats.requests[KEYS[1]] >= 1


def test_the_callers_request_never_keeps_a_member_secret(store, upstream):
    url, prefix = store
    upstream.set(KEYS[0], "rate_limited")
    coord = co.Coordinator(url, [pool()], prefix=prefix)
    with httpx.Client(transport=coord.transport("openai"), base_url=upstream.url,
                      headers={"authorization": "Bearer placeholder"}) as client:
        response = client.post("/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 200 and response.extensions["coordinator"]["attempts"] == 2
    assert response.request.headers["authorization"] == "Bearer placeholder"
    assert not any(key in str(response.request.headers.raw) for key in KEYS)

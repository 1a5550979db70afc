"""Request-level resilience through the real openai and anthropic SDKs, sync and async, against a
loopback provider that misbehaves on purpose: silent and slow members, broken streams, context-window
fallback, near recoveries. Each test asserts what the provider saw (attempts per member, their times)
and what the caller got. Limits are a few hundred milliseconds so the suite stays fast."""

from __future__ import annotations

import asyncio
import time
import uuid

import anthropic
import anthropic._base_client
import httpx
import openai
import openai._base_client
import pytest

import coordinator as co
from coordinator.testing.upstream import FakeUpstream

OPENAI_HTTP = getattr(openai._base_client, "httpx2", None) or httpx
ANTHROPIC_HTTP = getattr(anthropic._base_client, "httpx2", None) or httpx

A, B, C = "sk-test-aaaa1111", "sk-test-bbbb2222", "sk-test-cccc3333"
TEXT = "Hello from the fake upstream."
FAST = co.Timeouts(connect=1, first_byte=0.4, first_byte_unary=0.4, idle=0.4)


@pytest.fixture
def upstream():
    with FakeUpstream({A: "ok", B: "ok", C: "ok"}, retry_after=30) as server:
        yield server


_RUNNER: list[asyncio.Runner] = []


@pytest.fixture(autouse=True)
def runner():
    """One event loop per test for the async clients and coordinators (their connections belong to it)."""
    with asyncio.Runner() as loop:
        _RUNNER.append(loop)
        yield loop
        _RUNNER.pop()


def run(value):
    """Awaits ``value`` on the test's loop when it is a coroutine (async clients), else returns it."""
    return _RUNNER[-1].run(value) if asyncio.iscoroutine(value) else value


def pool(name, *keys, **kwargs):
    members = [co.Member(id=f"{name}-{i + 1}", api_key=key) for i, key in enumerate(keys)]
    kwargs.setdefault("timeouts", FAST)
    kwargs.setdefault("backoff_base", 0.001)
    kwargs.setdefault("backoff_cap", 0.002)
    return co.PoolConfig(name=name, members=members, **kwargs)


def coordinator(*pools, is_async=False):
    url = f"memory://{uuid.uuid4().hex}"
    if not is_async:
        return co.Coordinator(url, list(pools))

    async def build():
        return co.AsyncCoordinator(url, list(pools))

    return run(build())


def openai_client(coord, upstream, chain, timeout=10.0):
    if coord.is_async:
        return openai.AsyncOpenAI(api_key="unused", base_url=upstream.url + "/v1", max_retries=0, timeout=timeout,
                                  http_client=OPENAI_HTTP.AsyncClient(transport=coord.transport(chain)))
    return openai.OpenAI(api_key="unused", base_url=upstream.url + "/v1", max_retries=0, timeout=timeout,
                         http_client=OPENAI_HTTP.Client(transport=coord.transport(chain)))


def anthropic_client(coord, upstream, chain):
    if coord.is_async:
        return anthropic.AsyncAnthropic(api_key="unused", base_url=upstream.url, max_retries=0,
                                        http_client=ANTHROPIC_HTTP.AsyncClient(transport=coord.transport(chain)))
    return anthropic.Anthropic(api_key="unused", base_url=upstream.url, max_retries=0,
                               http_client=ANTHROPIC_HTTP.Client(transport=coord.transport(chain)))


def chat(client, stream=False):
    """The text of one chat completion (streamed or not), sync or async client alike."""
    kwargs = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}

    async def consume_async():
        if not stream:
            return (await client.chat.completions.create(**kwargs)).choices[0].message.content
        pieces = []
        async for chunk in await client.chat.completions.create(stream=True, **kwargs):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        return "".join(pieces)

    if isinstance(client, openai.AsyncOpenAI):
        return run(consume_async())
    if not stream:
        return client.chat.completions.create(**kwargs).choices[0].message.content
    return "".join(c.choices[0].delta.content for c in client.chat.completions.create(stream=True, **kwargs)
                   if c.choices and c.choices[0].delta.content)


def message(client, stream=False):
    kwargs = {"model": "claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}

    async def consume_async():
        if not stream:
            return (await client.messages.create(**kwargs)).content[0].text
        async with client.messages.stream(**kwargs) as s:
            return "".join([t async for t in s.text_stream])

    if isinstance(client, anthropic.AsyncAnthropic):
        return run(consume_async())
    if not stream:
        return client.messages.create(**kwargs).content[0].text
    with client.messages.stream(**kwargs) as s:
        return "".join(s.text_stream)


def timed(fn, *args, **kwargs):
    """``fn``'s value and when it returned (monotonic). Times are measured from the provider's side
    (request arrivals), so the SDK's first-call setup on a busy machine does not count."""
    value = fn(*args, **kwargs)
    return value, time.monotonic()


def gap(upstream, first, then):
    """Seconds between the first request for key ``first`` and the first for key ``then``."""
    return upstream.times(then)[0] - upstream.times(first)[0]


def tries(upstream, key):
    return len(upstream.times(key))


MODES = pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
STREAMING = pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])


# -- a silent member is asked once, then the call moves on -------------------------------------------


@MODES
@STREAMING
def test_accepted_but_silent_member_is_asked_once_then_the_next_member_serves(upstream, is_async, stream):
    upstream.set(A, "silent")
    coord = coordinator(pool("gpt", A, B), is_async=is_async)
    text, done = timed(chat, openai_client(coord, upstream, "gpt"), stream=stream)
    assert text == TEXT
    assert tries(upstream, A) == 1, "a silent route stays silent: never asked twice"
    assert tries(upstream, B) == 1
    assert 0.35 < gap(upstream, A, B) < 1.5, "one first_byte limit (0.4 s), then the next member"
    assert done - upstream.times(A)[0] < 3.0


@MODES
def test_with_default_pool_limits_the_sdk_timeout_still_bounds_a_silent_member(upstream, is_async):
    upstream.set(A, "silent")
    coord = coordinator(pool("gpt", A, timeouts=co.Timeouts()), pool("mini", B, timeouts=co.Timeouts()),
                        is_async=is_async)
    text, _ = timed(chat, openai_client(coord, upstream, ["gpt", "mini"], timeout=0.5))
    assert text == TEXT
    assert (tries(upstream, A), tries(upstream, B)) == (1, 1)
    assert 0.45 < gap(upstream, A, B) < 1.5, "the SDK's 0.5 s, once, then the fallback pool"
    snap = run(coord.pool("gpt").snapshot())
    assert snap.member("gpt-1").failures == 1, "counted toward its transient cooldown"


def test_slow_headers_past_first_byte_move_on_and_count_as_transient(upstream):
    upstream.set(A, "slow_headers", delay=4)
    coord = coordinator(pool("gpt", A, B, cooldown=co.CooldownPolicy(transient_threshold=1)))
    text, _ = timed(chat, openai_client(coord, upstream, "gpt"), stream=True)
    assert text == TEXT and gap(upstream, A, B) < 2.5, "first_byte (0.4 s), not the provider's 4 s"
    assert (tries(upstream, A), tries(upstream, B)) == (1, 1)
    snap = coord.pool("gpt").snapshot()
    assert snap.member("gpt-1").cooling_kind == "transient"
    assert snap.member("gpt-1").cooling_until == pytest.approx(snap.now + 5, abs=1), "transient base 5 s"


@MODES
def test_slow_first_token_past_first_token_fails_over_before_the_caller_has_anything(upstream, is_async):
    upstream.set(A, "slow_first_token", delay=4)
    limits = co.Timeouts(first_byte=1, first_token=0.3, idle=1)
    coord = coordinator(pool("gpt", A, B, timeouts=limits), is_async=is_async)
    text, _ = timed(chat, openai_client(coord, upstream, "gpt"), stream=True)
    assert text == TEXT, "the caller gets one whole answer, from the next member"
    assert (tries(upstream, A), tries(upstream, B)) == (1, 1)
    assert 0.25 < gap(upstream, A, B) < 2.5, "first_token (0.3 s), not the provider's 4 s"


def test_a_call_never_runs_past_its_deadline(upstream):
    upstream.set(A, "silent")
    upstream.set(B, "silent")
    limits = co.Timeouts(first_byte_unary=5, deadline=0.6)
    coord = coordinator(pool("gpt", A, B, timeouts=limits))
    with pytest.raises(openai.APITimeoutError):
        timed(chat, openai_client(coord, upstream, "gpt"))
    started = upstream.times(A)[0]
    assert tries(upstream, A) == 1 and tries(upstream, B) == 0, "the deadline ran out on the first member"
    assert time.monotonic() - started < 1.5


# -- broken streams: the guard raises, never ends as if complete, never replays ----------------------


@MODES
@pytest.mark.parametrize(("fault", "reason"), [
    ("cut", "incomplete"), ("stall", "stalled"), ("malformed", "malformed"), ("error_event", "error_event"),
    ("no_terminal", "incomplete"),
])
def test_an_openai_stream_that_breaks_after_content_raises_a_typed_error(upstream, is_async, fault, reason):
    upstream.set(A, fault, delay=4, events=3)
    coord = coordinator(pool("gpt", A, B), is_async=is_async)
    client = openai_client(coord, upstream, "gpt")
    got: list[str] = []

    async def consume_async():
        async for chunk in await client.chat.completions.create(model="m", messages=[], stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)

    with pytest.raises(co.StreamInterruptedError) as info:
        if is_async:
            run(consume_async())
        else:
            for chunk in client.chat.completions.create(model="m", messages=[], stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)
    expected = ["Hello", " from", " the", " fake", " upstream."] if fault == "no_terminal" else \
        ["Hello", " from", " the"]
    assert got == expected, "what the caller got is what was sent, once"
    assert info.value.reason == reason and info.value.member == "gpt-1"
    assert (tries(upstream, A), tries(upstream, B)) == (1, 0), "bytes the caller has are never replayed"
    if fault == "stall":
        assert time.monotonic() - upstream.times(A)[0] < 2.5, "idle (0.4 s), not the provider's 4 s pause"


@MODES
@pytest.mark.parametrize("fault", ["cut", "stall", "malformed", "error_event"])
def test_an_anthropic_stream_that_breaks_before_content_fails_over(upstream, is_async, fault):
    upstream.set(A, fault, delay=2, events=1)  # after message_start: the caller has no content yet
    coord = coordinator(pool("claude", A, B, auth_header="x-api-key", attempts_per_member=1), is_async=is_async)
    assert message(anthropic_client(coord, upstream, "claude"), stream=True) == TEXT
    assert (tries(upstream, A), tries(upstream, B)) == (1, 1)


@MODES
def test_an_anthropic_error_event_after_content_raises_with_its_type(upstream, is_async):
    upstream.set(A, "error_event", events=4)
    coord = coordinator(pool("claude", A, B, auth_header="x-api-key", continuation="off"), is_async=is_async)
    with pytest.raises(co.StreamInterruptedError) as info:
        message(anthropic_client(coord, upstream, "claude"), stream=True)
    assert info.value.reason == "error_event" and info.value.body["error"]["type"] == "overloaded_error"
    assert co.classify(info.value).kind == "transient"
    assert (tries(upstream, A), tries(upstream, B)) == (1, 0)


def test_an_openai_responses_stream_is_guarded(upstream):
    coord = coordinator(pool("gpt", A, B))
    with httpx.Client(transport=coord.transport("gpt"), base_url=upstream.url) as client:
        with client.stream("POST", "/v1/responses", json={"model": "m", "stream": True}) as response:
            body = b"".join(response.iter_raw())
        assert body.count(b"response.output_text.delta") == 10 and b"response.completed" in body
        upstream.set(A, "no_terminal")
        with client.stream("POST", "/v1/responses", json={"model": "m", "stream": True}) as response, \
                pytest.raises(co.StreamInterruptedError, match=r"response\.completed"):
            b"".join(response.iter_raw())


def test_a_bedrock_event_stream_is_not_guarded_but_its_reads_get_the_idle_limit():
    seen = {}

    def bedrock(request):
        seen["timeout"] = request.extensions.get("timeout")
        return httpx.Response(200, headers={"content-type": "application/vnd.amazon.eventstream"},
                              content=b"\x00\x00\x00\x10frames", request=request)

    limits = co.Timeouts(idle=7, first_token=2)
    coord = coordinator(pool("bedrock", A, timeouts=limits))
    with httpx.Client(transport=coord.transport("bedrock", inner=httpx.MockTransport(bedrock)),
                      base_url="http://bedrock.test", timeout=30) as client:
        response = client.post("/model/m/invoke-with-response-stream", json={"x": 1})
    assert response.content == b"\x00\x00\x00\x10frames", "passed on as it is: no SSE guard"
    assert response.request.extensions["timeout"]["read"] == 7, "idle (first_token means SSE content events)"


# -- context length and oversized requests move down the chain, cooling nothing ----------------------


@MODES
@pytest.mark.parametrize("behaviour", ["context_length", "too_large"])
def test_context_length_moves_to_the_next_pool_without_cooling(upstream, is_async, behaviour):
    upstream.set(A, behaviour)
    coord = coordinator(pool("small", A), pool("large", B), is_async=is_async)
    assert chat(openai_client(coord, upstream, ["small", "large"])) == TEXT
    assert (tries(upstream, A), tries(upstream, B)) == (1, 1)
    snap = run(coord.pool("small").snapshot())
    assert snap.member("small-1").available and snap.member("small-1").failures == 0
    assert snap.generation == 1, "nothing but the pool's creation"


def test_context_length_on_the_last_pool_raises_the_original_error(upstream):
    upstream.set(A, "context_length")
    upstream.set(B, "context_length")
    coord = coordinator(pool("small", A), pool("large", B))
    with pytest.raises(openai.BadRequestError) as info:
        chat(openai_client(coord, upstream, ["small", "large"]))
    assert info.value.code == "context_length_exceeded"
    assert (tries(upstream, A), tries(upstream, B)) == (1, 1)


# -- a near recovery beats a model fallback -----------------------------------------------------------


@MODES
def test_a_429_with_a_short_retry_after_waits_for_the_same_model(upstream, is_async):
    upstream.set(A, "first:1:rate_limited_retry_after", retry_after=1)
    coord = coordinator(pool("gpt", A, cooldown=co.CooldownPolicy(min=0.001)), pool("mini", B),
                        is_async=is_async)
    text, done = timed(chat, openai_client(coord, upstream, ["gpt", "mini"]))
    assert text == TEXT
    assert tries(upstream, A) == 2 and tries(upstream, B) == 0, "stayed on the model it asked for"
    assert upstream.times(A)[1] - upstream.times(A)[0] == pytest.approx(1.0, abs=0.5)
    assert done - upstream.times(A)[0] < 3.0


def test_a_far_recovery_falls_back_at_once(upstream):
    upstream.set(A, "rate_limited_retry_after", retry_after=20)
    coord = coordinator(pool("gpt", A), pool("mini", B))
    text, _ = timed(chat, openai_client(coord, upstream, ["gpt", "mini"]))
    assert text == TEXT and gap(upstream, A, B) < 2.0, "20 s is beyond wait_for_recovery: the fallback at once"
    assert (tries(upstream, A), tries(upstream, B)) == (1, 1)


def test_anthropic_529_gets_its_own_short_cooldown_not_the_429_ramp(upstream):
    upstream.set(A, "overloaded")
    cooldown = co.CooldownPolicy(transient_threshold=1)
    coord = coordinator(pool("claude", A, B, auth_header="x-api-key", cooldown=cooldown))
    assert message(anthropic_client(coord, upstream, "claude")) == TEXT
    snap = coord.pool("claude").snapshot()
    state = snap.member("claude-1")
    assert state.cooling_kind == "transient"
    assert state.cooling_until == pytest.approx(snap.now + cooldown.overloaded, abs=0.5)
    assert (tries(upstream, A), tries(upstream, B)) == (1, 1)


# -- member URLs ----------------------------------------------------------------------------------------


def test_a_member_base_url_ending_in_the_sdks_path_does_not_repeat_it(upstream):
    members = [co.Member(id="a", api_key=A, base_url=upstream.url + "/v1"),
               co.Member(id="b", api_key=B, base_url=upstream.url + "/openai/v1?api-version=2024-10-21")]
    coord = coordinator(co.PoolConfig(name="gpt", members=members))
    client = openai_client(coord, upstream, "gpt")
    assert chat(client) == TEXT
    coord.pool("gpt").park("a")
    assert chat(client) == TEXT
    assert upstream.stats.paths == {"/v1/chat/completions": 1,
                                    "/openai/v1/chat/completions?api-version=2024-10-21": 1}

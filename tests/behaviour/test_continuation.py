"""A stream that breaks after the caller started reading it: continued from an assistant prefill by
the next candidate member, spliced into the stream the caller reads (one whole answer, exactly once,
in the same event shapes), or the original ``StreamInterruptedError``; and the broken member's
failure reported once. Through the real openai and anthropic SDKs, sync and async, against the
loopback fake provider; each test asserts what the provider saw (attempts per member, the prefill it
received) and what the caller got."""

from __future__ import annotations

import asyncio
import uuid

import anthropic
import openai
import pytest
from test_resilience import ANTHROPIC_HTTP, MODES, OPENAI_HTTP, A, B, C, coordinator, pool, run, runner, tries, upstream

import coordinator as co

# The fake provider and the one event loop per test (autouse) are the resilience suite's fixtures.
__all__ = ["runner", "upstream"]  # the fixtures, imported so pytest finds them here


TEXT = "Hello from the fake upstream."
PIECES = ["Hello", " from", " the", " fake", " upstream."]
FAULTS = pytest.mark.parametrize("fault", ["cut", "stall", "malformed", "error_event"])


def claude_client(coord, upstream, chain):
    if coord.is_async:
        return anthropic.AsyncAnthropic(api_key="unused", base_url=upstream.url, max_retries=0,
                                        http_client=ANTHROPIC_HTTP.AsyncClient(transport=coord.transport(chain)))
    return anthropic.Anthropic(api_key="unused", base_url=upstream.url, max_retries=0,
                               http_client=ANTHROPIC_HTTP.Client(transport=coord.transport(chain)))


def gpt_client(coord, upstream, chain):
    if coord.is_async:
        return openai.AsyncOpenAI(api_key="unused", base_url=upstream.url + "/v1", max_retries=0, timeout=10,
                                  http_client=OPENAI_HTTP.AsyncClient(transport=coord.transport(chain)))
    return openai.OpenAI(api_key="unused", base_url=upstream.url + "/v1", max_retries=0, timeout=10,
                         http_client=OPENAI_HTTP.Client(transport=coord.transport(chain)))


def claude_stream(client, messages=None):
    """(text as the caller read it, the SDK's final message, the coordinator's record, events seen)."""
    kwargs = {"model": "claude-test", "max_tokens": 10, "messages": messages or [{"role": "user", "content": "x"}]}

    async def consume():
        async with client.messages.stream(**kwargs) as s:
            kinds, pieces = [], []
            async for event in s:
                kinds.append(event.type)
                if event.type == "text":
                    pieces.append(event.text)
            return "".join(pieces), await s.get_final_message(), s.response.extensions["coordinator"], kinds

    if isinstance(client, anthropic.AsyncAnthropic):
        return run(consume())
    with client.messages.stream(**kwargs) as s:
        kinds, pieces = [], []
        for event in s:
            kinds.append(event.type)
            if event.type == "text":
                pieces.append(event.text)
        return "".join(pieces), s.get_final_message(), s.response.extensions["coordinator"], kinds


def gpt_stream(client, got=None):
    """(the chunks as the caller read them, the coordinator's record); ``got`` collects text as it comes."""
    kwargs = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    got = [] if got is None else got

    async def consume():
        stream = await client.chat.completions.create(**kwargs)
        chunks = []
        async for chunk in stream:
            chunks.append(chunk)
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
        return chunks, stream.response.extensions["coordinator"]

    if isinstance(client, openai.AsyncOpenAI):
        return run(consume())
    stream = client.chat.completions.create(**kwargs)
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            got.append(chunk.choices[0].delta.content)
    return chunks, stream.response.extensions["coordinator"]


def claude_pool(name, *keys, **kwargs):
    return pool(name, *keys, auth_header="x-api-key", **kwargs)


# -- Anthropic Messages: continued by default ---------------------------------------------------------


@MODES
@FAULTS
def test_a_broken_anthropic_stream_is_finished_by_the_next_member_from_a_prefill(upstream, is_async, fault):
    upstream.set(A, fault, delay=3, events=4)  # message_start, content_block_start, "Hello", " from"
    coord = coordinator(claude_pool("claude", A, B), is_async=is_async)
    text, final, record, kinds = claude_stream(claude_client(coord, upstream, "claude"))

    assert text == TEXT, "one whole answer, nothing twice"
    assert (tries(upstream, A), tries(upstream, B)) == (1, 1)
    assert upstream.prefills(A) == [None] and upstream.prefills(B) == ["Hello from"], "the delivered text, once"
    assert kinds.count("message_start") == 1 and kinds.count("content_block_start") == 1
    assert kinds.count("content_block_stop") == 1 and kinds.count("message_stop") == 1
    assert final.id == "msg_fake" and [block.text for block in final.content] == [TEXT]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 4), "the continuation's usage"
    assert final.stop_reason == "end_turn"
    reason = {"cut": "incomplete", "stall": "stalled"}.get(fault, fault)
    assert record["continuations"] == [{"after": {"pool": "claude", "member": "claude-1", "reason": reason},
                                        "pool": "claude", "member": "claude-2", "prefill_chars": len("Hello from")}]
    assert record["tried"] == [{"pool": "claude", "member": "claude-1"}, {"pool": "claude", "member": "claude-2"}]
    snap = run(coord.pool("claude").snapshot())
    assert snap.member("claude-1").failures == 1, "the broken member's failure, reported once"


@MODES
def test_the_callers_own_prefill_is_extended_not_replaced(upstream, is_async):
    upstream.set(A, "cut", events=4)
    coord = coordinator(claude_pool("claude", A, B), is_async=is_async)
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure:"}]
    text, _, _, _ = claude_stream(claude_client(coord, upstream, "claude"), messages)
    assert upstream.prefills(A) == ["Sure:"]
    assert upstream.prefills(B) == ["Sure:Hello from"]
    assert text.startswith("Hello from")


@MODES
def test_a_continuation_that_breaks_too_is_continued_again(upstream, is_async):
    upstream.set(A, "cut", events=4)  # "Hello", " from"
    upstream.set(B, "cut", events=3)  # its own message_start and content_block_start, then " the"
    # Each break cools its member (threshold 1), so the pool's next candidate is one that did not break.
    coord = coordinator(claude_pool("claude", A, B, C, cooldown=co.CooldownPolicy(transient_threshold=1)),
                        is_async=is_async)
    text, final, record, _ = claude_stream(claude_client(coord, upstream, "claude"))
    assert text == TEXT and [block.text for block in final.content] == [TEXT]
    assert upstream.prefills(B) == ["Hello from"] and upstream.prefills(C) == ["Hello from the"]
    assert [c["member"] for c in record["continuations"]] == ["claude-2", "claude-3"]


@MODES
def test_a_member_that_broke_the_answer_is_not_asked_to_continue_it(upstream, is_async):
    upstream.set(A, "cut", events=4)
    upstream.set(B, "cut", events=3)
    # Threshold 3: one break does not cool claude-1, so after claude-2 breaks too the pool's next
    # candidate is claude-1 again, which broke this answer: the caller gets claude-2's error.
    coord = coordinator(claude_pool("claude", A, B, C), is_async=is_async)
    with pytest.raises(co.StreamInterruptedError) as info:
        claude_stream(claude_client(coord, upstream, "claude"))
    assert info.value.member == "claude-2"
    assert (tries(upstream, A), tries(upstream, B), tries(upstream, C)) == (1, 1, 0)
    snap = run(coord.pool("claude").snapshot())
    assert (snap.member("claude-1").failures, snap.member("claude-2").failures) == (1, 1), "each reported once"


@MODES
def test_the_continuation_goes_down_the_chain_when_the_pool_has_no_other_member(upstream, is_async):
    upstream.set(A, "cut", events=4)
    coord = coordinator(claude_pool("big", A), claude_pool("small", B), is_async=is_async)
    text, _, record, _ = claude_stream(claude_client(coord, upstream, ["big", "small"]))
    assert text == TEXT and upstream.prefills(B) == ["Hello from"]
    assert record["continuations"][0]["pool"] == "small"


@MODES
def test_a_member_that_refuses_the_prefill_never_replaces_the_real_error(upstream, is_async):
    upstream.set(A, "cut", events=4)
    upstream.set(B, "ok", prefill="reject")
    coord = coordinator(claude_pool("claude", A, B), is_async=is_async)
    client = claude_client(coord, upstream, "claude")
    with pytest.raises(co.StreamInterruptedError) as info:
        claude_stream(client)
    assert info.value.reason == "incomplete" and info.value.member == "claude-1"
    assert any("refused the prefill" in note for note in info.value.__notes__)
    assert upstream.prefills(B) == ["Hello from"], "asked once, with the prefill"
    with pytest.raises(co.StreamInterruptedError):
        claude_stream(client)
    assert tries(upstream, A) == 2 and tries(upstream, B) == 1, "a member that refused is not asked again"
    coord.close() if not is_async else run(coord.aclose())


@MODES
def test_continuation_off_gives_the_typed_error_and_reports_the_member_once(upstream, is_async):
    upstream.set(A, "cut", events=4)
    coord = coordinator(claude_pool("claude", A, B, continuation="off"), is_async=is_async)
    with pytest.raises(co.StreamInterruptedError) as info:
        claude_stream(claude_client(coord, upstream, "claude"))
    assert info.value.reason == "incomplete"
    assert (tries(upstream, A), tries(upstream, B)) == (1, 0)
    assert run(coord.pool("claude").snapshot()).member("claude-1").failures == 1


def test_a_member_setting_overrides_its_pools():
    members = [co.Member(id="a", api_key=A), co.Member(id="b", api_key=B, continuation="off")]
    cfg = co.PoolConfig(name="p", members=members, continuation="prefill")
    assert [cfg.continuation_of(m) for m in cfg.members] == ["prefill", "off"]
    with pytest.raises(ValueError, match="continuation"):
        co.PoolConfig(name="p", members=members, continuation="yes")


# -- OpenAI Chat Completions: off by default, on where the server declares it ---------------------------


@MODES
@FAULTS
def test_a_broken_chat_stream_is_continued_where_the_pool_declares_prefill(upstream, is_async, fault):
    upstream.set(A, fault, delay=3, events=3)  # "Hello", " from", " the"
    coord = coordinator(pool("gpt", A, B, continuation="prefill"), is_async=is_async)
    chunks, record = gpt_stream(gpt_client(coord, upstream, "gpt"))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    assert upstream.prefills(B) == ["Hello from the"]
    assert {c.id for c in chunks} == {"chatcmpl-fake"}, "the first stream's id throughout"
    assert [c.choices[0].delta.role for c in chunks].count("assistant") == 1, "one role chunk"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert record["continuations"][0]["member"] == "gpt-2"


@MODES
@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_by_default_a_broken_chat_stream_raises_and_counts_toward_the_cooldown(upstream, is_async, fault):
    upstream.set(A, fault, delay=3, events=3)
    coord = coordinator(pool("gpt", A, B, cooldown=co.CooldownPolicy(transient_threshold=1)), is_async=is_async)
    got: list[str] = []
    with pytest.raises(co.StreamInterruptedError):
        gpt_stream(gpt_client(coord, upstream, "gpt"), got)
    assert got == PIECES[:3]
    assert (tries(upstream, A), tries(upstream, B)) == (1, 0), "never replayed, never continued"
    snap = run(coord.pool("gpt").snapshot())
    state = snap.member("gpt-1")
    assert state.cooling_kind == "transient" and state.cooling_until == pytest.approx(snap.now + 5, abs=1)
    assert snap.active == "gpt-2", "the next request goes to the next member"


# -- what a continuation candidate may answer -----------------------------------------------------------


@MODES
@pytest.mark.parametrize("behaviour", ["context_length", "bad_request"])
def test_a_candidate_that_answers_with_an_error_leaves_the_caller_the_original_error(upstream, is_async, behaviour):
    upstream.set(A, "cut", events=4)
    upstream.set(B, behaviour)  # a 400 that is not about the prefill and cools nobody
    coord = coordinator(claude_pool("claude", A, B), is_async=is_async)
    with pytest.raises(co.StreamInterruptedError) as info:
        claude_stream(claude_client(coord, upstream, "claude"))
    assert info.value.reason == "incomplete" and info.value.member == "claude-1"
    assert any("not continued" in note and "HTTP 400" in note for note in info.value.__notes__)
    assert upstream.prefills(B) == ["Hello from"], "asked once, with the prefill"
    assert upstream.stats.statuses[(B, 400)] == 1
    snap = run(coord.pool("claude").snapshot())
    assert (snap.member("claude-1").failures, snap.member("claude-2").failures) == (1, 0)


# -- failure counts of streams that break after the hand-over ------------------------------------------


@MODES
def test_a_member_whose_streams_always_break_is_cooled_at_its_threshold(upstream, is_async):
    upstream.set(A, "cut", events=4)
    coord = coordinator(claude_pool("claude", A, B, continuation="off",
                                    cooldown=co.CooldownPolicy(transient_threshold=4)), is_async=is_async)
    client = claude_client(coord, upstream, "claude")
    for broken in range(1, 5):
        with pytest.raises(co.StreamInterruptedError):
            claude_stream(client)
        state = run(coord.pool("claude").snapshot()).member("claude-1")
        assert tries(upstream, A) == broken
        if broken < 4:
            assert (state.failures, state.cooling_kind) == (broken, ""), "each break adds to the run"
    assert state.cooling_kind == "transient", "the fourth break in a row cools it"
    claude_stream(client)
    assert (tries(upstream, A), tries(upstream, B)) == (4, 1)


class _Spy:
    """An inner transport that forwards to the real one and notes, when a continuation goes out, what
    the caller's request object (the first one it forwarded) carried at that moment."""

    def __init__(self, real):
        self.real, self.first, self.seen = real, None, []

    def _look(self, request):
        if self.first is None:
            self.first = request
        elif b'"role":"assistant"' in b"".join(request.stream):
            held = sorted(value for value in self.first.headers.values() if value.startswith("sk-"))
            self.seen.append((request is self.first, held, request.headers.get("x-api-key")))

    def handle_request(self, request):
        self._look(request)
        return self.real.handle_request(request)

    async def handle_async_request(self, request):
        self._look(request)
        return await self.real.handle_async_request(request)


@MODES
def test_a_continuation_never_puts_a_members_secret_on_the_callers_request(upstream, is_async):
    upstream.set(A, "cut", events=4)
    coord = coordinator(claude_pool("claude", A, B), is_async=is_async)
    spy = _Spy(ANTHROPIC_HTTP.AsyncHTTPTransport() if is_async else ANTHROPIC_HTTP.HTTPTransport())
    http = (ANTHROPIC_HTTP.AsyncClient if is_async else ANTHROPIC_HTTP.Client)(
        transport=coord.transport("claude", inner=spy))
    client = (anthropic.AsyncAnthropic if is_async else anthropic.Anthropic)(
        api_key="unused", base_url=upstream.url, max_retries=0, http_client=http)
    text, _, record, _ = claude_stream(client)
    assert text == TEXT and record["continuations"][0]["member"] == "claude-2"
    assert upstream.prefills(B) == ["Hello from"]
    assert spy.seen == [(False, [], B)], "a request of its own; the caller's holds no member's secret meanwhile"


@MODES
def test_a_break_is_reported_under_its_attempts_token_not_the_pools_current_one(upstream, is_async):
    """The pool's state is re-created (a new epoch) while the stream runs: the break's report carries
    the old epoch's token, so it moves nothing and cools nobody (docs/design.md, "Tokens and
    exactly-once events")."""
    upstream.set(A, "cut", events=4)
    coord = coordinator(claude_pool("claude", A, B, continuation="off",
                                    cooldown=co.CooldownPolicy(transient_threshold=1)), is_async=is_async)
    client = claude_client(coord, upstream, "claude")
    kwargs = {"model": "claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    before = run(coord.pool("claude").snapshot()).epoch

    async def consume():
        async with client.messages.stream(**kwargs) as s:
            async for event in s:
                if event.type == "text":
                    await coord.pool("claude").reset("state lost")

    def consume_sync():
        with client.messages.stream(**kwargs) as s:
            for event in s:
                if event.type == "text":
                    coord.pool("claude").reset("state lost")

    with pytest.raises(co.StreamInterruptedError) as info:
        run(consume()) if is_async else consume_sync()
    assert info.value.member == "claude-1" and tries(upstream, A) == 1
    snap = run(coord.pool("claude").snapshot())
    assert snap.epoch != before
    state = snap.member("claude-1")
    assert (state.failures, state.cooling_kind) == (0, ""), "a token of the old epoch moves nothing"
    assert snap.active == "claude-1"


class _Unstreamed(_Spy):
    """Sends the continuation with ``"stream": false``: the provider answers it with a 200 JSON body."""

    def _look(self, request):
        super()._look(request)
        body = b"".join(request.stream)
        if b'"role":"assistant"' in body:
            body = body.replace(b'"stream":true', b'"stream":false')
            request.stream = type(request.stream)(body)
            request.headers["content-length"] = str(len(body))


@MODES
def test_a_candidate_that_answers_with_a_2xx_that_is_no_event_stream_leaves_the_original_error(upstream, is_async):
    upstream.set(A, "cut", events=4)
    coord = coordinator(claude_pool("claude", A, B), is_async=is_async)
    spy = _Unstreamed(ANTHROPIC_HTTP.AsyncHTTPTransport() if is_async else ANTHROPIC_HTTP.HTTPTransport())
    http = (ANTHROPIC_HTTP.AsyncClient if is_async else ANTHROPIC_HTTP.Client)(
        transport=coord.transport("claude", inner=spy))
    client = (anthropic.AsyncAnthropic if is_async else anthropic.Anthropic)(
        api_key="unused", base_url=upstream.url, max_retries=0, http_client=http)
    with pytest.raises(co.StreamInterruptedError) as info:
        claude_stream(client)
    assert info.value.member == "claude-1"
    assert any("HTTP 200 'application/json'" in note for note in info.value.__notes__)
    assert upstream.prefills(B) == ["Hello from"] and upstream.stats.statuses[(B, 200)] == 1


# -- the hand-over's success and the break's report (docs/design.md, "Failure counts") ---------------

KWARGS = {"model": "claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}


def test_a_success_noted_while_a_hand_over_is_reported_is_not_taken_back_by_the_break(upstream):
    """Task B's stream is handed over and its success goes to Redis; while B awaits the reply, a
    failure report of ours there goes out and then task A succeeds on the same member. B's break later
    takes back B's success only, never A's: A served, so the break's report restarts the failure count
    that another worker's failure had started meanwhile."""
    upstream.set(A, "cut", events=4)
    url = f"memory://{uuid.uuid4().hex}"
    cfg = claude_pool("claude", A, B, continuation="off", cooldown=co.CooldownPolicy(transient_threshold=3))

    async def scenario():
        # Staleness 0: no decision is reused, so every success of ours is reported to Redis.
        coord, other = co.AsyncCoordinator(url, [cfg], staleness=0), co.AsyncCoordinator(url, [cfg])
        ours, theirs = coord.pool("claude"), other.pool("claude")
        await theirs.report_failure(await theirs.acquire(), "transient")
        in_gap, go_on = asyncio.Event(), asyncio.Event()
        send = ours._run

        async def held(op):  # B's report_success answers only once A has served
            result = await send(op)
            if op.script == "report_success" and not in_gap.is_set():
                in_gap.set()
                await go_on.wait()
            return result

        ours._run = held
        client = claude_client(coord, upstream, "claude")

        async def stream_b():
            async with client.messages.stream(**KWARGS) as s:
                async for _ in s:
                    pass

        b = asyncio.ensure_future(stream_b())
        await in_gap.wait()
        # Our own failure report there takes B's success with it: nothing is noted before A's now.
        await ours.report_failure(await ours.acquire(), "transient")
        assert await coord.call("claude", lambda member: member.id) == "claude-1"  # A served there
        counted = await theirs.report_failure(await theirs.acquire(), "transient")
        assert counted.failures == 1
        go_on.set()
        with pytest.raises(co.StreamInterruptedError):
            await b
        return await ours.snapshot()

    state = run(scenario()).member("claude-1")
    assert tries(upstream, A) == 1
    assert (state.failures, state.cooling_kind) == (1, ""), "A's success restarted the count at B's break"


def _coordinators(url, cfg, is_async, **options):
    """Two workers on one store: ours (with ``options``) and another."""
    if not is_async:
        return co.Coordinator(url, [cfg], **options), co.Coordinator(url, [cfg])

    async def build():
        return co.AsyncCoordinator(url, [cfg], **options), co.AsyncCoordinator(url, [cfg])

    return run(build())


def _stream(client, is_async):
    async def consume():
        async with client.messages.stream(**KWARGS) as s:
            async for _ in s:
                pass

    def consume_sync():
        with client.messages.stream(**KWARGS) as s:
            for _ in s:
                pass

    return run(consume()) if is_async else consume_sync()


def _caller_error(error):
    if isinstance(error, co.StreamInterruptedError):
        return co.Failure(kind="request", message="the caller's own doing")
    return None


@MODES
def test_a_break_that_is_not_reported_keeps_its_hand_overs_success(upstream, is_async):
    """The coordinator's classifier says the break is no cooling failure: nothing is reported, so
    nothing is taken back. The member served (as far as the fleet will ever hear), and this worker's
    next failure report there restarts the run another worker's failure had started."""
    upstream.set(A, "cut", events=4)
    cfg = claude_pool("claude", A, B, continuation="off", cooldown=co.CooldownPolicy(transient_threshold=3))
    coord, other = _coordinators(f"memory://{uuid.uuid4().hex}", cfg, is_async, classifier=_caller_error)
    with pytest.raises(co.StreamInterruptedError):
        _stream(claude_client(coord, upstream, "claude"), is_async)
    theirs, ours = other.pool("claude"), coord.pool("claude")
    assert run(theirs.report_failure(run(theirs.acquire()), "transient")).failures == 1
    result = run(ours.report_failure(run(ours.acquire()), "transient"))
    assert tries(upstream, A) == 1
    assert (result.failures, result.cooled) == (1, False), "the stream's success restarted the count"


def test_a_break_whose_attempts_token_is_unknown_is_logged_not_reported(upstream, monkeypatch, caplog):
    """A transport used by a caller that does not say its attempts' tokens (``ATTEMPT_SELECTION``
    never set): the break cannot be reported under its own token, so it is not; a DEBUG line says so."""
    from contextvars import ContextVar

    import coordinator.transport.failover as failover

    monkeypatch.setattr(failover, "ATTEMPT_SELECTION", ContextVar("never_set", default=None))
    upstream.set(A, "cut", events=4)
    coord = coordinator(claude_pool("claude", A, B, continuation="off",
                                    cooldown=co.CooldownPolicy(transient_threshold=1)))
    with caplog.at_level("DEBUG", logger="coordinator.transport"), pytest.raises(co.StreamInterruptedError):
        _stream(claude_client(coord, upstream, "claude"), False)
    assert (coord.pool("claude").snapshot().member("claude-1").failures, tries(upstream, A)) == (0, 1)
    said = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG" and r.name == "coordinator.transport"]
    assert any("'claude'" in line and "'claude-1'" in line and "not reported" in line for line in said)


def test_a_member_that_passed_its_probe_by_a_stream_that_broke_is_cooled_again(upstream):
    """Priority failback: claude-1's half-open probe is a stream; its hand-over's success fails back
    (a new generation). The stream then breaks: the break is reported under the token of that success
    (the one claude-1 is active under now), not the probe's older one, so it is not stale and
    claude-1, which has not served after all, is cooled again."""
    from helpers import fast_policy, wait_until_available

    upstream.set(A, "cut", events=4)
    coord = coordinator(claude_pool("claude", A, B, strategy="priority", continuation="off",
                                    cooldown=fast_policy(transient_threshold=1, transient=30.0)))
    pool = coord.pool("claude")
    pool.report_failure(pool.acquire(), "rate_limited", retry_after=0.03)
    assert pool.snapshot().active == "claude-2"
    wait_until_available(pool, "claude-1")
    with pytest.raises(co.StreamInterruptedError) as info:
        _stream(claude_client(coord, upstream, "claude"), False)
    assert info.value.member == "claude-1" and tries(upstream, A) == 1
    snap = pool.snapshot()
    assert snap.member("claude-1").cooling_kind == "transient", "the break counted"
    assert snap.active == "claude-2"

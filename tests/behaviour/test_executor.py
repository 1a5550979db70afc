"""The failover executor, ``coord.call``: one behaviour suite on real Redis and memory://, sync and async
(the ``backend`` fixture; here also through the local view at the default staleness), plus explicit
asyncio tests for what only async has (coroutines, async iterators, task cancellation). Sleeps are
injected and recorded; nothing here waits for real except where server time itself must pass."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import CELLS, VIEW_CELLS, Backend, make_backend
from helpers import fast_policy, members, pool_config, wait_until_available
from provider_errors import anthropic_error, httpx_response, openai_error, rate_limited, server_error
from pydantic import SecretStr

import coordinator as co
from coordinator.rules.plan import Acquire, Attempt, CallPlan, Outcome, Raise, ReadSnapshot, ReportFailure


@pytest.fixture(params=CELLS + VIEW_CELLS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The matrix, plus cells where acquire decisions come from the local view, as in production."""
    yield from make_backend(request)


class FakeTime:
    """An injected clock and sleep: sleeping records the delay and moves the clock, nothing waits."""

    def __init__(self, on_sleep: Any = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class Script:
    """``fn`` for ``coord.call``: per member id, a list of outcomes consumed in order (an exception to
    raise or a value to return); the last one repeats. Records the member of every call."""

    def __init__(self, plan: dict[str, list[Any]], default: Any = "ok") -> None:
        self.plan = {key: list(value) for key, value in plan.items()}
        self.default = default
        self.calls: list[str] = []

    def __call__(self, member: co.Member) -> Any:
        self.calls.append(member.id)
        outcomes = self.plan.get(member.id)
        outcome = (outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]) if outcomes else self.default
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def frozen(snapshot: co.Snapshot) -> co.Snapshot:
    """A snapshot without its read time, to compare state before and after."""
    return dataclasses.replace(snapshot, now=0.0)


def call(coord: Any, pools: Any, fn: Any, fake: FakeTime | None = None, **kwargs: Any) -> Any:
    fake = fake or FakeTime()
    return coord.call(pools, fn, sleep=fake.sleep, clock=fake.clock, **kwargs)


# -- rotation costs no retry ----------------------------------------------------------------------


def test_ten_keys_nine_rate_limited_succeed_on_the_tenth(backend: Any) -> None:
    coord = backend.coordinator(pool_config(10))
    fn = Script({f"k{i}": [rate_limited(30)] for i in range(9)}, default="answer")
    fake = FakeTime()

    assert call(coord, "p", fn, fake, max_retries=1) == "answer"

    assert fn.calls == [f"k{i}" for i in range(10)]
    assert fake.sleeps == []
    snap = coord.pool("p").snapshot()
    assert snap.active == "k9"
    assert [m.id for m in snap.members if not m.available] == [f"k{i}" for i in range(9)]
    assert {m.cooling_kind for m in snap.members[:9]} == {"rate_limited"}
    assert 25 < snap.members[0].cooling_until - snap.now <= 30  # the provider's retry-after, not the base


def test_auth_advances_at_once_and_cools_with_the_auth_cooldown(backend: Any) -> None:
    cfg = pool_config(3, cooldown=co.CooldownPolicy(auth=120, rate_limited=5))
    coord = backend.coordinator(cfg)
    fn = Script({"k0": [openai_error(401, "invalid_api_key", "Incorrect API key provided")]})
    fake = FakeTime()

    assert call(coord, "p", fn, fake) == "ok"

    assert fn.calls == ["k0", "k1"]  # never retried on the same key
    assert fake.sleeps == []
    snap = coord.pool("p").snapshot()
    k0 = snap.member("k0")
    assert k0.cooling_kind == "auth"
    assert 115 < k0.cooling_until - snap.now <= 120
    assert snap.active == "k1"


@pytest.mark.parametrize(
    "error",
    [
        openai_error(400, None, "'messages' is a required property"),
        openai_error(400, "context_length_exceeded", "This model's maximum context length is 128000 tokens."),
        openai_error(400, "content_policy_violation", "Your request was rejected by our safety system."),
        anthropic_error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
    ],
    ids=["request", "context_length", "content_policy", "anthropic_context_length"],
)
def test_caller_errors_reraise_the_same_exception_and_touch_nothing(backend: Any, error: Exception) -> None:
    coord = backend.coordinator(pool_config(3))
    pool = coord.pool("p")
    pool.acquire()  # create the state, so "unchanged" compares two real states
    before = frozen(pool.snapshot())
    events_before = pool.events()
    fn = Script({"k0": [error]})

    with pytest.raises(type(error)) as excinfo:
        call(coord, "p", fn)

    assert excinfo.value is error
    assert fn.calls == ["k0"]
    assert frozen(pool.snapshot()) == before
    assert pool.events() == events_before


# -- transient errors: same member, full-jitter backoff ------------------------------------------------


def test_503_then_success_retries_the_same_member(backend: Any) -> None:
    coord = backend.coordinator(pool_config(3))
    fn = Script({"k0": [server_error(503), "ok"]})
    fake = FakeTime()

    assert call(coord, "p", fn, fake) == "ok"

    assert fn.calls == ["k0", "k0"]
    assert len(fake.sleeps) == 1 and 0 <= fake.sleeps[0] < 0.2
    snap = coord.pool("p").snapshot()
    assert snap.active == "k0"
    assert snap.member("k0").available
    assert snap.member("k0").failures == 0  # the success reset the fleet-wide counter


def test_transient_retries_then_moves_on_and_the_fleet_counter_cools(backend: Any) -> None:
    cfg = pool_config(3, attempts_per_member=3, cooldown=co.CooldownPolicy(transient_threshold=3))
    coord = backend.coordinator(cfg)
    fn = Script({"k0": [server_error(502)]})
    fake = FakeTime()

    assert call(coord, "p", fn, fake) == "ok"

    assert fn.calls == ["k0", "k0", "k0", "k1"]
    assert len(fake.sleeps) == 2
    snap = coord.pool("p").snapshot()
    assert snap.member("k0").cooling_kind == "transient"
    assert snap.active == "k1"


def test_transient_below_threshold_moves_on_without_cooling(backend: Any) -> None:
    # Two failed tries leave k0 available (threshold 3, counted fleet-wide); the pointer stays on it,
    # so the executor must pick the next untried member itself.
    cfg = pool_config(3, attempts_per_member=2, cooldown=co.CooldownPolicy(transient_threshold=3))
    coord = backend.coordinator(cfg)
    fn = Script({"k0": [httpx.RemoteProtocolError("server disconnected")]})

    assert call(coord, "p", fn) == "ok"

    assert fn.calls == ["k0", "k0", "k1"]
    snap = coord.pool("p").snapshot()
    assert snap.member("k0").available
    assert snap.member("k0").failures == 2
    assert snap.active == "k0"


def test_a_timeout_is_not_retried_on_the_same_member_but_counted(backend: Any) -> None:
    # A silent route stays silent: the next member at once, the silent one counted toward its cooldown.
    cfg = pool_config(3, attempts_per_member=3, cooldown=co.CooldownPolicy(transient_threshold=3))
    coord = backend.coordinator(cfg)
    fn = Script({"k0": [httpx.ReadTimeout("timed out")], "k1": [httpx.ConnectTimeout("timed out")]})

    assert call(coord, "p", fn) == "ok"

    assert fn.calls == ["k0", "k1", "k2"]
    snap = coord.pool("p").snapshot()
    assert (snap.member("k0").failures, snap.member("k1").failures) == (1, 1)


def test_backoff_is_full_jitter_within_bounds(backend: Any) -> None:
    cfg = pool_config(
        1,
        attempts_per_member=6,
        backoff_base=0.2,
        backoff_cap=1.0,
        cooldown=co.CooldownPolicy(transient_threshold=100),
    )
    coord = backend.coordinator(cfg)

    fake = FakeTime()
    with pytest.raises(co.AllMembersFailedError):
        call(coord, "p", Script({"k0": [server_error()]}), fake, rng=FixedRandom(0.5))
    # uniform(0, min(cap, base * 2**(n-1))) at its midpoint
    assert fake.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])

    fake = FakeTime()
    with pytest.raises(co.AllMembersFailedError):
        call(coord, "p", Script({"k0": [server_error()]}), fake, rng=random.Random(1234))
    ceilings = [0.2, 0.4, 0.8, 1.0, 1.0]
    assert len(fake.sleeps) == 5
    assert all(0 <= slept < ceiling for slept, ceiling in zip(fake.sleeps, ceilings, strict=True))
    assert len(set(fake.sleeps)) == 5  # jittered, not a fixed schedule


def test_transient_retry_after_stretches_the_backoff(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2, backoff_cap=5))
    busy = openai_error(503, None, "busy", "server_error", {"retry-after": "3"})
    fake = FakeTime()

    assert call(coord, "p", Script({"k0": [busy, "ok"]}), fake, rng=FixedRandom(0.0)) == "ok"
    assert fake.sleeps == [3.0]


def test_transient_retry_after_beyond_the_cap_moves_on(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2, backoff_cap=5))
    busy = openai_error(503, None, "busy", "server_error", {"retry-after": "60"})
    fn = Script({"k0": [busy]})
    fake = FakeTime()

    assert call(coord, "p", fn, fake) == "ok"
    assert (fn.calls, fake.sleeps) == (["k0", "k1"], [])


def test_round_robin_tries_each_member_once_per_pass(backend: Any) -> None:
    # Transient failures below the threshold leave every member available, so acquire keeps offering
    # members this pass already tried; each must still be tried exactly once.
    cfg = pool_config(3, strategy="round_robin", attempts_per_member=1)
    coord = backend.coordinator(cfg)
    fn = Script({}, default=server_error(500))

    with pytest.raises(co.AllMembersFailedError) as excinfo:
        call(coord, "p", fn)

    assert sorted(fn.calls) == ["k0", "k1", "k2"]
    assert [(c.member, c.attempts) for c in excinfo.value.causes] == [(m, 1) for m in fn.calls]


def test_priority_probe_success_fails_back_and_is_reported_once(backend: Any) -> None:
    cfg = pool_config(2, strategy="priority", cooldown=fast_policy())
    coord = backend.coordinator(cfg)
    blip = openai_error(429, "rate_limit_exceeded", "slow down", "requests", {"retry-after-ms": "30"})
    events: list[Any] = []

    assert call(coord, "p", Script({"k0": [blip, "ok"]}), hooks=[events.append]) == "ok"
    wait_until_available(coord.pool("p"), "k0")
    assert call(coord, "p", Script({}), hooks=[events.append]) == "ok"  # the half-open probe of k0

    transitions = [(e.source, e.events, e.member) for e in events if isinstance(e, co.TransitionEvent)]
    assert transitions == [("failure", ("failover",), "k0"), ("success", ("failback",), "k0")]
    assert coord.pool("p").snapshot().active == "k0"


# -- chains and whole-pool failures ------------------------------------------------------------------


def test_chain_tries_pools_in_order(backend: Any) -> None:
    gpt = co.PoolConfig(name="gpt", members=members(2, "g"))
    claude = co.PoolConfig(name="claude", members=members(2, "c"))
    coord = backend.coordinator(gpt, claude)
    fn = Script(
        {"g0": [rate_limited(30)], "g1": [openai_error(429, "insufficient_quota", "quota", "insufficient_quota")]}
    )

    assert call(coord, ["gpt", "claude"], fn) == "ok"
    assert fn.calls == ["g0", "g1", "c0"]
    assert coord.pool("gpt").snapshot().exhausted


def test_model_unavailable_skips_the_rest_of_the_pool(backend: Any) -> None:
    gpt = co.PoolConfig(name="gpt", members=members(3, "g"))
    claude = co.PoolConfig(name="claude", members=members(1, "c"))
    coord = backend.coordinator(gpt, claude)
    missing = openai_error(404, "model_not_found", "The model `gpt-9` does not exist")
    fn = Script({"g0": [missing]})

    assert call(coord, ["gpt", "claude"], fn) == "ok"
    assert fn.calls == ["g0", "c0"]
    snap = coord.pool("gpt").snapshot()
    assert snap.skipped_until is not None and snap.skipped_until > snap.now

    fn.calls.clear()
    assert call(coord, ["gpt", "claude"], fn) == "ok"
    assert fn.calls == ["c0"]  # the skipped pool costs no request


def test_everything_failed_lists_every_cause_with_retry_at(backend: Any) -> None:
    gpt = co.PoolConfig(name="gpt", members=members(2, "g"))
    claude = co.PoolConfig(name="claude", members=members(1, "c"))
    coord = backend.coordinator(gpt, claude)
    last = anthropic_error(529, "overloaded_error", "Overloaded")
    fn = Script(
        {
            "g0": [rate_limited(40)],
            "g1": [openai_error(401, "invalid_api_key", "bad key")],
            "c0": [last],
        }
    )

    with pytest.raises(co.AllMembersFailedError) as excinfo:
        call(coord, ["gpt", "claude"], fn, max_retries=0)

    error = excinfo.value
    assert isinstance(error, co.CoordinatorError)
    assert [(c.pool, c.member, c.failure.kind if c.failure else None) for c in error.causes] == [
        ("gpt", "g0", "rate_limited"),
        ("gpt", "g1", "auth"),
        ("gpt", None, None),  # then the pool was exhausted
        ("claude", "c0", "transient"),
    ]
    assert error.causes[3].error is last
    assert error.__cause__ is last
    assert error.pools == ("gpt", "claude")
    assert not error.timed_out
    # c0 failed transiently but was not cooled (threshold 3): the chain can serve again right away.
    snap = coord.pool("claude").snapshot()
    assert error.retry_at is not None and abs(error.retry_at - snap.now) < 5
    for text in ("gpt/g0: rate_limited", "gpt/g1: auth", "claude/c0: transient"):
        assert text in str(error)


# -- exhausted pools: wait, fail, degraded -------------------------------------------------------------


def test_one_key_pool_waits_for_a_short_retry_after(backend: Any) -> None:
    coord = backend.coordinator(pool_config(1))
    state_key = backend.keys("p")[0]

    def pass_time(seconds: float) -> None:
        # The store's clock is Redis TIME; let the recorded wait "pass" by ending the cooldown.
        backend.raw.hset(state_key, "k0:cooling_until", 1)

    fake = FakeTime(on_sleep=pass_time)
    fn = Script({"k0": [rate_limited(2), "ok"]})

    assert call(coord, "p", fn, fake) == "ok"

    assert fn.calls == ["k0", "k0"]
    assert len(fake.sleeps) == 1 and 1.5 < fake.sleeps[0] <= 2.0


def test_one_key_pool_waits_on_the_real_clock(backend: Any) -> None:
    coord = backend.coordinator(pool_config(1, cooldown=co.CooldownPolicy(min=0)))
    blip = openai_error(429, "rate_limit_exceeded", "slow down", "requests", {"retry-after-ms": "150"})
    fn = Script({"k0": [blip, "ok"]})
    started = time.monotonic()

    assert coord.call("p", fn) == "ok"

    assert fn.calls == ["k0", "k0"]
    assert 0.1 < time.monotonic() - started < 3


def test_one_key_pool_fails_fast_for_a_long_retry_after(backend: Any) -> None:
    coord = backend.coordinator(pool_config(1))
    fn = Script({"k0": [rate_limited(3600)]})
    fake = FakeTime()

    with pytest.raises(co.AllMembersFailedError) as excinfo:
        call(coord, "p", fn, fake)

    assert fn.calls == ["k0"]
    assert fake.sleeps == []
    snap = coord.pool("p").snapshot()
    assert excinfo.value.retry_at == pytest.approx(snap.member("k0").cooling_until)
    assert 3590 < excinfo.value.retry_at - snap.now <= 3600


def test_wait_is_bounded_by_the_deadline(backend: Any) -> None:
    coord = backend.coordinator(pool_config(1))
    fn = Script({"k0": [rate_limited(5)]})
    fake = FakeTime()

    with pytest.raises(co.AllMembersFailedError):
        call(coord, "p", fn, fake, deadline=3)
    assert fake.sleeps == []


def test_on_exhausted_fail_raises_at_once_with_retry_at(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2, on_exhausted="fail"))
    pool = coord.pool("p")
    pool.park("k0", seconds=30, reason="test")
    pool.park("k1", seconds=60, reason="test")
    fn = Script({})

    with pytest.raises(co.AllMembersFailedError) as excinfo:
        call(coord, "p", fn)

    assert fn.calls == []
    snap = pool.snapshot()
    assert excinfo.value.retry_at == pytest.approx(snap.member("k0").parked_until)
    assert [str(c) for c in excinfo.value.causes] == ["p: exhausted"]


def test_on_exhausted_degraded_tries_the_soonest_member(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2, on_exhausted="degraded"))
    pool = coord.pool("p")
    pool.park("k0", seconds=60, reason="test")
    pool.park("k1", seconds=30, reason="test")
    fn = Script({})
    events: list[Any] = []

    assert call(coord, "p", fn, hooks=[events.append]) == "ok"

    assert fn.calls == ["k1"]
    attempts = [e for e in events if isinstance(e, co.AttemptEvent)]
    assert [(e.member, e.degraded, e.ok) for e in attempts] == [("k1", True, True)]


def test_members_parked_until_unparked_have_no_retry_at(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2))
    coord.pool("p").park("k0")
    coord.pool("p").park("k1")

    with pytest.raises(co.AllMembersFailedError) as excinfo:
        call(coord, "p", Script({}))
    assert excinfo.value.retry_at is None
    assert "parked" in str(excinfo.value)


def test_deadline_ends_the_call(backend: Any) -> None:
    coord = backend.coordinator(pool_config(3))
    fake = FakeTime()

    def slow_then_limited(member: co.Member) -> str:
        fake.now += 5  # the request itself took five seconds
        raise rate_limited(30)

    with pytest.raises(co.AllMembersFailedError) as excinfo:
        call(coord, "p", slow_then_limited, fake, deadline=2)
    assert excinfo.value.timed_out
    assert [c.member for c in excinfo.value.causes] == ["k0"]

    with pytest.raises(co.AllMembersFailedError) as excinfo:
        call(coord, "p", Script({}), deadline=0)
    assert excinfo.value.timed_out and excinfo.value.causes == ()


# -- cancellation ------------------------------------------------------------------------------------


def test_keyboard_interrupt_propagates_and_touches_nothing(backend: Any) -> None:
    coord = backend.coordinator(pool_config(3))
    pool = coord.pool("p")
    pool.acquire()
    before = frozen(pool.snapshot())
    interrupt = KeyboardInterrupt()
    fn = Script({"k0": [interrupt]})
    events: list[Any] = []

    with pytest.raises(KeyboardInterrupt) as excinfo:
        call(coord, "p", fn, hooks=[events.append])

    assert excinfo.value is interrupt
    assert fn.calls == ["k0"]
    assert frozen(pool.snapshot()) == before
    assert events == []


# -- streams -----------------------------------------------------------------------------------------


def test_stream_failing_before_its_first_chunk_fails_over(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2))
    started: list[str] = []

    def stream(member: co.Member) -> Iterator[str]:
        started.append(member.id)
        if member.id == "k0":
            raise rate_limited(30)
        yield from ("Hel", "lo")

    assert list(call(coord, "p", stream)) == ["Hel", "lo"]
    assert started == ["k0", "k1"]
    assert not coord.pool("p").snapshot().member("k0").available


def test_stream_failing_after_its_first_chunk_surfaces_as_is(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2))
    broken = rate_limited(30)
    started: list[str] = []

    def stream(member: co.Member) -> Iterator[str]:
        started.append(member.id)
        yield "Hel"
        raise broken

    chunks = call(coord, "p", stream)
    assert next(chunks) == "Hel"
    with pytest.raises(openai.RateLimitError) as excinfo:
        next(chunks)

    assert excinfo.value is broken
    assert started == ["k0"]
    snap = coord.pool("p").snapshot()
    assert snap.member("k0").available and snap.active == "k0"


def test_empty_stream_is_a_success(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2))
    assert list(call(coord, "p", lambda member: iter(()))) == []


def test_closing_the_stream_closes_the_source(backend: Any) -> None:
    coord = backend.coordinator(pool_config(1))
    closed: list[bool] = []
    sources: list[Iterator[int]] = []  # held, so only an explicit close can run the finally

    def numbers() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    def stream(member: co.Member) -> Iterator[int]:
        sources.append(numbers())
        return sources[-1]

    chunks = call(coord, "p", stream)
    assert next(chunks) == 0
    chunks.close()
    assert closed == [True]


# -- responses returned instead of raised ------------------------------------------------------------


def test_returned_error_response_fails_over_and_is_closed(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2))
    limited = httpx_response(429, headers={"retry-after": "30"})
    good = httpx_response(200, json={"ok": True})
    fn = Script({"k0": [limited], "k1": [good]})

    assert call(coord, "p", fn) is good
    assert limited.is_closed
    assert coord.pool("p").snapshot().member("k0").cooling_kind == "rate_limited"


def test_returned_bad_request_response_is_handed_back_untouched(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2))
    pool = coord.pool("p")
    pool.acquire()
    before = frozen(pool.snapshot())
    bad = httpx_response(400, json={"error": {"message": "bad", "type": "invalid_request_error"}})

    assert call(coord, "p", Script({"k0": [bad]})) is bad
    assert frozen(pool.snapshot()) == before


def test_spent_window_on_success_cools_the_member_before_any_429(backend: Any) -> None:
    coord = backend.coordinator(pool_config(2))
    last_one = httpx_response(
        200, json={"ok": True}, headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}
    )
    events: list[Any] = []

    assert call(coord, "p", Script({"k0": [last_one]}), hooks=[events.append]) is last_one

    snap = coord.pool("p").snapshot()
    assert snap.active == "k1"
    assert 15 < snap.member("k0").cooling_until - snap.now <= 20
    transitions = [e for e in events if isinstance(e, co.TransitionEvent)]
    assert [(t.source, t.member, t.active) for t in transitions] == [("preemptive", "k0", "k1")]


# -- hooks -------------------------------------------------------------------------------------------


def test_attempt_events_describe_each_attempt(backend: Any) -> None:
    coord = backend.coordinator(pool_config(3))
    events: list[Any] = []
    fn = Script({"k0": [rate_limited(30)], "k1": [server_error(503), "ok"]})

    call(coord, "p", fn, hooks=[events.append], rng=FixedRandom(0.5))

    attempts = [e for e in events if isinstance(e, co.AttemptEvent)]
    assert [(e.member, e.attempt, e.number, e.kind, e.status, e.next, e.backoff) for e in attempts] == [
        ("k0", 1, 1, "rate_limited", 429, "next_member", None),
        ("k1", 1, 2, "transient", 503, "retry", 0.1),
        ("k1", 2, 3, None, None, "return", None),
    ]
    transitions = [e for e in events if isinstance(e, co.TransitionEvent)]
    assert [(t.source, t.events, t.member, t.active) for t in transitions] == [("failure", ("failover",), "k0", "k1")]


def test_only_the_worker_that_won_a_transition_is_told(backend: Any) -> None:
    cfg = pool_config(3)
    coord = backend.coordinator(cfg)
    # A second worker on the same store (sync whatever the cell, so it can run inside this worker's fn).
    other = co.Coordinator(backend.url, [cfg], prefix=backend.prefix)
    mine: list[Any] = []
    theirs: list[Any] = []

    def fn(member: co.Member) -> str:
        if member.id == "k0":
            # Both workers are on k0 and both get the 429; the other one reports first.
            other.call("p", Script({"k0": [rate_limited(30)]}), hooks=[theirs.append], sleep=lambda s: None)
            raise rate_limited(30)
        return "ok"

    try:
        assert call(coord, "p", fn, hooks=[mine.append]) == "ok"
    finally:
        other.close()

    assert [e.events for e in theirs if isinstance(e, co.TransitionEvent)] == [("failover",)]
    assert [e for e in mine if isinstance(e, co.TransitionEvent)] == []
    assert [e.kind for e in mine if isinstance(e, co.AttemptEvent)] == ["rate_limited", None]
    assert event_count(coord, "failover") == 1


def event_count(coord: Any, kind: str) -> int:
    return sum(1 for e in coord.pool("p").events() if e.type == kind)


def test_a_failing_hook_does_not_break_the_call(backend: Any, caplog: pytest.LogCaptureFixture) -> None:
    coord = backend.coordinator(pool_config(2))

    def broken(event: Any) -> None:
        raise RuntimeError("notifier down")

    with caplog.at_level(logging.ERROR, logger="coordinator"):
        assert call(coord, "p", Script({"k0": [rate_limited()]}), hooks=[broken]) == "ok"
    assert "notifier down" in caplog.text


def test_logging_hook_is_structured_and_never_shows_a_secret(backend: Any, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-test-S3CR3T-0123456789"
    cfg = co.PoolConfig(name="p", members=[co.Member(id="k0", api_key=SecretStr(secret)), co.Member(id="k1")])
    coord = backend.coordinator(cfg, hooks=[co.LoggingHook()])
    leaky = openai_error(401, "invalid_api_key", f"Incorrect API key provided: {secret}.")

    with caplog.at_level(logging.DEBUG, logger="coordinator"), pytest.raises(co.AllMembersFailedError) as excinfo:
        call(coord, "p", Script({"k0": [leaky], "k1": [rate_limited(3600)]}))

    records = [r for r in caplog.records if getattr(r, "coord_event", None)]
    assert {r.coord_event for r in records} == {"attempt", "transition"}  # type: ignore[attr-defined]
    first = next(r for r in records if r.coord_event == "attempt")  # type: ignore[attr-defined]
    assert (first.coord_pool, first.coord_member, first.coord_kind, first.coord_status) == (  # type: ignore[attr-defined]
        "p",
        "k0",
        "auth",
        401,
    )
    for record in records:
        assert secret not in repr(record.__dict__)
    assert secret not in str(excinfo.value)
    assert excinfo.value.causes[0].failure is not None
    assert secret not in excinfo.value.causes[0].failure.message


# -- classifiers and arguments ---------------------------------------------------------------------


class AccountSuspended(Exception):
    pass


def test_user_classifier_is_tried_first(backend: Any) -> None:
    def mine(error: object) -> co.Failure | None:
        return co.Failure(kind="auth") if isinstance(error, AccountSuspended) else None

    coord = backend.coordinator(pool_config(2), classifier=mine)
    fn = Script({"k0": [AccountSuspended()]})
    assert call(coord, "p", fn) == "ok"
    assert fn.calls == ["k0", "k1"]
    assert coord.pool("p").snapshot().member("k0").cooling_kind == "auth"


def test_programming_errors_in_fn_cool_nothing(backend: Any) -> None:
    coord = backend.coordinator(pool_config(3))
    bug = AttributeError("'Member' object has no attribute 'secrt'")
    with pytest.raises(AttributeError) as excinfo:
        call(coord, "p", Script({"k0": [bug]}))
    assert excinfo.value is bug
    assert all(m.available and m.failures == 0 for m in coord.pool("p").snapshot().members)


def test_bad_arguments(backend: Any) -> None:
    coord = backend.coordinator(pool_config(1))
    with pytest.raises(co.UnknownPoolError):
        call(coord, "nope", Script({}))
    with pytest.raises(ValueError, match="at least one pool"):
        call(coord, [], Script({}))
    with pytest.raises(ValueError, match="once"):
        call(coord, ["p", "p"], Script({}))
    with pytest.raises(ValueError, match="max_retries"):
        call(coord, "p", Script({}), max_retries=-1)


def test_sync_call_refuses_a_coroutine_function() -> None:
    coord = co.Coordinator("memory://executor-sync-coroutine", [pool_config(1)])

    async def fn(member: co.Member) -> str:
        return "never"

    with pytest.raises(TypeError, match="AsyncCoordinator"):
        coord.call("p", fn)  # type: ignore[unused-coroutine]  # the misuse under test
    assert coord.pool("p").snapshot().member("k0").failures == 0
    coord.close()


# -- the plan alone, without a store ---------------------------------------------------------------


def test_plan_is_sans_io() -> None:
    cfg = pool_config(1)
    plan = CallPlan([cfg], clock=lambda: 0.0)
    assert plan.start() == Acquire("p")
    sel = co.Selection(pool="p", member=cfg.members[0], epoch="e", generation=1)
    action = plan.send(Outcome(value=sel))
    assert action == Attempt(sel, 1)
    bad = openai_error(400, None, "bad")
    action = plan.send(Outcome(error=bad))
    while not isinstance(action, Raise):  # a Notify for the hooks comes first
        assert not isinstance(action, ReportFailure | ReadSnapshot)
        action = plan.send(Outcome())
    assert action.error is bad and action.cause is None


# -- asyncio only ------------------------------------------------------------------------------------


@pytest.fixture(params=["redis", "memory"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"memory://{uuid.uuid4().hex}"


def _async_coordinator(url: str, *pools: co.PoolConfig) -> co.AsyncCoordinator:
    return co.AsyncCoordinator(url, list(pools), prefix=f"t{uuid.uuid4().hex[:10]}")


def test_async_function_fails_over(store_url: str) -> None:
    async def main() -> None:
        coord = _async_coordinator(store_url, pool_config(2))
        seen: list[str] = []

        async def fn(member: co.Member) -> str:
            seen.append(member.id)
            await asyncio.sleep(0)
            if member.id == "k0":
                raise anthropic_error(429, "rate_limit_error", "slow down", {"retry-after": "30"})
            return "ok"

        slept: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            slept.append(seconds)

        assert await coord.call("p", fn, sleep=fake_sleep) == "ok"
        assert (seen, slept) == (["k0", "k1"], [])
        assert (await coord.pool("p").snapshot()).member("k0").cooling_kind == "rate_limited"
        await coord.aclose()

    asyncio.run(main())


def test_async_stream_fails_over_only_before_its_first_chunk(store_url: str) -> None:
    async def main() -> None:
        coord = _async_coordinator(store_url, pool_config(3))
        broken = rate_limited(30)

        async def stream(member: co.Member) -> AsyncIterator[str]:
            if member.id == "k0":
                raise rate_limited(30)
            yield f"{member.id}:first"
            raise broken

        chunks = await coord.call("p", stream)
        assert await anext(chunks) == "k1:first"
        with pytest.raises(openai.RateLimitError) as excinfo:
            await anext(chunks)
        assert excinfo.value is broken
        snap = await coord.pool("p").snapshot()
        assert not snap.member("k0").available
        assert snap.member("k1").available and snap.active == "k1"
        await coord.aclose()

    asyncio.run(main())


def test_async_cancellation_mid_call_touches_no_state(store_url: str) -> None:
    async def main() -> None:
        coord = _async_coordinator(store_url, pool_config(3))
        pool = coord.pool("p")
        await pool.acquire()
        before = frozen(await pool.snapshot())
        events: list[Any] = []
        in_flight = asyncio.Event()

        tries: list[str] = []

        async def hangs(member: co.Member) -> str:
            tries.append(member.id)
            if len(tries) == 1:
                in_flight.set()
                await asyncio.Event().wait()
            return "late"  # only reached if the cancel was swallowed and the call went on

        async def no_wait(seconds: float) -> None:
            pass

        task = asyncio.create_task(coord.call("p", hangs, hooks=[events.append], sleep=no_wait))
        await in_flight.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert tries == ["k0"]
        assert frozen(await pool.snapshot()) == before
        assert events == []
        await coord.aclose()

    asyncio.run(main())


def test_async_cancelled_error_raised_by_fn_propagates(store_url: str) -> None:
    async def main() -> None:
        coord = _async_coordinator(store_url, pool_config(2))
        pool = coord.pool("p")
        await pool.acquire()
        before = frozen(await pool.snapshot())

        async def disconnected(member: co.Member) -> str:
            raise asyncio.CancelledError()

        with pytest.raises(asyncio.CancelledError):
            await coord.call("p", disconnected)
        assert frozen(await pool.snapshot()) == before
        await coord.aclose()

    asyncio.run(main())


def test_async_cancellation_during_backoff_stops_retrying(store_url: str) -> None:
    async def main() -> None:
        coord = _async_coordinator(store_url, pool_config(1))
        seen: list[str] = []
        sleeping = asyncio.Event()

        def fn(member: co.Member) -> str:
            seen.append(member.id)
            raise server_error(503)

        async def long_sleep(seconds: float) -> None:
            sleeping.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(coord.call("p", fn, sleep=long_sleep))
        await sleeping.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["k0"]
        await coord.aclose()

    asyncio.run(main())

"""The failover executor, ``coord.call``: one behaviour suite on real Redis and memory://, sync and async
(the ``backend`` fixture; here also through the local view at the default staleness), plus explicit
asyncio tests for what only async has (coroutines, async iterators, task cancellation). Sleeps are
injected and recorded; nothing here waits for real except where server time itself must pass."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import pytest
from executor_support import FakeTime, FixedRandom, Script, backend, call, frozen
from helpers import fast_policy, members, pool_config, wait_until_available
from provider_errors import anthropic_error, openai_error, rate_limited, server_error

import coordinator as co

__all__ = ["backend"]  # the fixture, imported so pytest finds it here


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
    # The success restarts the fleet-wide count (docs/design.md, "Failure counts"): reported at once by
    # a worker without a view; kept by one with a view and sent with its next failure report there.
    assert snap.member("k0").failures == (0 if backend.staleness == 0 else 1)
    if backend.staleness != 0:
        coord.pool("p").report_failure(coord.pool("p").acquire(), "transient")
        assert coord.pool("p").snapshot().member("k0").failures == 1  # a new run, not the second failure


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

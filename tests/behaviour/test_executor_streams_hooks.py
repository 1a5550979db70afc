"""The failover executor, ``coord.call``, continued (cancellation, streams, returned responses, hooks,
classifiers, asyncio only): one behaviour suite on real Redis and memory://, sync and async
(the ``backend`` fixture; here also through the local view at the default staleness), plus explicit
asyncio tests for what only async has (coroutines, async iterators, task cancellation). Sleeps are
injected and recorded; nothing here waits for real except where server time itself must pass."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from executor_support import FixedRandom, Script, backend, call, frozen
from helpers import pool_config
from provider_errors import anthropic_error, httpx_response, openai_error, rate_limited, server_error
from pydantic import SecretStr

import coordinator as co
from coordinator.rules.plan import Acquire, Attempt, CallPlan, Outcome, Raise, ReadSnapshot, ReportFailure

__all__ = ["backend"]  # the fixture, imported so pytest finds it here


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

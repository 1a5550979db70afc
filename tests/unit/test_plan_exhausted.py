"""The call plan when members are unavailable, across chains, and after a success that spends a rate-limit
window (docs/design.md, "When every member is unavailable"), driven as a sans-IO generator."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from plan_world import NOW, Boom, RawResponse, World, failed, pool, run

import coordinator as co
from coordinator.core.errors import AllMembersFailedError, StoreError
from coordinator.core.kinds import Failure
from coordinator.rules.plan import (
    MIN_WAIT,
    Acquire,
    Attempt,
    Outcome,
    Raise,
    ReadSnapshot,
    ReportFailure,
    Return,
    Sleep,
)

# -- every member unavailable ----------------------------------------------------------------------


def test_wait_policy_sleeps_until_the_soonest_recovery_then_serves() -> None:
    cfg = pool(n=2, max_wait=10.0)
    world = World({"p": cfg}, cooling={"p0": NOW + 3.0, "p1": NOW + 2.0})
    end, world = run(cfg, world=world)
    assert [s.seconds for s in world.of(Sleep)] == [pytest.approx(2.0)]
    assert end == Return(("result", "ok-p1"))


def test_wait_never_busy_loops_on_a_recovery_already_due() -> None:
    cfg = pool(n=1, max_wait=1.0)
    world = World({"p": cfg}, cooling={"p0": NOW + 0.001})
    _, world = run(cfg, world=world)
    assert world.of(Sleep)[0].seconds == MIN_WAIT == 0.05


def test_wait_policy_gives_up_when_recovery_is_beyond_max_wait() -> None:
    cfg = pool(n=2, max_wait=5.0)
    world = World({"p": cfg}, cooling={"p0": NOW + 60.0, "p1": NOW + 9.0})
    end, world = run(cfg, world=world)
    error = failed(end)
    assert world.of(Sleep) == [] and world.attempts() == []
    assert error.retry_at == NOW + 9.0
    assert [c.note for c in error.causes] == ["exhausted; recovery is beyond max_wait or the deadline"]


def test_waits_add_up_against_max_wait() -> None:
    cfg = pool(n=1, max_wait=5.0, attempts_per_member=1)
    world = World({"p": cfg}, cooling={"p0": NOW + 3.0},
                  script={"p0": [Boom("rate_limited", retry_after=3.0)]})
    end, world = run(cfg, world=world)
    assert [s.seconds for s in world.of(Sleep)] == [pytest.approx(3.0)], "a second 3 s wait would pass 5 s"
    assert failed(end).retry_at == pytest.approx(NOW + 6.0)
    cfg = pool(n=1, max_wait=6.0, attempts_per_member=1)
    world = World({"p": cfg}, cooling={"p0": NOW + 3.0}, script={"p0": [Boom("rate_limited", retry_after=3.0)]})
    end, world = run(cfg, world=world)
    assert [s.seconds for s in world.of(Sleep)] == [pytest.approx(3.0), pytest.approx(3.0)], "exactly max_wait"
    assert end == Return(("result", "ok-p0"))


def test_wait_is_cut_by_the_deadline() -> None:
    cfg = pool(n=1, max_wait=60.0)
    world = World({"p": cfg}, cooling={"p0": NOW + 10.0})
    end, world = run(cfg, world=world, deadline=5.0)
    assert world.of(Sleep) == []
    assert failed(end).retry_at == NOW + 10.0
    cfg = pool(n=1, max_wait=60.0)
    world = World({"p": cfg}, cooling={"p0": NOW + 4.0})
    end, world = run(cfg, world=world, deadline=5.0)
    assert [s.seconds for s in world.of(Sleep)] == [pytest.approx(4.0)]
    assert isinstance(end, Return)


def test_fail_policy_fails_at_once_with_the_soonest_recovery() -> None:
    cfg = pool(n=2, on_exhausted="fail")
    world = World({"p": cfg}, cooling={"p0": NOW + 5.0, "p1": NOW + 2.0})
    end, world = run(cfg, world=world)
    error = failed(end)
    assert world.of(Sleep) == [] and world.attempts() == []
    assert error.retry_at == NOW + 2.0
    assert [c.note for c in error.causes] == ["exhausted"]


def test_parked_members_never_count_as_a_recovery() -> None:
    cfg = pool(n=2, on_exhausted="wait")
    world = World({"p": cfg}, parked={"p0", "p1"})
    end, world = run(cfg, world=world)
    error = failed(end)
    assert error.retry_at is None and world.of(Sleep) == []


def test_degraded_policy_tries_the_soonest_recovering_member_once() -> None:
    cfg = pool(n=3, on_exhausted="degraded", attempts_per_member=1)
    world = World({"p": cfg}, cooling={"p0": NOW + 9.0, "p1": NOW + 2.0, "p2": NOW + 5.0})
    end, world = run(cfg, world=world)
    assert end == Return(("result", "ok-p1"))
    [attempt] = world.of(Attempt)
    assert attempt.selection.degraded and attempt.selection.lease == ""
    assert world.events()[0].degraded
    world = World({"p": cfg}, cooling={"p0": NOW + 9.0, "p1": NOW + 2.0, "p2": NOW + 5.0},
                  script={"p1": [Boom("rate_limited")], "p2": [Boom("rate_limited")]})
    end, world = run(cfg, world=world)
    assert world.attempts() == [("p1", 1)], "a degraded try is made once per pass"
    assert isinstance(failed(end), AllMembersFailedError)


# -- chains ----------------------------------------------------------------------------------------


def test_a_chain_tries_its_next_pool_before_waiting_for_the_first() -> None:
    first, second = pool("a", n=1, wait_for_recovery=0), pool("b", n=1, wait_for_recovery=0)
    world = World({"a": first, "b": second}, cooling={"a0": NOW + 1.0})
    end, world = run(first, second, world=world)
    assert end == Return(("result", "ok-b0")) and world.of(Sleep) == []


def test_a_chain_waits_for_its_wait_pools_only_when_none_served() -> None:
    first = pool("a", n=1, max_wait=10.0, wait_for_recovery=0)
    second = pool("b", n=1, on_exhausted="fail", wait_for_recovery=0)
    world = World({"a": first, "b": second}, cooling={"a0": NOW + 3.0, "b0": NOW + 1.0})
    end, world = run(first, second, world=world)
    assert [s.seconds for s in world.of(Sleep)] == [pytest.approx(3.0)]
    assert end == Return(("result", "ok-a0"))
    assert [a.pool for a in world.of(Acquire)] == ["a", "b", "a"], "the fail pool is not asked again"


def test_the_final_error_lists_causes_by_pool_in_chain_order_and_the_soonest_recovery() -> None:
    first, second = pool("a", n=1, on_exhausted="fail"), pool("b", n=2, on_exhausted="fail")
    world = World({"a": first, "b": second}, script={"a0": [Boom("auth")], "b0": [Boom("auth")],
                                                      "b1": [Boom("quota_exhausted", retry_after=100.0)]},
                  cooldown=50.0)
    end, world = run(first, second, world=world)
    error = failed(end)
    assert error.pools == ("a", "b")
    assert [(c.pool, c.member) for c in error.causes if c.member] == [("a", "a0"), ("b", "b0"), ("b", "b1")]
    assert [c.failure.kind for c in error.causes if c.failure] == ["auth", "auth", "quota_exhausted"]
    assert error.retry_at == pytest.approx(NOW + 50.0), "the soonest of all the chain's members"
    assert isinstance(end, Raise) and isinstance(end.cause, Boom) and str(end.cause) == "quota_exhausted failure"
    assert [a.pool for a in world.of(ReadSnapshot)][-2:] == ["a", "b"]


def test_the_soonest_recovery_survives_an_unreadable_snapshot() -> None:
    first, second = pool("a", n=1, on_exhausted="fail"), pool("b", n=1, on_exhausted="fail")
    world = World({"a": first, "b": second}, cooling={"a0": NOW + 4.0, "b0": NOW + 8.0})
    answer = world.answer

    def b_unreadable(action: Any) -> Outcome:
        if isinstance(action, ReadSnapshot) and action.pool == "b" and any(
                isinstance(a, ReadSnapshot) and a.pool == "b" for a in world.actions):
            world.actions.append(action)  # the second read of b: the one for the final error
            return Outcome(error=StoreError("down"))
        return answer(action)

    world.answer = b_unreadable  # type: ignore[method-assign]
    end, _ = run(first, second, world=world)
    assert failed(end).retry_at == NOW + 4.0


def test_a_repeated_cause_counts_its_attempts() -> None:
    cfg = pool(n=1, attempts_per_member=3, on_exhausted="fail")
    world = World({"p": cfg}, script={"p0": [Boom("transient")] * 3}, transient_threshold=99)
    end, world = run(cfg, world=world)
    [cause] = failed(end).causes
    assert (cause.member, cause.attempts) == ("p0", 3)


# -- pre-emptive cooldown and secrets --------------------------------------------------------------


def test_a_success_that_spends_the_window_cools_the_member_at_once() -> None:
    cfg = pool()
    spent = httpx.Response(200, headers={"x-ratelimit-remaining-requests": "0",
                                         "x-ratelimit-reset-requests": "20s"})
    world = World({"p": cfg}, script={"p0": [spent]})
    end, world = run(cfg, world=world)
    assert end == Return(("result", spent))
    assert world.reports() == [("p0", "rate_limited", 20.0)]
    assert (world.transitions()[-1].source, world.transitions()[-1].kind) == ("preemptive", "rate_limited")
    assert world.events()[-1].status == 200, "the attempt event carries the served response's status"
    world = World({"p": cfg}, script={"p0": [spent]}, quiet_reports=True)
    run(cfg, world=world)
    assert world.reports() == [("p0", "rate_limited", 20.0)]
    assert world.transitions() == [], "a cooldown another worker already made is not announced again"
    roomy = httpx.Response(200, headers={"x-ratelimit-remaining-requests": "5",
                                         "x-ratelimit-reset-requests": "20s"})
    world = World({"p": cfg}, script={"p0": [roomy]})
    run(cfg, world=world)
    assert world.reports() == []


def test_a_lost_preemptive_cooldown_still_returns_the_result(caplog: pytest.LogCaptureFixture) -> None:
    cfg = pool()
    spent = httpx.Response(200, headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1s"})
    world = World({"p": cfg}, script={"p0": [spent]}, broken={ReportFailure: StoreError("down")})
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        end, _ = run(cfg, world=world)
    assert end == Return(("result", spent))
    assert "pre-emptive cooldown" in caplog.text
    assert [r.name for r in caplog.records] == ["coordinator"]


def test_preemptive_cooldown_reads_sdk_raw_and_stream_objects() -> None:
    cfg = pool()
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}
    for value in (RawResponse(headers=headers), RawResponse(response=httpx.Response(200, headers=headers))):
        world = World({"p": cfg}, script={"p0": [value]})
        run(cfg, world=world)
        assert world.reports() == [("p0", "rate_limited", 2.0)]


def test_a_members_secret_never_reaches_the_final_error() -> None:
    cfg = co.PoolConfig(name="p", members=[co.Member(id="k", api_key="sk-secret-123")], on_exhausted="fail")

    def leaky(error: object) -> Failure | None:
        return Failure(kind="auth", message="bad key sk-secret-123 rejected")

    world = World({"p": cfg}, script={"k": [Boom("auth")]})
    end, _ = run(cfg, world=world, classifiers=(leaky,))
    [cause] = [c for c in failed(end).causes if c.member]
    assert cause.failure is not None and cause.failure.message == "bad key *** rejected"
    assert "sk-secret-123" not in str(failed(end))


def test_a_short_secret_is_not_masked_everywhere() -> None:
    cfg = co.PoolConfig(name="p", members=[co.Member(id="k", api_key="a")], on_exhausted="fail")

    def says(error: object) -> Failure | None:
        return Failure(kind="auth", message="a bad day")

    end, _ = run(cfg, world=World({"p": cfg}, script={"k": [Boom("auth")]}), classifiers=(says,))
    [cause] = [c for c in failed(end).causes if c.member]
    assert cause.failure is not None and cause.failure.message == "a bad day"


def test_a_pool_skipped_for_its_model_is_not_tried_even_degraded() -> None:
    cfg = pool(n=2, on_exhausted="degraded")
    world = World({"p": cfg}, skipped={"p": NOW + 60.0})
    end, world = run(cfg, world=world)
    assert world.attempts() == [], "its model is unavailable on every member"
    assert failed(end).retry_at == NOW + 60.0


def test_a_parked_member_is_never_tried_even_degraded() -> None:
    cfg = pool(n=2, on_exhausted="degraded", attempts_per_member=1)
    world = World({"p": cfg}, parked={"p0"}, script={"p1": [Boom("rate_limited")]})
    end, world = run(cfg, world=world)
    assert world.attempts() == [("p1", 1)]
    assert isinstance(failed(end), AllMembersFailedError)


def test_degraded_breaks_a_tie_by_pool_order() -> None:
    cfg = pool(n=3, on_exhausted="degraded", attempts_per_member=1)
    world = World({"p": cfg}, cooling={"p1": NOW + 5.0, "p2": NOW + 5.0}, script={"p0": [Boom("auth")]},
                  cooldown=50.0)
    end, world = run(cfg, world=world)
    assert world.attempts() == [("p0", 1), ("p1", 1)]
    assert end == Return(("result", "ok-p1"))


def test_a_six_character_secret_is_masked_too() -> None:
    cfg = co.PoolConfig(name="p", members=[co.Member(id="k", api_key="s3cr3t")], on_exhausted="fail")

    def leaky(error: object) -> Failure | None:
        return Failure(kind="auth", message="key s3cr3t rejected")

    end, _ = run(cfg, world=World({"p": cfg}, script={"k": [Boom("auth")]}), classifiers=(leaky,))
    [cause] = [c for c in failed(end).causes if c.member]
    assert cause.failure is not None and cause.failure.message == "key *** rejected"

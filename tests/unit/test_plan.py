"""The call plan, driven directly as a sans-IO generator: no Redis, no network, no sleeping. A small
in-memory store answers its actions the way the scripts would (docs/design.md, "Failure kinds", "When
every member is unavailable", "Retry accounting"); the tests assert what the store was told and what
the caller gets."""

from __future__ import annotations

import logging
import math
from typing import Any

import httpx
import pytest
from plan_world import NOW, Boom, Fixed, World, failed, pool, run

from coordinator.core.errors import AllMembersFailedError, PoolExhaustedError, StoreError
from coordinator.core.types import SuccessResult
from coordinator.rules.plan import (
    Acquire,
    Attempt,
    CallPlan,
    Discard,
    Notify,
    Outcome,
    Raise,
    ReadSnapshot,
    ReportFailure,
    ReportSuccess,
    Return,
    Sleep,
)

# -- the happy path --------------------------------------------------------------------------------


def test_a_served_call_reports_its_success_and_returns_the_result() -> None:
    cfg = pool()
    end, world = run(cfg)
    assert end == Return(("result", "ok-p0"))
    assert world.attempts() == [("p0", 1)]
    assert [type(a) for a in world.actions] == [Acquire, Attempt, Notify, ReportSuccess]
    [event] = world.events()
    assert (event.member, event.attempt, event.number, event.kind, event.next) == ("p0", 1, 1, None, "return")
    assert event.elapsed == 0.01


def test_a_lost_success_report_does_not_lose_the_result(caplog: pytest.LogCaptureFixture) -> None:
    cfg = pool()
    world = World({"p": cfg}, broken={ReportSuccess: StoreError("redis went away")})
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        end, _ = run(cfg, world=world)
    assert end == Return(("result", "ok-p0"))
    assert "report_success" in caplog.text and "redis went away" in caplog.text
    assert [r.name for r in caplog.records] == ["coordinator"], "operators configure this logger by name"


def test_a_success_transition_is_announced() -> None:
    cfg = pool()
    world = World({"p": cfg})
    answer = world.answer

    def transitioning(action: Any) -> Outcome:
        out = answer(action)
        if isinstance(action, ReportSuccess):
            return Outcome(value=SuccessResult(pool="p", transitioned=True, active="p0", epoch="e1", generation=4,
                                               exhausted=False, events=("reset",)))
        return out

    world.answer = transitioning  # type: ignore[method-assign]
    end, _ = run(cfg, world=world)
    assert isinstance(end, Return)
    [transition] = world.transitions()
    assert (transition.source, transition.member, transition.kind, transition.active, transition.generation,
            transition.events) == ("success", "p0", None, "p0", 4, ("reset",))


def test_an_acquire_that_made_a_transition_is_announced() -> None:
    cfg = pool()
    world = World({"p": cfg}, transitioned=True)
    run(cfg, world=world)
    [transition] = world.transitions()
    assert (transition.source, transition.active, transition.exhausted, transition.events) == \
        ("acquire", "p0", False, ("recovered",))
    rr = pool(strategy="round_robin")
    world = World({"p": rr}, transitioned=True)
    run(rr, world=world)
    assert world.transitions()[0].active is None, "a rotation has no active member"


# -- rotation: rate limits, quota, auth ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rate_limited", "quota_exhausted", "auth"])
def test_a_cooling_failure_is_reported_and_the_next_member_serves_at_once(kind: str) -> None:
    cfg = pool()
    world = World({"p": cfg}, script={"p0": [Boom(kind, retry_after=7.0, status=429)]})
    end, world = run(cfg, world=world)
    assert end == Return(("result", "ok-p1"))
    assert world.reports() == [("p0", kind, 7.0)]
    assert world.attempts() == [("p0", 1), ("p1", 1)]
    assert world.of(Sleep) == [], "rotation costs no wait"
    first = world.events()[0]
    assert (first.kind, first.status, first.code, first.retry_after, first.next, first.backoff) == \
        (kind, 429, f"{kind}_code", 7.0, "next_member", None)
    assert [e.number for e in world.events()] == [1, 2]
    assert world.transitions()[0].source == "failure" and world.transitions()[0].cooling_until == NOW + 7.0


def test_a_failed_error_response_is_closed_before_the_next_try() -> None:
    cfg = pool()
    limited = httpx.Response(429, headers={"retry-after": "3"})
    world = World({"p": cfg}, script={"p0": [limited]})
    end, world = run(cfg, world=world, classifiers=())
    assert end == Return(("result", "ok-p1"))
    assert world.reports() == [("p0", "rate_limited", 3.0)]
    assert world.of(Discard) == [Discard(limited)]
    assert world.events()[0].status == 429


# -- transient: same-member retries with backoff ---------------------------------------------------


def test_transient_failures_retry_the_same_member_with_jittered_backoff_then_move_on() -> None:
    cfg = pool(attempts_per_member=3, backoff_base=0.5, backoff_cap=10.0)
    world = World({"p": cfg}, script={"p0": [Boom("transient")] * 3}, transient_threshold=99)
    end, world = run(cfg, world=world)
    assert end == Return(("result", "ok-p1"))
    assert world.attempts() == [("p0", 1), ("p0", 2), ("p0", 3), ("p1", 1)]
    assert world.reports() == [("p0", "transient", None)] * 3, "every failed attempt is reported"
    assert [s.seconds for s in world.of(Sleep)] == [pytest.approx(0.25), pytest.approx(0.5)]
    assert [e.next for e in world.events()] == ["retry", "retry", "next_member", "return"]
    assert [e.backoff for e in world.events()][:2] == [pytest.approx(0.25), pytest.approx(0.5)]
    assert world.transitions() == [], "failures below the threshold change no pool state"


def test_max_retries_overrides_attempts_per_member() -> None:
    cfg = pool(attempts_per_member=5)
    world = World({"p": cfg}, script={"p0": [Boom("transient")] * 5}, transient_threshold=99)
    end, world = run(cfg, world=world, max_retries=1)
    assert world.attempts() == [("p0", 1), ("p0", 2), ("p1", 1)]
    world = World({"p": cfg}, script={"p0": [Boom("transient")] * 5}, transient_threshold=99)
    end, world = run(cfg, world=world, max_retries=0)
    assert world.attempts() == [("p0", 1), ("p1", 1)]
    assert isinstance(end, Return)


def test_a_member_cooled_by_its_failure_is_not_retried() -> None:
    cfg = pool(attempts_per_member=3)
    world = World({"p": cfg}, script={"p0": [Boom("transient")] * 3}, transient_threshold=1)
    end, world = run(cfg, world=world)
    assert end == Return(("result", "ok-p1"))
    assert world.attempts() == [("p0", 1), ("p1", 1)]
    assert world.of(Sleep) == []


def test_a_retry_after_longer_than_the_backoff_cap_moves_on_shorter_one_is_honoured() -> None:
    cfg = pool(attempts_per_member=3, backoff_base=0.1, backoff_cap=2.0)
    world = World({"p": cfg}, script={"p0": [Boom("transient", retry_after=5.0)]}, transient_threshold=99)
    _, world = run(cfg, world=world)
    assert world.attempts() == [("p0", 1), ("p1", 1)] and world.of(Sleep) == []
    world = World({"p": cfg}, script={"p0": [Boom("transient", retry_after=1.5)]}, transient_threshold=99)
    _, world = run(cfg, world=world)
    assert world.attempts() == [("p0", 1), ("p0", 2)]
    assert [s.seconds for s in world.of(Sleep)] == [1.5], "the server's wait wins over a shorter jitter"
    world = World({"p": cfg}, script={"p0": [Boom("transient", retry_after=2.0)]}, transient_threshold=99)
    _, world = run(cfg, world=world)
    assert [s.seconds for s in world.of(Sleep)] == [2.0], "a wait of exactly the cap is still a retry"


def test_a_backoff_past_the_deadline_is_not_slept() -> None:
    cfg = pool(n=1, attempts_per_member=3, backoff_base=4.0, backoff_cap=10.0, on_exhausted="fail")
    world = World({"p": cfg}, script={"p0": [Boom("transient")] * 3}, transient_threshold=99)
    end, world = run(cfg, world=world, deadline=1.0)
    assert world.of(Sleep) == []
    assert world.attempts() == [("p0", 1)]
    assert isinstance(failed(end), AllMembersFailedError)


def test_the_deadline_ends_the_call_when_a_backoff_overslept_it() -> None:
    cfg = pool(n=2, attempts_per_member=3, backoff_base=4.0, backoff_cap=10.0)
    world = World({"p": cfg}, script={"p0": [Boom("transient")] * 3}, transient_threshold=99, oversleep=0.6)
    end, world = run(cfg, world=world, deadline=2.5, rng=Fixed(0.5))
    error = failed(end)
    assert error.timed_out
    assert world.attempts() == [("p0", 1)], "no further attempt once the deadline passed"
    assert [s.seconds for s in world.of(Sleep)] == [2.0]


def test_no_time_left_means_no_attempt() -> None:
    cfg = pool()
    end, world = run(cfg, deadline=0.0)
    error = failed(end)
    assert error.timed_out and world.attempts() == []


# -- the caller's own errors -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["request", "content_policy", "context_length"])
def test_the_callers_own_error_is_raised_as_it_is_and_touches_no_state(kind: str) -> None:
    cfg = pool()
    error = Boom(kind, status=400)
    world = World({"p": cfg}, script={"p0": [error]})
    end, world = run(cfg, world=world)
    assert isinstance(end, Raise) and end.error is error and end.cause is None
    assert world.of(ReportFailure) == [] and world.of(ReportSuccess) == []
    assert world.events()[-1].next == "raise"


def test_the_callers_own_error_response_is_returned_untouched() -> None:
    cfg = pool()
    bad = httpx.Response(400, json={"error": {"message": "bad request"}})
    world = World({"p": cfg}, script={"p0": [bad]})
    end, world = run(cfg, world=world, classifiers=())
    assert end == Return(("result", bad))
    assert world.of(ReportFailure) == [] and world.of(Discard) == []


# -- model unavailable: the chain's next pool ------------------------------------------------------


def test_model_unavailable_skips_the_whole_pool_for_the_next_one_in_the_chain() -> None:
    first, second = pool("a"), pool("b")
    world = World({"a": first, "b": second}, script={"a0": [Boom("model_unavailable")]})
    end, world = run(first, second, world=world)
    assert end == Return(("result", "ok-b0"))
    assert world.attempts() == [("a0", 1), ("b0", 1)], "a1 and a2 serve the same model: not tried"
    assert world.reports() == [("a0", "model_unavailable", None)]
    assert world.events()[0].next == "next_pool"
    assert [a.pool for a in world.of(Acquire)] == ["a", "b"], "pool a is not asked again"
    assert world.of(ReadSnapshot) == []


# -- store errors ----------------------------------------------------------------------------------


def test_a_failure_report_the_store_lost_is_raised_not_swallowed() -> None:
    cfg = pool()
    upstream = Boom("rate_limited")
    lost = StoreError("report_failure failed")
    world = World({"p": cfg}, script={"p0": [upstream]}, broken={ReportFailure: lost})
    end, world = run(cfg, world=world)
    assert isinstance(end, Raise)
    assert end.error is lost and end.cause is upstream
    assert world.attempts() == [("p0", 1)], "no member is tried on a state the store did not record"


def test_an_acquire_error_is_raised() -> None:
    cfg = pool()
    lost = StoreError("down")
    end, world = run(cfg, world=World({"p": cfg}, broken={Acquire: lost}))
    assert isinstance(end, Raise) and end.error is lost and world.attempts() == []


def test_a_snapshot_error_is_raised() -> None:
    cfg = pool()
    lost = StoreError("down")
    world = World({"p": cfg}, script={"p0": [Boom("transient")]}, transient_threshold=99, broken={ReadSnapshot: lost})
    end, world = run(cfg, world=world, max_retries=0)
    assert isinstance(end, Raise) and end.error is lost
    assert isinstance(end.cause, Boom)


def test_a_parked_pool_fails_with_its_note() -> None:
    cfg = pool()
    world = World({"p": cfg}, broken={Acquire: PoolExhaustedError("p", None)})
    end, world = run(cfg, world=world)
    error = failed(end)
    assert [c.note for c in error.causes] == ["every member is parked until an operator unparks it"]
    assert not error.timed_out


# -- a pass over the pool: each member once --------------------------------------------------------


def test_each_member_is_tried_once_per_pass_in_pool_order_after_the_pointer() -> None:
    cfg = pool(n=4, attempts_per_member=1, on_exhausted="fail")
    world = World({"p": cfg}, script={m: [Boom("transient")] for m in ("p0", "p1", "p2", "p3")},
                  transient_threshold=99)
    end, world = run(cfg, world=world)
    assert world.attempts() == [("p0", 1), ("p1", 1), ("p2", 1), ("p3", 1)]
    error = failed(end)
    assert [(c.member, c.attempts) for c in error.causes] == [("p0", 1), ("p1", 1), ("p2", 1), ("p3", 1)]
    assert all(c.failure is not None and c.failure.kind == "transient" for c in error.causes)
    assert error.retry_at == NOW, "the members are available again: at once"


def test_the_scan_for_an_untried_member_wraps_around() -> None:
    cfg = pool(n=3, attempts_per_member=1, on_exhausted="fail")
    world = World({"p": cfg}, script={"p1": [Boom("transient")], "p2": [Boom("transient")]},
                  transient_threshold=99, cooling={"p0": NOW + 0.5})
    answer = world.answer

    def later(action: Any) -> Outcome:
        out = answer(action)
        if isinstance(action, Attempt) and action.selection.member.id == "p2":
            world.time += 1.0  # p0 recovered meanwhile
        return out

    world.answer = later  # type: ignore[method-assign]
    end, world = run(cfg, world=world)
    assert world.attempts() == [("p1", 1), ("p2", 1), ("p0", 1)]
    assert end == Return(("result", "ok-p0"))


def test_a_skipped_pool_offers_no_untried_member() -> None:
    cfg = pool(n=2, attempts_per_member=1, on_exhausted="fail")
    world = World({"p": cfg}, script={"p0": [Boom("transient")]}, transient_threshold=99)
    answer = world.answer

    def skip_after_first(action: Any) -> Outcome:
        if isinstance(action, ReadSnapshot):
            world.skipped["p"] = world.now + 100
        return answer(action)

    world.answer = skip_after_first  # type: ignore[method-assign]
    end, world = run(cfg, world=world)
    assert world.attempts() == [("p0", 1)]
    assert failed(end).retry_at == NOW + 100


# -- arguments -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_retries": -1}, "max_retries"), ({"max_retries": True}, "max_retries"),
    ({"deadline": -0.5}, "deadline"), ({"deadline": math.inf}, "deadline"), ({"deadline": math.nan}, "deadline"),
])
def test_bad_arguments_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CallPlan([pool()], **kwargs)


def test_a_chain_needs_pools_each_named_once() -> None:
    with pytest.raises(ValueError, match="at least one pool"):
        CallPlan([])
    with pytest.raises(ValueError, match="each pool once"):
        CallPlan([pool("a"), pool("a")])
    CallPlan([pool("a"), pool("b")], max_retries=0, deadline=0.0)


def test_the_default_rng_jitter_stays_under_the_bound() -> None:
    cfg = pool(attempts_per_member=2, backoff_base=1.0, backoff_cap=10.0)
    world = World({"p": cfg}, script={"p0": [Boom("transient")]}, transient_threshold=99)
    _, world = run(cfg, world=world, rng=None)
    [nap] = world.of(Sleep)
    assert 0.0 <= nap.seconds < 1.0


def test_a_closed_plan_asks_for_nothing_more() -> None:
    plan = CallPlan([pool()], rng=Fixed(0.5))
    assert isinstance(plan.start(), Acquire)
    plan.close()
    with pytest.raises(StopIteration):
        plan.send(Outcome())


def test_a_recovery_exactly_at_the_deadline_is_not_waited_for() -> None:
    cfg = pool(n=1, max_wait=60.0)
    world = World({"p": cfg}, cooling={"p0": NOW + 5.0})
    end, world = run(cfg, world=world, deadline=5.0)
    error = failed(end)
    assert world.of(Sleep) == [] and not error.timed_out


def test_a_chain_waits_for_the_soonest_of_its_wait_pools() -> None:
    # No near-recovery wait: this tests the chain's own order (docs/design.md, "The call plan").
    first = pool("a", n=1, max_wait=10.0, wait_for_recovery=0)
    second = pool("b", n=1, max_wait=10.0, wait_for_recovery=0)
    world = World({"a": first, "b": second}, cooling={"a0": NOW + 3.0, "b0": NOW + 1.0})
    end, world = run(first, second, world=world)
    assert [s.seconds for s in world.of(Sleep)] == [pytest.approx(1.0)]
    assert end == Return(("result", "ok-b0"))


def test_a_wait_never_sleeps_past_the_deadline() -> None:
    cfg = pool(n=1, max_wait=10.0)
    world = World({"p": cfg}, cooling={"p0": NOW + 0.015625})
    end, world = run(cfg, world=world, deadline=0.03125)  # binary fractions: exact clock arithmetic
    assert [s.seconds for s in world.of(Sleep)] == [0.03125], "not the 50 ms minimum nap"
    assert failed(end).timed_out


def test_a_member_picked_instead_of_the_probed_one_does_not_carry_the_probe_lease() -> None:
    cfg = pool(n=2, attempts_per_member=1)
    world = World({"p": cfg}, script={"p0": [Boom("transient")]}, transient_threshold=99, lease="L1")
    end, world = run(cfg, world=world)
    assert end == Return(("result", "ok-p1"))
    assert [(a.selection.member.id, a.selection.lease) for a in world.of(Attempt)] == [("p0", "L1"), ("p1", "")]


def test_a_pool_skipped_for_its_model_is_waited_for_like_an_exhausted_one() -> None:
    cfg = pool(n=2, max_wait=10.0)
    world = World({"p": cfg}, skipped={"p": NOW + 2.0})
    end, world = run(cfg, world=world)
    assert [s.seconds for s in world.of(Sleep)] == [pytest.approx(2.0)]
    assert end == Return(("result", "ok-p0"))


def test_degraded_picks_an_untried_member_not_the_one_the_store_names() -> None:
    cfg = pool(n=2, on_exhausted="degraded", attempts_per_member=1)
    world = World({"p": cfg}, cooling={"p0": NOW + 9.0}, script={"p1": [Boom("rate_limited", retry_after=1.0)]})
    end, world = run(cfg, world=world)
    assert world.attempts() == [("p1", 1), ("p0", 1)], "p1 recovers sooner but already failed in this call"
    assert end == Return(("result", "ok-p0"))
    assert world.of(Attempt)[1].selection.degraded


def test_time_left_after_a_backoff_is_used_for_the_retry() -> None:
    cfg = pool(n=2, attempts_per_member=2, backoff_base=4.0, backoff_cap=10.0)
    world = World({"p": cfg}, script={"p0": [Boom("transient")]}, transient_threshold=99)
    end, world = run(cfg, world=world, deadline=2.5, rng=Fixed(0.5))
    assert world.attempts() == [("p0", 1), ("p0", 2)], "0.5 s were left after the 2 s backoff"
    assert end == Return(("result", "ok-p0"))


def test_a_backoff_that_ends_exactly_at_the_deadline_ends_the_call() -> None:
    cfg = pool(n=2, attempts_per_member=3, backoff_base=4.0, backoff_cap=10.0)
    world = World({"p": cfg}, script={"p0": [Boom("transient")] * 3}, transient_threshold=99, oversleep=0.5)
    end, world = run(cfg, world=world, deadline=2.5, rng=Fixed(0.5))
    assert failed(end).timed_out and world.attempts() == [("p0", 1)]


def test_a_backoff_as_long_as_the_time_left_is_not_taken() -> None:
    cfg = pool(n=2, attempts_per_member=3, backoff_base=4.0, backoff_cap=10.0)
    world = World({"p": cfg}, script={"p0": [Boom("transient")]}, transient_threshold=99)
    end, world = run(cfg, world=world, deadline=2.0, rng=Fixed(0.5))
    assert world.of(Sleep) == [] and end == Return(("result", "ok-p1"))


@pytest.mark.parametrize(("active", "then"), [("p1", "p2"), ("p2", "p0"), ("p0", "p1")])
def test_after_a_transient_failure_the_next_member_after_the_pointer_is_tried(active: str, then: str) -> None:
    cfg = pool(n=3, attempts_per_member=1)
    world = World({"p": cfg}, script={active: [Boom("transient")]}, transient_threshold=99, active=active)
    end, world = run(cfg, world=world)
    assert world.attempts() == [(active, 1), (then, 1)], "as the sticky pointer itself would move"
    assert end == Return(("result", f"ok-{then}"))

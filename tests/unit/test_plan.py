"""The call plan, driven directly as a sans-IO generator: no Redis, no network, no sleeping. A small
in-memory store answers its actions the way the scripts would (docs/design.md, "Failure kinds", "When
every member is unavailable", "Retry accounting"); the tests assert what the store was told and what
the caller gets."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

import coordinator as co
from coordinator.core.errors import AllMembersFailedError, PoolExhaustedError, StoreError
from coordinator.core.kinds import Failure
from coordinator.core.types import FailureResult, MemberState, Selection, Snapshot, SuccessResult
from coordinator.rules.hooks import AttemptEvent, TransitionEvent
from coordinator.rules.plan import (
    MIN_WAIT,
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

NOW = 1_000_000.0  # server time (unix seconds) when the local clock reads 0


class Boom(Exception):
    """An upstream failure whose meaning the test decides (read by the test's classifier)."""

    def __init__(self, kind: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(f"{kind} failure")
        self.kind = kind
        self.retry_after = retry_after
        self.status = status


def by_kind(error: object) -> Failure | None:
    if isinstance(error, Boom):
        return Failure(kind=error.kind, retry_after=error.retry_after, status=error.status,  # type: ignore[arg-type]
                       code=f"{error.kind}_code", message=str(error))
    return None


class Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def pool(name: str = "p", n: int = 3, **kwargs: Any) -> co.PoolConfig:
    return co.PoolConfig(name=name, members=[co.Member(id=f"{name}{i}") for i in range(n)], **kwargs)


@dataclass
class World:
    """Answers a plan's actions like the store: first available member in pool order, cooling on reports."""

    pools: dict[str, co.PoolConfig]
    time: float = 0.0
    #: Per member id: what its next attempts give (an exception, or a value); then "ok-<id>".
    script: dict[str, list[Any]] = field(default_factory=dict)
    cooling: dict[str, float] = field(default_factory=dict)
    parked: set[str] = field(default_factory=set)
    skipped: dict[str, float] = field(default_factory=dict)
    #: Action type -> the store error its store call raises.
    broken: dict[type, Exception] = field(default_factory=dict)
    cooldown: float = 30.0
    transient_threshold: int = 3
    #: Extra seconds each sleep takes (a loaded machine oversleeps).
    oversleep: float = 0.0
    #: The probe lease every acquire hands out (a priority pool's half-open probe).
    lease: str = ""
    #: Failure reports change nothing (another worker already cooled the member).
    quiet_reports: bool = False
    #: The sticky pointer: acquire names it while it is available, else the first available member.
    active: str | None = None
    transitioned: bool = False
    failures: dict[str, int] = field(default_factory=dict)
    actions: list[Any] = field(default_factory=list)

    @property
    def now(self) -> float:
        return NOW + self.time

    def clock(self) -> float:
        return 500.0 + self.time  # a monotonic clock does not start at zero

    def _available(self, member: str) -> bool:
        return member not in self.parked and self.cooling.get(member, 0.0) <= self.now

    def selection(self, name: str, member: co.Member, **kwargs: Any) -> Selection:
        return Selection(pool=name, member=member, epoch="e1", generation=1, now=self.now, **kwargs)

    def answer(self, action: Any) -> Outcome:
        self.actions.append(action)
        if type(action) in self.broken:
            return Outcome(error=self.broken[type(action)])
        if isinstance(action, Acquire):
            cfg = self.pools[action.pool]
            if action.pool in self.skipped and self.skipped[action.pool] > self.now:
                return Outcome(value=self.selection(action.pool, cfg.members[0], degraded=True,
                                                    retry_at=self.skipped[action.pool]))
            pointed = [m for m in cfg.members if m.id == self.active and self._available(m.id)]
            for member in pointed + list(cfg.members):
                if self._available(member.id):
                    return Outcome(value=self.selection(action.pool, member, transitioned=self.transitioned,
                                                        events=("recovered",) if self.transitioned else (),
                                                        lease=self.lease))
            soonest = min(cfg.members, key=lambda m: math.inf if m.id in self.parked else self.cooling[m.id])
            retry = None if soonest.id in self.parked else self.cooling[soonest.id]
            return Outcome(value=self.selection(action.pool, soonest, degraded=True, retry_at=retry))
        if isinstance(action, ReadSnapshot):
            cfg = self.pools[action.pool]
            states = tuple(
                MemberState(id=m.id, position=i,
                            cooling_until=self.cooling[m.id] if self.cooling.get(m.id, 0.0) > self.now else None,
                            parked=m.id in self.parked, parked_until=math.inf if m.id in self.parked else None)
                for i, m in enumerate(cfg.members))
            skipped = self.skipped.get(action.pool)
            return Outcome(value=Snapshot(pool=action.pool, epoch="e1", generation=1, version=1, active=None,
                                          exhausted=False, strategy=cfg.strategy, now=self.now, members=states,
                                          skipped_until=skipped if skipped and skipped > self.now else None))
        if isinstance(action, Attempt):
            queue = self.script.get(action.selection.member.id, [])
            step = queue.pop(0) if queue else f"ok-{action.selection.member.id}"
            if isinstance(step, Exception):
                return Outcome(error=step, elapsed=0.01)
            return Outcome(value=step, result=("result", step), elapsed=0.01)
        if isinstance(action, ReportFailure):
            member = action.selection.member.id
            cooled = action.kind != "transient"
            if action.kind == "transient":
                self.failures[member] = self.failures.get(member, 0) + 1
                cooled = self.failures[member] >= self.transient_threshold
            until = self.now + (action.retry_after or self.cooldown) if cooled else None
            if action.kind == "model_unavailable":
                self.skipped[action.selection.pool] = self.now + self.cooldown
            elif until is not None:
                self.cooling[member] = until
            return Outcome(value=FailureResult(pool=action.selection.pool,
                                               transitioned=cooled and not self.quiet_reports, active=None,
                                               epoch="e1", generation=2, exhausted=False, events=("cooled",),
                                               cooled=cooled, cooling_until=until))
        if isinstance(action, ReportSuccess):
            return Outcome(value=SuccessResult(pool=action.selection.pool, transitioned=False, active=None,
                                               epoch="e1", generation=1, exhausted=False))
        if isinstance(action, Sleep):
            assert action.seconds >= 0
            self.time += action.seconds + self.oversleep
        return Outcome()

    # -- what happened --

    def of(self, kind: type) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]

    def reports(self) -> list[tuple[str, str, float | None]]:
        return [(a.selection.member.id, a.kind, a.retry_after) for a in self.of(ReportFailure)]

    def attempts(self) -> list[tuple[str, int]]:
        return [(a.selection.member.id, a.attempt) for a in self.of(Attempt)]

    def events(self) -> list[AttemptEvent]:
        return [a.event for a in self.of(Notify) if isinstance(a.event, AttemptEvent)]

    def transitions(self) -> list[TransitionEvent]:
        return [a.event for a in self.of(Notify) if isinstance(a.event, TransitionEvent)]


def run(*pools: co.PoolConfig, world: World | None = None, **kwargs: Any) -> tuple[Return | Raise, World]:
    world = world or World({p.name: p for p in pools})
    kwargs.setdefault("classifiers", (by_kind,))
    kwargs.setdefault("rng", Fixed(0.5))
    plan = CallPlan(pools, clock=world.clock, **kwargs)
    action = plan.start()
    for _ in range(500):
        if isinstance(action, Return | Raise):
            plan.close()
            return action, world
        action = plan.send(world.answer(action))
    raise AssertionError("the plan never ended")


def failed(action: Return | Raise) -> AllMembersFailedError:
    assert isinstance(action, Raise), action
    assert isinstance(action.error, AllMembersFailedError), action.error
    return action.error


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
    first, second = pool("a", n=1), pool("b", n=1)
    world = World({"a": first, "b": second}, cooling={"a0": NOW + 1.0})
    end, world = run(first, second, world=world)
    assert end == Return(("result", "ok-b0")) and world.of(Sleep) == []


def test_a_chain_waits_for_its_wait_pools_only_when_none_served() -> None:
    first, second = pool("a", n=1, max_wait=10.0), pool("b", n=1, on_exhausted="fail")
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


@dataclass
class RawResponse:
    """What the SDKs' ``with_raw_response`` and stream objects look like: headers, or a response."""

    headers: Any = None
    response: Any = None


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
    first, second = pool("a", n=1, max_wait=10.0), pool("b", n=1, max_wait=10.0)
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

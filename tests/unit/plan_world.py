"""The in-memory store and driver the call-plan tests drive ``CallPlan`` with (no Redis, no sleeping)."""


from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import coordinator as co
from coordinator.core.errors import AllMembersFailedError
from coordinator.core.kinds import Failure
from coordinator.core.types import FailureResult, MemberState, Selection, Snapshot, SuccessResult
from coordinator.rules.hooks import AttemptEvent, TransitionEvent
from coordinator.rules.plan import (
    Acquire,
    Attempt,
    CallPlan,
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


@dataclass
class RawResponse:
    """What the SDKs' ``with_raw_response`` and stream objects look like: headers, or a response."""

    headers: Any = None
    response: Any = None

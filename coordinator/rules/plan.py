"""The decisions of the failover executor behind ``coord.call`` (docs/design.md, "Failure kinds", "When every
member is unavailable", "Retry accounting").

``CallPlan`` holds every decision, once, without I/O: it is a generator of ``Action``s (acquire from
a pool, run an attempt, report a failure, sleep, ...) that receives each action's ``Outcome``.
``coordinator.drivers`` holds the thin loops that carry the actions out.

Rules, in the order a call meets them:

- Members are taken from the store (``acquire``), so every worker agrees on the active one; a member
  is tried at most once per pass over its pool, so when the pointer still names one this pass has
  tried, the next untried available member in pool order is used under the same token.
- Rotation costs no retry: ``rate_limited``, ``quota_exhausted`` and ``auth`` are reported (the store
  cools the member) and the next member is tried at once; ``model_unavailable`` skips the whole pool.
- ``transient`` retries the same member with full-jitter backoff up to ``attempts_per_member``,
  reporting every failed attempt (the store counts consecutive failures fleet-wide and cools the
  member at its threshold), then moves on. A timeout (``Failure.timeout``) is reported but never
  retried on the same member, nor is a member the fleet has cooled meanwhile.
- ``context_length`` moves to the next pool of the chain, touching no state; on the last pool it,
  ``request`` and ``content_policy`` re-raise the caller's own exception object unchanged;
  cancellation is never caught at all.
- A pool that can offer no untried member follows its ``on_exhausted`` policy; a chain tries its next
  pool first and waits (for "wait" pools) only when no pool of the chain served. Two exceptions: a
  pool whose soonest recovery is within ``wait_for_recovery`` is waited for before the chain moves on,
  and a pool whose recovery probe another worker holds (``Selection.probing``) is left to the chain.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Literal

from coordinator.core.config import Member, PoolConfig
from coordinator.core.errors import AllMembersFailedError, Cause, PoolExhaustedError
from coordinator.core.kinds import Failure
from coordinator.core.types import FailureResult, Selection, Snapshot, SuccessResult
from coordinator.rules.backoff import RandomSource, delay
from coordinator.rules.classify import Classifier, classify_with, is_error_response, is_response, safe_attr
from coordinator.rules.hints import preemptive_cooldown
from coordinator.rules.hooks import AttemptEvent, HookEvent, NextStep, TransitionEvent, TransitionSource

_log = logging.getLogger("coordinator")

#: The selection the running attempt was made under, set by the executor while ``fn(member)`` runs: a
#: stream that breaks after the hand-over is reported under it (docs/design.md, "Tokens and
#: exactly-once events"), not under whatever the pool's token is by then.
ATTEMPT_SELECTION: ContextVar[Selection | None] = ContextVar("coordinator_attempt_selection", default=None)

#: Shortest nap between two waits for an exhausted pool: a recovery time that is already due (clock
#: granularity, a race with another worker) must not turn the wait loop into a busy loop.
MIN_WAIT = 0.05


# -- actions (what the plan asks for) and outcomes (what it gets back) --------------------------------


@dataclass(frozen=True)
class Acquire:
    pool: str
    #: The chain has a later pool to use meanwhile: an exhausted pool recovers through one probe.
    recovery_probe: bool = False


@dataclass(frozen=True)
class ReadSnapshot:
    pool: str


@dataclass(frozen=True)
class Attempt:
    selection: Selection
    #: 1-based try of this member within the call.
    attempt: int


@dataclass(frozen=True)
class ReportFailure:
    selection: Selection
    kind: str
    retry_after: float | None


@dataclass(frozen=True)
class ReportSuccess:
    selection: Selection


@dataclass(frozen=True)
class Discard:
    """Close a failed response before the next try, so its connection goes back to the pool."""

    value: Any


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Notify:
    event: HookEvent


@dataclass(frozen=True)
class Return:
    value: Any


@dataclass(frozen=True)
class Raise:
    error: BaseException
    #: Set as ``__cause__`` when the error is ours; None re-raises a caller's exception as it is.
    cause: BaseException | None = None


Action = Acquire | ReadSnapshot | Attempt | ReportFailure | ReportSuccess | Discard | Sleep | Notify | Return | Raise


@dataclass(frozen=True)
class Outcome:
    """The result of one action. For an ``Attempt``: ``value`` is what ``fn`` returned (the stream
    object for a stream) and ``result`` what the caller gets (the stream resumed at its first item)."""

    value: Any = None
    result: Any = None
    error: Exception | None = None
    elapsed: float = 0.0


NOTHING = Outcome()


@dataclass(frozen=True)
class _PassEnd:
    state: Literal["served", "failed", "wait", "deadline"]
    #: For "wait": seconds until the pool's soonest recovery.
    delay: float = 0.0


# -- the plan ---------------------------------------------------------------------------------------


class CallPlan:
    """The decisions of one ``coord.call``, as a sans-IO state machine.

    Drive it with ``action = plan.start()``, then ``action = plan.send(outcome)`` until the action is
    a ``Return`` or a ``Raise``.
    """

    def __init__(
        self,
        pools: Sequence[PoolConfig],
        *,
        classifiers: Sequence[Classifier] = (),
        max_retries: int | None = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: RandomSource | None = None,
    ) -> None:
        if not pools:
            raise ValueError("a call needs at least one pool")
        names = [pool.name for pool in pools]
        if len(set(names)) != len(names):
            raise ValueError(f"a chain names each pool once, got {names}")
        if max_retries is not None and (isinstance(max_retries, bool) or max_retries < 0):
            raise ValueError(f"max_retries must be a non-negative integer or None, not {max_retries!r}")
        if deadline is not None and (not math.isfinite(deadline) or deadline < 0):
            raise ValueError(f"deadline must be a non-negative number of seconds or None, not {deadline!r}")
        self.pools = tuple(pools)
        self.clock = clock
        self._classifiers = tuple(classifiers)
        self._max_retries = max_retries
        self._deadline = deadline
        self._rng = rng
        self._started = 0.0
        self._waited = 0.0
        self._number = 0
        self._causes: dict[tuple[str, str | None], Cause] = {}
        self._last_error: BaseException | None = None
        self._gen = self._run()

    def start(self) -> Action:
        return next(self._gen)

    def send(self, outcome: Outcome) -> Action:
        return self._gen.send(outcome)

    def close(self) -> None:
        self._gen.close()

    # -- time --

    def _remaining(self) -> float:
        if self._deadline is None:
            return math.inf
        return self._deadline - (self.clock() - self._started)

    def _has_next_pool(self, pool: PoolConfig) -> bool:
        return self.pools.index(pool) < len(self.pools) - 1

    def _attempts(self, pool: PoolConfig) -> int:
        return pool.attempts_per_member if self._max_retries is None else self._max_retries + 1

    # -- the call: passes over the chain, waiting between them only for "wait" pools --

    def _run(self) -> Generator[Action, Outcome, None]:
        self._started = self.clock()
        todo = list(self.pools)
        timed_out = False
        while todo:
            waiting: list[tuple[PoolConfig, _PassEnd]] = []
            for pool in todo:
                end = yield from self._pass(pool)
                if end.state == "served":
                    return
                if end.state == "deadline":
                    timed_out = True
                    break
                if end.state == "wait":
                    waiting.append((pool, end))
            if timed_out:
                break
            todo, delays = [], []
            for pool, end in waiting:
                if self._waited + end.delay <= pool.max_wait and end.delay < self._remaining():
                    todo.append(pool)
                    delays.append(end.delay)
                else:
                    self._note(pool.name, "exhausted; recovery is beyond max_wait or the deadline")
            if todo:
                nap = min(max(MIN_WAIT, min(delays)), max(0.0, self._remaining()))
                yield Sleep(nap)
                self._waited += nap
        retry_at = yield from self._soonest_recovery()
        order = {pool.name: i for i, pool in enumerate(self.pools)}
        causes = sorted(self._causes.values(), key=lambda cause: order[cause.pool])  # stable: by pool, then time
        error = AllMembersFailedError([pool.name for pool in self.pools], causes, retry_at, timed_out=timed_out)
        yield Raise(error, cause=self._last_error)

    # -- one pass over one pool --

    def _pass(self, pool: PoolConfig) -> Generator[Action, Outcome, _PassEnd]:
        tried: set[str] = set()
        tried_degraded = False
        waited = 0.0
        while True:
            if self._remaining() <= 0:
                return _PassEnd("deadline")
            got = yield Acquire(pool.name, recovery_probe=self._has_next_pool(pool))
            if got.error is not None:
                if isinstance(got.error, PoolExhaustedError):
                    self._note(pool.name, "every member is parked until an operator unparks it")
                    return _PassEnd("failed")
                yield Raise(got.error, cause=self._last_error)
                return _PassEnd("failed")
            sel: Selection = got.value
            if sel.transitioned:
                yield Notify(_acquire_transition(pool, sel))
            if sel.degraded or sel.member.id in tried:
                snap = yield from self._snapshot(pool)
                pick = None if sel.degraded else _next_untried(pool, snap, tried, after=sel.member.id)
                if pick is not None:
                    sel = replace(sel, member=pick, lease="", transitioned=False, events=())
                else:
                    candidate, retry_at = _recovery(pool, snap, tried)
                    if retry_at is None and sel.degraded:
                        retry_at = sel.retry_at
                    no_cooling_left = not sel.degraded and candidate is None
                    if no_cooling_left:
                        # Every member was tried; the ones still available failed transiently.
                        return _PassEnd("failed")
                    near = None if retry_at is None else max(0.0, retry_at - snap.now)
                    if sel.probing and self._has_next_pool(pool):
                        # Another worker probes the member that is back; the chain serves meanwhile.
                        self._note(pool.name, "recovering: another worker is probing it")
                        return _PassEnd("wait", delay=near or 0.0) if pool.on_exhausted == "wait" \
                            else _PassEnd("failed")
                    if near is not None and pool.on_exhausted != "fail" and self._has_next_pool(pool) \
                            and waited + near <= pool.wait_for_recovery and near < self._remaining():
                        # A near recovery beats a model fallback: wait for this pool, then a new pass.
                        nap = max(MIN_WAIT, near)
                        yield Sleep(nap)
                        waited += nap
                        tried.clear()
                        tried_degraded = False
                        continue
                    if pool.on_exhausted == "degraded" and candidate is not None and not tried_degraded:
                        tried_degraded = True
                        sel = replace(sel, member=candidate, degraded=True, lease="", transitioned=False, events=())
                    elif pool.on_exhausted == "wait" and retry_at is not None:
                        return _PassEnd("wait", delay=max(0.0, retry_at - snap.now))
                    else:
                        self._note(pool.name, "exhausted")
                        return _PassEnd("failed")
            step = yield from self._try_member(pool, sel)
            tried.add(sel.member.id)
            if step == "served":
                return _PassEnd("served")
            if step == "deadline":
                return _PassEnd("deadline")
            if step == "next_pool":
                return _PassEnd("failed")

    def _snapshot(self, pool: PoolConfig) -> Generator[Action, Outcome, Snapshot]:
        got = yield ReadSnapshot(pool.name)
        if got.error is not None:
            yield Raise(got.error, cause=self._last_error)
        snapshot: Snapshot = got.value
        return snapshot

    # -- one member: its tries and what each outcome means --

    def _try_member(
        self, pool: PoolConfig, sel: Selection
    ) -> Generator[Action, Outcome, NextStep | Literal["served", "deadline"]]:
        allowed = self._attempts(pool)
        attempt = 0
        while True:
            attempt += 1
            self._number += 1
            out = yield Attempt(sel, attempt)
            if out.error is None and not is_error_response(out.value):
                yield from self._served(pool, sel, attempt, out)
                return "served"
            subject: object = out.error if out.error is not None else out.value
            failure = _redact(classify_with(subject, self._classifiers), sel.member)
            self._record(pool.name, sel.member.id, failure, out.error)

            if failure.kind == "context_length" and self._has_next_pool(pool):
                # A larger-context pool may serve it; no member of this pool is to blame.
                yield Notify(self._attempt_event(pool, sel, attempt, failure, out, next_step="next_pool"))
                if out.value is not None and out.error is None:
                    yield Discard(out.value)
                return "next_pool"
            if not failure.cools:
                yield Notify(self._attempt_event(pool, sel, attempt, failure, out, next_step="raise"))
                if out.error is not None:
                    yield Raise(out.error)
                else:
                    yield Return(out.result)  # the caller's own error response, untouched
                return "served"

            hint = cooldown_hint(pool, failure)
            report = yield from self._report(pool, sel, failure.kind, hint)
            backoff: float | None = None
            # A member that did not answer in time is not asked again: a silent route stays silent.
            retry = failure.kind == "transient" and not failure.timeout
            # Nor is one that is cooling now, whoever cooled it: the fleet has benched it.
            benched = report is not None and (report.cooled or report.cooling_until is not None)
            if retry and attempt < allowed and not benched:
                backoff = self._backoff(pool, attempt, failure)
            if backoff is not None:
                next_step: NextStep = "retry"
            elif failure.kind == "model_unavailable":
                next_step = "next_pool"
            else:
                next_step = "next_member"
            yield Notify(self._attempt_event(pool, sel, attempt, failure, out, next_step=next_step, backoff=backoff))
            if report is not None and report.transitioned:
                yield Notify(report_transition(pool, sel, "failure", failure.kind, report))
            if out.value is not None and out.error is None:
                yield Discard(out.value)
            if backoff is None:
                return next_step
            yield Sleep(backoff)
            if self._remaining() <= 0:
                return "deadline"

    def _backoff(self, pool: PoolConfig, attempt: int, failure: Failure) -> float | None:
        wait = delay(attempt, pool.backoff_base, pool.backoff_cap, self._rng)
        if failure.retry_after is not None:
            if failure.retry_after > pool.backoff_cap:
                return None  # the server wants a longer rest than a same-member retry may take
            wait = max(wait, failure.retry_after)
        return wait if wait < self._remaining() else None

    def _served(self, pool: PoolConfig, sel: Selection, attempt: int, out: Outcome) -> Generator[Action, Outcome, None]:
        yield Notify(self._attempt_event(pool, sel, attempt, None, out, next_step="return"))
        got = yield ReportSuccess(sel)
        if got.error is not None:
            # The request itself succeeded; losing its bookkeeping must not lose its result.
            _log.warning("pool %r: report_success for %r failed: %s", pool.name, sel.member.id, got.error)
        elif isinstance(got.value, SuccessResult) and got.value.transitioned:
            yield Notify(report_transition(pool, sel, "success", None, got.value))
        rest = preemptive_cooldown(_headers_of(out.value))
        if rest is not None:
            # The window is spent: cool the member now rather than let the next request meet the 429.
            got = yield ReportFailure(sel, "rate_limited", rest)
            if got.error is not None:
                _log.warning("pool %r: pre-emptive cooldown of %r failed: %s", pool.name, sel.member.id, got.error)
            elif isinstance(got.value, FailureResult) and got.value.transitioned:
                yield Notify(report_transition(pool, sel, "preemptive", "rate_limited", got.value))
        yield Return(out.result)

    def _report(
        self, pool: PoolConfig, sel: Selection, kind: str, retry_after: float | None
    ) -> Generator[Action, Outcome, FailureResult | None]:
        got = yield ReportFailure(sel, kind, retry_after)
        if got.error is not None:
            yield Raise(got.error, cause=self._last_error)
            return None
        result: FailureResult = got.value
        return result

    # -- bookkeeping for the final error --

    def _record(self, pool: str, member: str, failure: Failure, error: Exception | None) -> None:
        key = (pool, member)
        before = self._causes.pop(key, None)
        attempts = (before.attempts if before is not None else 0) + 1
        self._causes[key] = Cause(pool=pool, member=member, failure=failure, attempts=attempts, error=error)
        if error is not None:
            self._last_error = error

    def _note(self, pool: str, note: str) -> None:
        self._causes.pop((pool, None), None)
        self._causes[(pool, None)] = Cause(pool=pool, note=note)

    def _soonest_recovery(self) -> Generator[Action, Outcome, float | None]:
        soonest: float | None = None
        for pool in self.pools:
            got = yield ReadSnapshot(pool.name)
            if got.error is not None:
                continue  # the call already failed; a missing retry_at is better than a hidden cause
            _, ready = _recovery(pool, got.value, set(), include_available=True)
            if ready is not None and (soonest is None or ready < soonest):
                soonest = ready
        return soonest

    def _attempt_event(
        self,
        pool: PoolConfig,
        sel: Selection,
        attempt: int,
        failure: Failure | None,
        out: Outcome,
        *,
        next_step: NextStep,
        backoff: float | None = None,
    ) -> AttemptEvent:
        status = failure.status if failure is not None else safe_attr(out.value, "status_code")
        return AttemptEvent(
            pool=pool.name,
            member=sel.member.id,
            attempt=attempt,
            number=self._number,
            kind=failure.kind if failure is not None else None,
            status=status if isinstance(status, int) else None,
            code=failure.code if failure is not None else None,
            retry_after=failure.retry_after if failure is not None else None,
            backoff=backoff,
            next=next_step,
            degraded=sel.degraded,
            elapsed=out.elapsed,
        )


# -- pure helpers of the plan -----------------------------------------------------------------------


def _next_untried(pool: PoolConfig, snap: Snapshot, tried: set[str], *, after: str) -> Member | None:
    """The first available member this pass has not tried, scanning forward from ``after`` and wrapping,
    as the sticky pointer itself would move."""
    ids = [m.id for m in pool.members]
    start = ids.index(after) + 1 if after in ids else 0
    states = {state.id: state for state in snap.members}
    for offset in range(len(ids)):
        member = pool.members[(start + offset) % len(ids)]
        state = states.get(member.id)
        if member.id not in tried and state is not None and state.available and snap.skipped_until is None:
            return member
    return None


def _recovery(
    pool: PoolConfig, snap: Snapshot, tried: set[str], *, include_available: bool = False
) -> tuple[Member | None, float | None]:
    """The untried member that recovers soonest (for the degraded policy), and when the pool as a whole
    can serve again (unix seconds, server time); members parked until unparked never count."""
    by_id = {m.id: m for m in pool.members}
    candidate: tuple[float, Member] | None = None
    soonest: float | None = None
    for state in snap.members:
        ready = state.ready_at
        if ready is None:
            if not include_available:
                continue
            ready = snap.now
        if math.isinf(ready):
            continue
        if soonest is None or ready < soonest:
            soonest = ready
        member = by_id.get(state.id)
        if member is not None and state.id not in tried and (candidate is None or ready < candidate[0]):
            candidate = (ready, member)
    if soonest is not None and snap.skipped_until is not None:
        soonest = max(soonest, snap.skipped_until)
    return (candidate[1] if candidate else None), soonest


def _redact(failure: Failure, member: Member) -> Failure:
    secret = member.secret()
    if secret and len(secret) >= 6 and secret in failure.message:
        return replace(failure, message=failure.message.replace(secret, "***"))
    return failure


def _headers_of(value: Any) -> Any:
    if is_response(value):
        return value.headers
    headers = safe_attr(value, "headers")
    if headers is not None:
        return headers  # openai/anthropic ``with_raw_response`` objects
    response = safe_attr(value, "response")
    return response.headers if is_response(response) else None  # SDK Stream objects


def _acquire_transition(pool: PoolConfig, sel: Selection) -> TransitionEvent:
    return TransitionEvent(
        pool=pool.name,
        source="acquire",
        events=sel.events,
        member=None,
        kind=None,
        active=None if sel.degraded or pool.strategy == "round_robin" else sel.member.id,
        exhausted=sel.degraded,
        epoch=sel.epoch,
        generation=sel.generation,
    )


def cooldown_hint(pool: PoolConfig, failure: Failure) -> float | None:
    """The rest a failure report asks for: the provider's hint, else, for Anthropic's in-band or 529
    ``overloaded_error`` without one, the pool's ``overloaded`` rest; None lets the store decide."""
    if failure.retry_after is None and failure.code == "overloaded_error":
        return pool.cooldown.overloaded
    return failure.retry_after


def report_transition(
    pool: PoolConfig,
    sel: Selection,
    source: TransitionSource,
    kind: Any,
    result: FailureResult | SuccessResult,
) -> TransitionEvent:
    """The hook record of a report that made a transition (also the continuation's report)."""
    return TransitionEvent(
        pool=pool.name,
        source=source,
        events=result.events,
        member=sel.member.id,
        kind=kind,
        active=result.active,
        exhausted=result.exhausted,
        epoch=result.epoch,
        generation=result.generation,
        cooling_until=result.cooling_until if isinstance(result, FailureResult) else None,
    )

"""Observers of the failover executor: a ``Hook`` is any callable taking one frozen event record.

Two records reach every hook. ``AttemptEvent``: one per attempt, with what the executor does next.
``TransitionEvent``: one per pool transition this worker made, i.e. only for the single caller
fleet-wide whose script won it (``result.transitioned``), so a notifier plugged in here sends one
notice per real transition however many workers saw the failure.

A third, ``CallEvent``, marks the boundaries of a call (its start, the start of each attempt, its end,
however it ends) for tracing and latency. It reaches only hooks that ask for it with a true
``call_events`` attribute, so a hook written for the first two records never meets a third.

Records hold ids, kinds, status codes and times: never a secret, a header or a provider message.
A hook that raises is logged and ignored: observers must not break the request they observe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

from coordinator.core.config import PoolConfig
from coordinator.core.kinds import FailureKind

#: What the executor does after an attempt.
NextStep = Literal["return", "retry", "next_member", "next_pool", "raise"]
#: Which store call made a transition.
TransitionSource = Literal["acquire", "failure", "success", "preemptive"]


@dataclass(frozen=True, kw_only=True)
class AttemptEvent:
    """One attempt of ``coord.call`` on one member."""

    pool: str
    member: str
    #: 1-based count of attempts on this member within this call.
    attempt: int
    #: 1-based count of attempts within the whole call (all members, all pools).
    number: int
    #: None when the attempt succeeded.
    kind: FailureKind | None
    status: int | None = None
    code: str | None = None
    #: The provider's hint, seconds.
    retry_after: float | None = None
    #: Seconds slept before retrying the same member; None unless ``next`` is "retry".
    backoff: float | None = None
    next: NextStep = "return"
    #: True when the member was tried although the pool was exhausted (``on_exhausted="degraded"``).
    degraded: bool = False
    #: Seconds the attempt took (until its first item, for a stream).
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.kind is None


@dataclass(frozen=True, kw_only=True)
class TransitionEvent:
    """A transition of a pool's shared state that this worker's own store call made."""

    pool: str
    source: TransitionSource
    #: Event types the store wrote to the pool's stream, in order (e.g. ``("failover",)``).
    events: tuple[str, ...]
    #: The member the report was about (None for an acquire that moved the pointer by itself).
    member: str | None
    kind: FailureKind | None
    active: str | None
    exhausted: bool
    epoch: str
    generation: int
    #: The member's cooling deadline after the report, unix seconds (server time).
    cooling_until: float | None = None


#: Which boundary of a call a ``CallEvent`` marks.
CallPhase = Literal["start", "attempt", "end"]


@dataclass(frozen=True, kw_only=True)
class CallEvent:
    """A boundary of one ``coord.call``, delivered in the caller's thread (or task) in this order:
    ``start``, then ``attempt`` just before each attempt runs (its ``AttemptEvent`` follows when it is
    over), then ``end`` exactly once, also when the call raised or was cancelled.

    Only hooks with a true ``call_events`` attribute receive it (see the module docstring).
    """

    phase: CallPhase
    #: The pools of the call, in chain order.
    pools: tuple[str, ...]
    #: For ``attempt``: the pool and member about to be tried, and the member's configured model.
    pool: str | None = None
    member: str | None = None
    model: str | None = None
    #: For ``attempt``: 1-based try of this member within the call; ``number`` counts the whole call.
    attempt: int = 0
    number: int = 0
    #: For ``end``: seconds since ``start``, and the class name of the exception the call raised
    #: (None when it returned; a request error handed back as a response still returns).
    elapsed: float = 0.0
    error: str | None = None


HookEvent = AttemptEvent | TransitionEvent


class Hook(Protocol):
    """An observer: ``def hook(event: AttemptEvent | TransitionEvent) -> None``."""

    def __call__(self, event: HookEvent, /) -> None: ...


_log = logging.getLogger("coordinator")


def dispatch(hooks: Iterable[Hook], event: HookEvent | CallEvent) -> None:
    for hook in hooks:
        try:
            hook(event)  # type: ignore[arg-type]  # a CallEvent only reaches hooks that asked for it
        except Exception:
            _log.exception("coordinator hook %r failed on %s", hook, type(event).__name__)


class CallTrace:
    """Sends one call's ``CallEvent``s to the hooks that asked for them; costs nothing when none did."""

    def __init__(self, hooks: Sequence[Hook], pools: Sequence[PoolConfig], clock: Callable[[], float] = time.monotonic):
        self._hooks = [hook for hook in hooks if getattr(hook, "call_events", False) is True]
        self._pools = tuple(pool.name for pool in pools) if self._hooks else ()
        self._clock = clock
        self._started = 0.0
        self._number = 0

    def start(self) -> None:
        if self._hooks:
            self._started = self._clock()
            dispatch(self._hooks, CallEvent(phase="start", pools=self._pools))

    def attempt(self, pool: str, member: str, model: str | None, attempt: int) -> None:
        self._number += 1
        if self._hooks:
            dispatch(self._hooks, CallEvent(phase="attempt", pools=self._pools, pool=pool, member=member,
                                            model=model, attempt=attempt, number=self._number))

    def end(self, error: BaseException | None) -> None:
        if self._hooks:
            elapsed = self._clock() - self._started
            name = type(error).__name__ if error is not None else None
            dispatch(self._hooks, CallEvent(phase="end", pools=self._pools, elapsed=elapsed, error=name))


class LoggingHook:
    """Logs every event with its fields in ``extra=`` (keys prefixed ``coord_``), for JSON log handlers.

    Successful attempts log at DEBUG, failed ones at ``level`` (WARNING by default), transitions at
    ``transition_level`` (WARNING).
    """

    def __init__(
        self,
        logger: logging.Logger | str = "coordinator",
        level: int = logging.WARNING,
        transition_level: int = logging.WARNING,
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level
        self.transition_level = transition_level

    def __call__(self, event: HookEvent) -> None:
        fields = {f"coord_{key}": value for key, value in asdict(event).items()}
        fields["coord_event"] = "attempt" if isinstance(event, AttemptEvent) else "transition"
        if isinstance(event, AttemptEvent):
            if event.ok:
                self.logger.debug("%s/%s: attempt %d succeeded", event.pool, event.member, event.number, extra=fields)
                return
            backoff = f" after {event.backoff:.3f}s" if event.backoff is not None else ""
            self.logger.log(
                self.level,
                "%s/%s: attempt %d failed: %s (status %s); next: %s%s",
                event.pool,
                event.member,
                event.number,
                event.kind,
                event.status,
                event.next,
                backoff,
                extra=fields,
            )
            return
        self.logger.log(
            self.transition_level,
            "%s: %s (member %s, kind %s); active now %s%s",
            event.pool,
            ",".join(event.events) or "transition",
            event.member,
            event.kind,
            event.active,
            ", pool exhausted" if event.exhausted else "",
            extra=fields,
        )

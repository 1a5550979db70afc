"""Per-call bookkeeping shared by the metrics and tracing hooks.

A hook instance observes every call of a coordinator, from many threads or tasks at once, and the
records carry no call id. ``CallEvent``s arrive in the caller's own thread (or task), so the calls
open in one thread or task are a stack kept in a ``ContextVar``: the top is the call an attempt
belongs to (a ``coord.call`` made inside another call's ``fn`` nests).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from coordinator import AttemptEvent, CallEvent

#: Exceptions that mean the caller gave up, not that the call failed.
CANCELLED = frozenset({"CancelledError", "KeyboardInterrupt", "GeneratorExit", "SystemExit"})


@dataclass
class CallState:
    pools: tuple[str, ...]
    #: The pool of the latest attempt, for counting moves to a later pool of the chain.
    pool: str | None = None
    member: str | None = None
    model: str | None = None
    attempts: int = 0
    transitioned: bool = False
    #: The last attempt's result, once it is known.
    last: AttemptEvent | None = None
    #: Room for what a particular hook keeps per call (spans, for the tracing hook).
    extra: dict[str, Any] = field(default_factory=dict)

    def fallback_from(self, event: CallEvent) -> str | None:
        """The pool this attempt falls back from, when it moves the call to a later pool of its chain."""
        if event.pool is None or event.pool not in self.pools:
            return None
        current = self.pool if self.pool is not None else self.pools[0]
        if current in self.pools and self.pools.index(event.pool) > self.pools.index(current):
            return current
        return None


def outcome(state: CallState, event: CallEvent) -> tuple[str, str | None]:
    """``ok``, ``error`` or ``cancelled``, and the error type: the exception's class name, or the failure
    kind of a request error that was handed back to the caller as a response."""
    if event.error is not None:
        return ("cancelled" if event.error in CANCELLED else "error"), event.error
    if state.last is not None and not state.last.ok and state.last.next == "raise":
        return "error", state.last.kind
    return "ok", None


S = TypeVar("S", bound=CallState)


class CallStack(Generic[S]):
    """The open calls of the current thread or task, innermost last."""

    def __init__(self, name: str) -> None:
        self._var: ContextVar[tuple[S, ...]] = ContextVar(name, default=())

    def push(self, state: S) -> None:
        self._var.set((*self._var.get(), state))

    def top(self) -> S | None:
        stack = self._var.get()
        return stack[-1] if stack else None

    def pop(self) -> S | None:
        stack = self._var.get()
        if not stack:
            return None
        self._var.set(stack[:-1])
        return stack[-1]

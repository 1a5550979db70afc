"""The blocking half of what the drivers do differently by nature (see ``io_async``): the generated
drivers in ``_sync/`` import these names instead of ``io_async``'s."""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import redis

from coordinator.core.config import Member
from coordinator.core.errors import StoreUnavailableError
from coordinator.core.types import Selection
from coordinator.drivers.base import is_stream, note_plain_type, plain_types, resume
from coordinator.rules.classify import is_error_response
from coordinator.rules.plan import ATTEMPT_SELECTION, Outcome
from coordinator.store.connect import connect
from coordinator.store.notices import NoticeListener

T = TypeVar("T")

__all__ = [
    "IS_ASYNC", "CallFn", "Lock", "NoticeListener", "RedisClient", "attempt", "close_quietly", "connect",
    "LoopBinding", "check_at_start", "close_within", "default_sleep", "fake_redis", "in_background", "maybe_await",
    "to_thread",
]

#: What ``Coordinator.call`` runs per attempt: a function of the member.
CallFn = Callable[[Member], T]
IS_ASYNC = False
RedisClient = redis.Redis
Lock = threading.Lock
default_sleep: Callable[[float], None] = time.sleep


def fake_redis() -> Any:
    """A private in-process Redis (fakeredis, with Lua) for the local stand-in."""
    import fakeredis

    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def maybe_await(value: Any) -> Any:
    return value


def close_quietly(value: Any) -> None:
    close = getattr(value, "close", None)
    if close is not None:
        # It already failed; the failure that matters is the one being handled.
        with contextlib.suppress(Exception):
            close()


def _not_awaited(value: Any) -> TypeError:
    close = getattr(value, "close", None)
    if close is not None:
        close()  # a never-awaited coroutine warns at garbage collection otherwise
    return TypeError(f"fn returned {type(value).__name__}; use AsyncCoordinator.call for async functions")


def _read_error(value: Any) -> None:
    read = getattr(value, "read", None)
    if read is not None:
        with contextlib.suppress(Exception):
            read()


def attempt(fn: Callable[[Member], Any], selection: Selection, clock: Callable[[], float]) -> Outcome:
    """Runs ``fn(selection.member)`` (see ``_attempt``) with ``ATTEMPT_SELECTION`` set to ``selection``: a
    stream it opens is reported under that token if it breaks later."""
    running = ATTEMPT_SELECTION.set(selection)
    try:
        return _attempt(fn, selection.member, clock)
    finally:
        ATTEMPT_SELECTION.reset(running)


def _attempt(fn: Callable[[Member], Any], member: Member, clock: Callable[[], float]) -> Outcome:
    """Runs ``fn(member)``; for a stream, waits for its first item, so a stream that fails before it
    delivered anything is failed over like any other error."""
    started = clock()
    try:
        value = fn(member)
    except Exception as exc:
        return Outcome(error=exc, elapsed=clock() - started)
    if type(value) in plain_types:  # most values: a response or a result, of a type seen before
        if is_error_response(value):
            _read_error(value)
        return Outcome(value=value, result=value, elapsed=clock() - started)
    if inspect.isawaitable(value) or isinstance(value, AsyncIterator):
        raise _not_awaited(value)
    note_plain_type(value)
    if is_error_response(value):
        # An unread streamed error response hides its body, and with it codes like insufficient_quota.
        _read_error(value)
    if is_stream(value):
        try:
            first = next(value)
        except StopIteration:
            return Outcome(value=value, result=value, elapsed=clock() - started)
        except Exception as exc:
            close_quietly(value)
            return Outcome(error=exc, elapsed=clock() - started)
        return Outcome(value=value, result=resume(first, value), elapsed=clock() - started)
    return Outcome(value=value, result=value, elapsed=clock() - started)


def to_thread(fn: Callable[..., T], *args: Any) -> T:
    """Runs a blocking helper (here, in this thread: the sync driver blocks anyway)."""
    return fn(*args)


class LoopBinding:
    """A sync coordinator belongs to no event loop (see ``io_async.LoopBinding``)."""

    def rebind(self) -> bool:
        return False


def check_at_start(store: Any) -> None:
    """A misconfiguration fails the constructor; an outage does not: the first call tries Redis as
    usual (a start-up check that merely timed out on a busy machine must not send it to the stand-in)."""
    with contextlib.suppress(StoreUnavailableError):
        store.check()


def close_within(client: Any, seconds: float) -> None:
    """Closes ``client`` (bounded by its socket timeouts; ``seconds`` matters only to asyncio)."""
    with contextlib.suppress(Exception):
        client.close()


def in_background(make: Callable[[], Any]) -> None:
    """Runs ``make()`` now, ignoring its errors (the asyncio twin cannot wait, this one can)."""
    with contextlib.suppress(Exception):
        make()

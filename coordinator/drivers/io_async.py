"""The asyncio half of what the drivers do differently by nature: locks, sleeping, the embedded
stand-in's client, the change-notice listener, and running one attempt of the caller's function.

The drivers in ``_async/`` import these names from here; their generated sync twins in ``_sync/``
import the same names from ``io_sync`` (see ``scripts/unasync.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio

from coordinator.core.config import Member
from coordinator.core.errors import CoordinatorError
from coordinator.core.types import Selection
from coordinator.drivers.base import is_stream, note_plain_type, plain_types, resume
from coordinator.rules.classify import is_error_response
from coordinator.rules.plan import ATTEMPT_SELECTION, Outcome
from coordinator.store.connect import connect_async as connect
from coordinator.store.notices import AsyncNoticeListener as NoticeListener

T = TypeVar("T")

__all__ = [
    "IS_ASYNC", "CallFn", "Lock", "NoticeListener", "RedisClient", "attempt", "close_quietly", "connect",
    "LoopBinding", "check_at_start", "close_within", "default_sleep", "fake_redis", "in_background", "maybe_await",
    "to_thread",
]

#: What ``AsyncCoordinator.call`` runs per attempt: a sync or an async function of the member.
CallFn = Callable[[Member], Awaitable[T] | T]
IS_ASYNC = True
RedisClient = redis.asyncio.Redis
Lock = asyncio.Lock
default_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


def fake_redis() -> Any:
    """A private in-process Redis (fakeredis, with Lua) for the local stand-in."""
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)


async def maybe_await(value: Any) -> Any:
    if type(value) is types.CoroutineType:  # what an async function returns: no need to ask inspect
        return await value
    return await value if inspect.isawaitable(value) else value


async def _aresume(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()


async def _call_first(value: Any, names: tuple[str, ...]) -> None:
    """Calls (and awaits, if need be) the first of ``names`` that ``value`` has and that works."""
    for name in names:
        method = getattr(value, name, None)
        if method is None:
            continue
        try:
            await maybe_await(method())
            return
        except Exception:
            continue


async def close_quietly(value: Any) -> None:
    # It already failed; the failure that matters is the one being handled.
    await _call_first(value, ("aclose", "close"))


async def attempt(fn: Callable[[Member], Any], selection: Selection, clock: Callable[[], float]) -> Outcome:
    """Runs ``fn(selection.member)`` (see ``_attempt``) with ``ATTEMPT_SELECTION`` set to ``selection``: a
    stream it opens is reported under that token if it breaks later."""
    running = ATTEMPT_SELECTION.set(selection)
    try:
        return await _attempt(fn, selection.member, clock)
    finally:
        ATTEMPT_SELECTION.reset(running)


async def _attempt(fn: Callable[[Member], Any], member: Member, clock: Callable[[], float]) -> Outcome:
    """Runs ``fn(member)``: awaits what it returns, and for a stream, waits for its first item, so a
    stream that fails before it delivered anything is failed over like any other error."""
    started = clock()
    try:
        value = await maybe_await(fn(member))
    except Exception as exc:
        return Outcome(error=exc, elapsed=clock() - started)
    if type(value) in plain_types:  # most values: a response or a result, of a type seen before
        if is_error_response(value):
            await _call_first(value, ("aread", "read"))
        return Outcome(value=value, result=value, elapsed=clock() - started)
    note_plain_type(value)
    if is_error_response(value):
        # An unread streamed error response hides its body, and with it codes like insufficient_quota.
        await _call_first(value, ("aread", "read"))
    try:
        if isinstance(value, AsyncIterator):
            try:
                first = await anext(value)
            except StopAsyncIteration:
                return Outcome(value=value, result=value, elapsed=clock() - started)
            return Outcome(value=value, result=_aresume(first, value), elapsed=clock() - started)
        if is_stream(value):
            try:
                first = next(value)
            except StopIteration:
                return Outcome(value=value, result=value, elapsed=clock() - started)
            return Outcome(value=value, result=resume(first, value), elapsed=clock() - started)
    except Exception as exc:
        await close_quietly(value)
        return Outcome(error=exc, elapsed=clock() - started)
    return Outcome(value=value, result=value, elapsed=clock() - started)


async def to_thread(fn: Callable[..., T], *args: Any) -> T:
    """Runs a blocking helper off the event loop."""
    return await asyncio.to_thread(fn, *args)


class LoopBinding:
    """An asyncio client's connections belong to the event loop that opened them: the coordinator
    binds to the loop that first uses it. A loop that is closed or stopped is replaced (``rebind``
    returns True: the caller renews its connections); another loop running meanwhile is an error."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def rebind(self) -> bool:
        loop = asyncio.get_running_loop()
        old = self._loop
        if old is loop:
            return False
        if old is not None and not old.is_closed() and old.is_running():
            raise CoordinatorError(
                "this AsyncCoordinator is bound to the event loop that first used it, which is still running "
                "in another thread; use one AsyncCoordinator per event loop"
            )
        self._loop = loop
        return old is not None


def check_at_start(store: Any) -> None:
    """A constructor cannot wait: an ``AsyncCoordinator`` checks Redis in ``await check()``."""


async def close_within(client: Any, seconds: float) -> None:
    """Closes ``client``, giving up after ``seconds`` (its sockets are dropped with it then)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.aclose(), seconds)


_background: set[asyncio.Task[Any]] = set()


def in_background(make: Callable[[], Awaitable[Any]]) -> None:
    """Runs ``make()`` on the loop without waiting for it (from a cancelled task, which cannot wait)."""
    async def run() -> None:
        with contextlib.suppress(Exception):
            await make()

    task = asyncio.get_running_loop().create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)

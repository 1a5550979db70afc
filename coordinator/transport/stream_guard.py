"""The stream guard: an event stream reaches the caller whole, or ends in ``StreamInterruptedError``
(docs/design.md, "Timeouts and streams").

The transport primes a successful event stream before handing it over: it reads up to the first
content event (or the end of a stream with none). What goes wrong until then (a stall, an in-band
error such as Anthropic's ``overloaded_error``, a malformed event, a cut) is a failure of that attempt,
failed over like any other, because the caller has nothing yet. After the handover the guard passes on
whole events only, exactly as received and never twice; it raises instead of passing on a malformed
or an error event, and raises instead of ending when the terminal event never came.

What the events mean is ``coordinator.rules.sse`` (pure); this module adds the clock and the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

from coordinator.core.errors import StreamInterruptedError
from coordinator.core.types import Selection
from coordinator.rules.continuation import Splice, Transcript
from coordinator.rules.sse import SseEvent, SseFormat, SseFramer, judge


def _timed_out(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"TimeoutException", "TimeoutError"})


class GuardState:
    """What one stream has delivered and whether it may go on. No I/O: bytes in, bytes out."""

    def __init__(
        self,
        fmt: SseFormat,
        *,
        first_token: float | None,
        idle: float | None,
        deadline_at: float | None,
        pool: str,
        member: str,
        clock: Callable[[], float] = time.monotonic,
        transcript: Transcript | None = None,
        splice: Splice | None = None,
        events: int = 0,
        content_events: int = 0,
        selection: Selection | None = None,
    ) -> None:
        self.fmt = fmt
        self.first_token = first_token
        self.idle = idle
        self.deadline_at = deadline_at
        self.pool = pool
        self.member = member
        self.clock = clock
        self.started = self.last_read = clock()
        #: Events the caller was given (all kinds, and those with content), continuations included.
        self.events = events
        self.content_events = content_events
        #: Content events of this stream itself (a continuation is primed on its own content).
        self.own_content = 0
        self.complete = False
        #: What the caller was given, as a continuation needs it (None: nobody could continue it).
        self.transcript = transcript
        #: For a continuation: how its events are rewritten to follow the caller's.
        self.splice = splice
        #: The selection the attempt that opened this stream was made under: a break is reported under it.
        self.selection = selection
        #: The failure found after the events delivered before it; raised once they are out.
        self.failed: StreamInterruptedError | None = None
        self._framer = SseFramer()

    def error(self, reason: str, detail: str, body: object = None) -> StreamInterruptedError:
        return StreamInterruptedError(reason, detail, pool=self.pool, member=self.member, events=self.events,
                                      content_events=self.content_events, body=body)

    def next_read_limit(self) -> float | None:
        """Seconds the next read may take before the stream counts as stalled (or past its deadline)."""
        now = self.clock()
        limits = []
        if self.idle is not None:
            limits.append(self.last_read + self.idle - now)
        if self.first_token is not None and not self.own_content and not self.complete:
            limits.append(self.started + self.first_token - now)
        if self.deadline_at is not None:
            limits.append(self.deadline_at - now)
        return max(0.0, min(limits)) if limits else None

    def stalled(self) -> StreamInterruptedError:
        now = self.clock()
        if self.deadline_at is not None and now >= self.deadline_at:
            return self.error("deadline", "the call's deadline passed while the stream was running")
        if self.first_token is not None and not self.own_content:
            return self.error("stalled", f"no content within first_token ({self.first_token:g}s)")
        limit = f" ({self.idle:g}s)" if self.idle is not None else ""
        return self.error("stalled", f"nothing arrived for longer than idle{limit}")

    def broken(self, error: BaseException) -> StreamInterruptedError:
        """The connection failed under the stream: a timed-out read is a stall, anything else a cut."""
        if _timed_out(error):
            return self.stalled()
        return self.error("incomplete", f"the connection broke before the terminal event: {error!r}")

    def accept(self, chunk: bytes) -> bytes:
        """The whole, sound events ``chunk`` completes, as bytes to deliver. A bad event stops there:
        the ones before it are returned and ``failed`` says what is wrong, to be raised after them."""
        now = self.clock()
        out = []
        for event in self._framer.feed(chunk):
            try:
                out.append(self._take(event))
            except StreamInterruptedError as exc:
                self.failed = exc
                break
        self.last_read = now
        if self.failed is None and not self.complete and (
                (not self.own_content and self.first_token is not None and now - self.started > self.first_token)
                or (self.deadline_at is not None and now > self.deadline_at)):
            self.failed = self.stalled()
        return b"".join(out)

    def finish(self) -> bytes:
        """At the end of the body: a last unterminated event, then the verdict on the whole stream
        (``failed`` when the terminal event never came)."""
        last = self._framer.flush()
        out = b""
        if last is not None:
            try:
                out = self._take(last)
            except StreamInterruptedError as exc:
                self.failed = exc
                return b""
        if not self.complete:
            self.failed = self.error("incomplete",
                                     f"the stream ended without its terminal event ({_TERMINAL[self.fmt]})")
        return out

    def check(self) -> None:
        """Raises the failure ``accept`` or ``finish`` found, once its events were delivered."""
        if self.failed is not None:
            raise self.failed

    def _take(self, event: SseEvent) -> bytes:
        verdict = judge(self.fmt, event)
        if verdict.malformed is not None:
            raise self.error("malformed", verdict.malformed)
        if verdict.error is not None:
            raise self.error("error_event", f"the provider sent an error event: {event.data[:300]}", verdict.error)
        self.events += 0 if event.empty else 1
        self.content_events += 1 if verdict.content else 0
        self.own_content += 1 if verdict.content else 0
        self.complete = self.complete or verdict.terminal
        if self.splice is not None:
            out = self.splice.rewrite(event, verdict.payload)
            if self.transcript is not None:
                for _, name, payload in out:
                    self.transcript.observe(name, payload)
            return b"".join(raw for raw, _, _ in out)
        if self.transcript is not None:
            self.transcript.observe(event.name, verdict.payload)
        return event.raw

    @property
    def primed(self) -> bool:
        """The caller may have the stream: it has content (or is already complete)."""
        return bool(self.own_content) or self.complete


_TERMINAL: dict[SseFormat, str] = {
    "chat": "data: [DONE] or a finish_reason",
    "responses": "response.completed",
    "messages": "message_stop",
}


# -- driving a response's byte stream ---------------------------------------------------------------


def prime(state: GuardState, chunks: Iterator[bytes]) -> tuple[bytes, bool]:
    """Reads until the stream may be handed over; returns the bytes so far and whether the body ended."""
    out = []
    try:
        for chunk in chunks:
            out.append(state.accept(chunk))
            state.check()
            if state.primed:
                return b"".join(out), False
    except StreamInterruptedError:
        raise
    except Exception as exc:
        raise state.broken(exc) from exc
    out.append(state.finish())
    state.check()
    return b"".join(out), True


async def aprime(state: GuardState, chunks: AsyncIterator[bytes]) -> tuple[bytes, bool]:
    out = []
    while True:
        try:
            chunk = await _next_within(chunks, state.next_read_limit())
        except StopAsyncIteration:
            break
        except StreamInterruptedError:
            raise
        except Exception as exc:
            raise state.broken(exc) from exc
        out.append(state.accept(chunk))
        state.check()
        if state.primed:
            return b"".join(out), False
    out.append(state.finish())
    state.check()
    return b"".join(out), True


async def _next_within(chunks: AsyncIterator[bytes], limit: float | None) -> bytes:
    if limit is None or not _in_asyncio():
        return await anext(chunks)
    async with asyncio.timeout(limit):
        return await anext(chunks)


def _in_asyncio() -> bool:
    try:
        asyncio.current_task()
    except RuntimeError:
        return False
    return True


class Primed:
    """A stream that may be handed to the caller: its guard, what priming read, whether the body ended
    there, the rest of its chunks and the byte stream they come from (to close)."""

    def __init__(self, state: GuardState, head: bytes, ended: bool, chunks: Any, original: Any) -> None:
        self.state = state
        self.head = head
        self.ended = ended
        self.chunks = chunks
        self.original = original


#: What a stream does when it breaks after the handover, given the error and the broken stream's guard:
#: a primed stream that goes on where it broke (a continuation), or raising the error. Sync, or async
#: for async clients.
Recover = Callable[[StreamInterruptedError, GuardState], Any]


class _GuardedStream:
    """The caller's view of a primed stream: what priming read, then the rest, event by event. When it
    breaks, ``recover`` may splice in a continuation; the caller reads on as if nothing happened."""

    def __init__(self, primed: Primed, recover: Recover | None = None) -> None:
        self.current = primed
        self._recover = recover

    @property
    def state(self) -> GuardState:
        return self.current.state

    def _segment(self) -> Iterator[bytes]:
        part = self.current
        state = part.state
        if part.head:
            head, part.head = part.head, b""
            yield head
        if part.ended:
            return
        try:
            for chunk in part.chunks:
                data = state.accept(chunk)
                if data:
                    yield data
                state.check()
        except StreamInterruptedError:
            raise
        except Exception as exc:
            raise state.broken(exc) from exc
        tail = state.finish()
        if tail:
            yield tail
        state.check()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield from self._segment()
                return
            except StreamInterruptedError as exc:
                if self._recover is None:
                    raise
                broken = self.current
                _close_quietly(broken.original)
                self.current = self._recover(exc, broken.state)

    async def _asegment(self) -> AsyncIterator[bytes]:
        part = self.current
        state = part.state
        if part.head:
            head, part.head = part.head, b""
            yield head
        if part.ended:
            return
        while True:
            try:
                chunk = await _next_within(part.chunks, state.next_read_limit())
            except StopAsyncIteration:
                break
            except StreamInterruptedError:
                raise
            except Exception as exc:
                raise state.broken(exc) from exc
            data = state.accept(chunk)
            if data:
                yield data
            state.check()
        tail = state.finish()
        if tail:
            yield tail
        state.check()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async for data in self._asegment():
                    yield data
                return
            except StreamInterruptedError as exc:
                if self._recover is None:
                    raise
                broken = self.current
                await _aclose_quietly(broken.original)
                self.current = await self._recover(exc, broken.state)

    def close(self) -> None:
        self.current.original.close()

    async def aclose(self) -> None:
        await self.current.original.aclose()


def _close_quietly(stream: Any) -> None:
    with contextlib.suppress(Exception):  # it broke already; the error that matters is being handled
        stream.close()


async def _aclose_quietly(stream: Any) -> None:
    with contextlib.suppress(Exception):
        await stream.aclose()


_CLASSES: dict[str, type] = {}


def guarded_stream(lib: ModuleType, primed: Primed, recover: Recover | None = None) -> Any:
    """A byte stream of ``lib`` (httpx or httpx2: clients check the class) that carries the guard."""
    cls = _CLASSES.get(lib.__name__)
    if cls is None:
        cls = type("GuardedStream", (_GuardedStream, lib.SyncByteStream, lib.AsyncByteStream), {})
        _CLASSES[lib.__name__] = cls
    return cls(primed, recover)

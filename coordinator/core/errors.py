"""The exception tree of coordinator. Every error the library raises on purpose is one of these::

    CoordinatorError
    ├── ConfigError              bad config file or value (also a ValueError)
    ├── UnknownPoolError         no pool of that name is configured (also a KeyError)
    ├── UnknownMemberError       no member of that id in the pool (also a KeyError)
    ├── StoreError               the shared state could not be used
    │   ├── StoreUnavailableError    Redis could not be reached in time, or cannot serve now
    │   ├── StoreMisconfiguredError  Redis answers but refuses the credentials, TLS or a grant
    │   └── CorruptStateError        a pool's keys hold something the scripts cannot trust
    ├── PoolExhaustedError       no member of a pool can serve; carries ``retry_at``
    ├── AllMembersFailedError    ``coord.call`` found no member in its pool or chain that served;
    │                            lists every cause, carries ``retry_at``
    └── StreamInterruptedError   a streamed answer broke after the caller got part of it (or, inside
                                 the transport, before): no terminal event, a stall, an in-band error
                                 event, a malformed event; carries ``reason`` and what was delivered

``coord.call`` raises the caller's own exception unchanged for request, content-policy and
context-length failures; it raises ``AllMembersFailedError`` only when failing over ran out.

Config objects built in Python raise pydantic's ``ValidationError`` as usual.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coordinator.core.kinds import Failure


class CoordinatorError(Exception):
    """Root of every error coordinator raises on purpose."""


class ConfigError(CoordinatorError, ValueError):
    """A config file or value is invalid; the message names the field."""


class UnknownPoolError(CoordinatorError, KeyError):
    """The named pool is not configured."""

    def __init__(self, pool: str, known: list[str] | None = None) -> None:
        self.pool = pool
        hint = f" (configured: {', '.join(known)})" if known else ""
        super().__init__(f"unknown pool {pool!r}{hint}")

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownMemberError(CoordinatorError, KeyError):
    """The pool has no member with that id."""

    def __init__(self, pool: str, member: str, message: str = "") -> None:
        self.pool = pool
        self.member = member
        super().__init__(message or f"pool {pool!r} has no member {member!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class StoreError(CoordinatorError):
    """The shared state in Redis could not be used."""


class StoreUnavailableError(StoreError):
    """Redis could not be reached, or did not answer in time."""


class StoreMisconfiguredError(StoreError):
    """Redis answers but refuses this worker: wrong or missing credentials, a TLS handshake that
    fails, a permission the Redis user lacks. It will not pass by itself; the message names it."""


class CorruptStateError(StoreError):
    """A pool's Redis keys hold data the scripts refuse to trust. Nothing was written."""


class PoolExhaustedError(CoordinatorError):
    """No member of the pool can serve now. ``retry_at`` is the soonest recovery (unix seconds),
    or None when every member is parked until an operator unparks it."""

    def __init__(self, pool: str, retry_at: float | None, message: str | None = None) -> None:
        self.pool = pool
        self.retry_at = retry_at
        super().__init__(message or f"pool {pool!r} has no member that can serve")


@dataclass(frozen=True, kw_only=True)
class Cause:
    """Why one member (or, with ``member=None``, a whole pool) did not serve a ``coord.call``."""

    pool: str
    member: str | None = None
    #: The classified failure of the member's last attempt; None for a pool-level cause.
    failure: Failure | None = None
    attempts: int = 0
    #: The exception the last attempt raised (None for an error response or a pool-level cause).
    error: BaseException | None = field(default=None, repr=False, compare=False)
    #: Pool-level reason, e.g. "exhausted" or "every member is parked".
    note: str = ""

    def __str__(self) -> str:
        where = f"{self.pool}/{self.member}" if self.member else self.pool
        what = str(self.failure) if self.failure is not None else self.note
        if self.failure is not None and self.note:
            what += f"; {self.note}"
        tries = f" after {self.attempts} attempt{'s' if self.attempts != 1 else ''}" if self.attempts else ""
        return f"{where}: {what}{tries}"


def _format_time(stamp: float) -> str:
    moment = datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")
    return f"{moment} (in {max(0.0, stamp - time.time()):.0f}s)"


class AllMembersFailedError(CoordinatorError):
    """``coord.call`` ran out of members: every member of every pool of the call failed or could not
    serve, or the call's deadline ended it first (``timed_out``).

    ``causes`` lists each member tried with its last failure, and each pool that could not offer a
    member; ``retry_at`` is the soonest time (unix seconds, server clock) any member of the call's
    pools recovers, or None when none will without an operator.
    """

    _SHOWN = 20

    def __init__(
        self,
        pools: Sequence[str],
        causes: Sequence[Cause],
        retry_at: float | None,
        *,
        timed_out: bool = False,
    ) -> None:
        self.pools = tuple(pools)
        self.causes = tuple(causes)
        self.retry_at = retry_at if retry_at is None or math.isfinite(retry_at) else None
        self.timed_out = timed_out
        scope = f"pool {self.pools[0]!r}" if len(self.pools) == 1 else f"chain {' -> '.join(self.pools)}"
        head = "deadline reached before any member of" if timed_out else "no member of"
        lines = [f"{head} {scope} served the call"]
        lines += [f"  {cause}" for cause in self.causes[: self._SHOWN]]
        if len(self.causes) > self._SHOWN:
            lines.append(f"  ... and {len(self.causes) - self._SHOWN} more")
        if self.retry_at is not None:
            lines.append(f"  soonest recovery: {_format_time(self.retry_at)}")
        super().__init__("\n".join(lines))

    @property
    def failures(self) -> tuple[Failure, ...]:
        return tuple(cause.failure for cause in self.causes if cause.failure is not None)


class StreamInterruptedError(CoordinatorError):
    """A server-sent-event stream did not end as a complete answer (docs/design.md, "Timeouts and streams").

    Raised from the stream the caller reads, never instead of it: the events before it were real and
    are not replayed. ``reason`` is one of:

    - ``"incomplete"``: the stream ended (or the connection closed) without its terminal event
      (``data: [DONE]`` / ``finish_reason``, ``response.completed``, ``message_stop``);
    - ``"stalled"``: nothing arrived for longer than the pool's ``idle`` (or ``first_token``) limit;
    - ``"error_event"``: the provider sent an error inside the stream (``event: error``, an OpenAI error
      object); ``body`` holds it, so classification reads its type (e.g. ``overloaded_error``);
    - ``"malformed"``: an event whose data is not the JSON the format promises;
    - ``"deadline"``: the call's deadline passed while the stream was still running.
    """

    REASONS = ("incomplete", "stalled", "error_event", "malformed", "deadline")

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        pool: str | None = None,
        member: str | None = None,
        events: int = 0,
        content_events: int = 0,
        body: object = None,
    ) -> None:
        self.reason = reason
        self.pool = pool
        self.member = member
        #: Events the caller had been given (all kinds) and how many of them carried content.
        self.events = events
        self.content_events = content_events
        #: For ``error_event``: the error object the provider sent.
        self.body = body
        where = f" from {pool}/{member}" if pool and member else ""
        super().__init__(
            f"stream{where} interrupted ({reason}) after {events} events, {content_events} with content: {detail}"
        )

"""What the transport does when a stream breaks after the caller started reading it (docs/design.md,
"Continuation").

The broken member's failure is reported once, as a transient failure (a stall with the timeout flag),
through the same classification and ``report_failure`` as any failed attempt. Then, when the caller
has been given plain text only and a next candidate member declares ``continuation``, the request is
sent again with that text as an assistant prefill, through ``coord.call`` over the chain from the
broken member's pool on, and the continuation is spliced into the stream the caller is reading
(``rules/continuation.py`` rewrites its events). Otherwise, or when that fails, the caller gets the
original ``StreamInterruptedError``.

How the next candidate is found: the continuation's ``coord.call`` (``max_retries=0``) is handed the
broken member's failure as its first attempt when its first pick is that member, so the plan reports
it and moves on exactly as for any failed attempt (the next untried member of the pool, the next pool
of the chain, a near recovery, the deadline). When its first pick is another member, the failure is
reported directly under the token the broken stream's attempt was made under
(``GuardState.selection``). A candidate that does not declare continuation, refused a prefill before
or already broke this answer ends the attempt to continue.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from coordinator.core.config import Member, PoolConfig
from coordinator.core.errors import StreamInterruptedError
from coordinator.core.kinds import Failure
from coordinator.core.types import Selection
from coordinator.rules.classify import classify_with
from coordinator.rules.continuation import Prefill, Splice, Transcript, continues, prefill_body, refuses_prefill
from coordinator.rules.hooks import dispatch
from coordinator.rules.plan import cooldown_hint, report_transition
from coordinator.rules.sse import SseFormat
from coordinator.transport.stream_guard import _GuardedStream

if TYPE_CHECKING:
    from coordinator.transport.failover import _Call
    from coordinator.transport.stream_guard import GuardState, Primed

_log = logging.getLogger("coordinator.transport")

#: Continuations of one answer at most: each one follows a break of a member not yet broken.
MAX_CONTINUATIONS = 3
#: A continuation with less of the call's deadline left than this is not started.
_SHORTEST = 0.05


@dataclass(frozen=True)
class Resuming:
    """What a continuation attempt's guard goes on from: the broken stream's guard and the splice."""

    state: GuardState
    splice: Splice


class PrefillRefusedError(Exception):
    """The member answered the continuation with a 400 about the prefill; it is not asked again."""


class CannotContinueError(Exception):
    """The next candidate member does not continue this answer (its setting, a refusal, a break)."""


def _is_ours(error: object) -> bool:
    return isinstance(error, PrefillRefusedError | CannotContinueError)


# -- which pools may continue at all (cached: a pool's members are many, its config frozen) -----------

_MAY_CONTINUE: dict[int, tuple[PoolConfig, dict[str, bool]]] = {}


def _pool_may_continue(pool: PoolConfig, fmt: SseFormat) -> bool:
    entry = _MAY_CONTINUE.get(id(pool))
    if entry is None or entry[0] is not pool:
        if len(_MAY_CONTINUE) > 256:
            _MAY_CONTINUE.clear()
        entry = _MAY_CONTINUE[id(pool)] = (pool, {})
    known = entry[1]
    if fmt not in known:
        known[fmt] = any(continues(pool.continuation_of(m), fmt) for m in pool.members)
    return known[fmt]


def guard_options(call: _Call, after: Resuming | None) -> dict[str, Any]:
    """The transcript (and for a continuation, the splice and the counts) a stream's guard keeps."""
    if after is not None:
        return {"transcript": copy.deepcopy(after.state.transcript), "splice": after.splice,
                "events": after.state.events, "content_events": after.state.content_events}
    fmt = call.format
    if call.body is None or fmt is None or not call.streaming or call.coordinator is None:
        return {}
    if any(_pool_may_continue(call.coordinator.pool_config(name), fmt) for name in call.pools):
        return {"transcript": Transcript(fmt)}
    return {}


#: Per coordinator (so per process): members that refused a prefill, as (pool, member, format).
_REFUSALS: weakref.WeakKeyDictionary[Any, set[tuple[str, str, str]]] = weakref.WeakKeyDictionary()


def refusals(coordinator: Any) -> set[tuple[str, str, str]]:
    return _REFUSALS.setdefault(coordinator, set())


def recovery(call: _Call, response: Any, after: Resuming | None) -> Any:
    """The ``recover`` of a handed-over stream (None for a continuation: its caller's stream has one)."""
    if after is not None or call.coordinator is None or call.format is None:
        return None
    return (_AsyncResume if call.coordinator.is_async else _SyncResume)(call, response)


def _withdraw(coordinator: Any, state: GuardState) -> None:
    """Takes back the success the hand-over of ``state``'s stream noted (docs/design.md, "Failure
    counts"): the request failed after all, and the report about to be sent must not restart the
    failure count on its account. Only that attempt's own success is taken back."""
    if state.selection is None:
        return
    try:
        coordinator.pool(state.pool).withdraw_success(state.selection)
    except Exception as exc:  # bookkeeping only: the caller's error is the stream's
        _log.warning("pool %r: taking back the success of %r failed: %s", state.pool, state.member, exc)


# -- one break ---------------------------------------------------------------------------------------


class _Break:
    """One broken stream being dealt with: its error, and whether its failure was reported yet."""

    def __init__(self, error: StreamInterruptedError, state: GuardState) -> None:
        self.error = error
        self.state = state
        self.reported = False


class _Resume:
    """Shared by the sync and async recover of one handed-over response."""

    def __init__(self, call: _Call, response: Any) -> None:
        self.call = call
        self.response = response
        self.coordinator = call.coordinator
        self.broken: set[tuple[str, str]] = set()
        self.count = 0

    def _eligible(self, pool: PoolConfig, member: Member) -> bool:
        fmt = self.call.format
        return fmt is not None and continues(pool.continuation_of(member), fmt) \
            and (pool.name, member.id, fmt) not in refusals(self.coordinator) \
            and (pool.name, member.id) not in self.broken

    def _chain(self, job: _Break) -> tuple[list[str], Prefill] | None:
        """The chain a continuation may go to and its request body, or None when it is not continued."""
        call, error, transcript = self.call, job.error, job.state.transcript
        if error.reason == "deadline" or self.count >= MAX_CONTINUATIONS or call.body is None:
            return None
        if transcript is None or not transcript.continuable or call.format is None:
            return None
        remaining = call.remaining()
        if (remaining is not None and remaining < _SHORTEST) or error.pool not in call.pools:
            return None
        chain = call.pools[call.pools.index(error.pool):]
        configs = [self.coordinator.pool_config(name) for name in chain]
        if not any(self._eligible(pool, member) for pool in configs for member in pool.members):
            return None
        prefill = prefill_body(call.body, call.format, transcript.text)
        return None if prefill is None else (chain, prefill)

    def _classify(self, error: object) -> Failure | None:
        if _is_ours(error):
            return Failure(kind="request", message=str(error))
        return self.call.classify(error)

    def _failure(self, job: _Break) -> tuple[PoolConfig, Member, Failure, float | None] | None:
        """What the break's report is, or None when none is sent (it is not a cooling failure, its
        member is unknown); marks the break reported either way."""
        job.reported = True
        error = job.error
        if error.pool is None or error.member is None:
            return None
        pool = self.coordinator.pool_config(error.pool)
        member = pool.member(error.member)
        classifier = self.coordinator.classifier
        failure = classify_with(error, (classifier,) if classifier is not None else ())
        if member is None or not failure.cools:
            return None
        return pool, member, failure, cooldown_hint(pool, failure)

    def _report_of(self, job: _Break) -> tuple[Any, PoolConfig, Selection, Failure, float | None] | None:
        """The pool handle, pool, token, failure and hint of the break's own report; None: none is sent."""
        found = self._failure(job)
        if found is None:
            return None
        pool, member, failure, hint = found
        try:
            handle = self.coordinator.pool(pool.name)
        except Exception as exc:
            self._report_failed(pool, member, exc)
            return None
        selection = self._selection(job, member, handle)
        if selection is None:
            _log.debug("pool %r: the break of %r's stream is not reported: its attempt's token is not known",
                       pool.name, member.id)
            return None
        return handle, pool, selection, failure, hint

    @staticmethod
    def _report_failed(pool: PoolConfig, member: Member, exc: Exception) -> None:
        # The caller's error is the stream's, not the bookkeeping's.
        _log.warning("pool %r: reporting the broken stream of %r failed: %s", pool.name, member.id, exc)

    @staticmethod
    def _selection(job: _Break, member: Member, handle: Any) -> Selection | None:
        """The token the break is reported under: the one its attempt was made under (docs/design.md,
        "Tokens and exactly-once events"), or the one the hand-over's own success moved the pool to
        when it made a transition (a probe passed, a failback: the member is used under that one
        since), as a plain failure report (its probe lease, if any, was spent on the hand-over's
        success). None when the attempt's selection is not known."""
        local = job.state.selection
        if local is None or local.member.id != member.id:
            return None
        moved_token = getattr(handle, "moved_token", None)  # a Caller's pools need not keep one
        moved = moved_token(local) if moved_token is not None else None
        epoch, generation = (local.epoch, local.generation) if moved is None else moved
        return replace(local, member=member, epoch=epoch, generation=generation, lease="", degraded=False,
                       probing=False, transitioned=False, events=())

    def _notify(self, pool: PoolConfig, selection: Selection, kind: str, result: Any) -> None:
        if result.transitioned and self.coordinator.hooks:
            dispatch(self.coordinator.hooks, report_transition(pool, selection, "failure", kind, result))

    def _refused(self, pool: PoolConfig, member: Member, response: Any) -> PrefillRefusedError:
        refusals(self.coordinator).add((pool.name, member.id, str(self.call.format)))
        return PrefillRefusedError(f"{pool.name}/{member.id} refused the prefill: HTTP {response.status_code} "
                                   f"{response.content[:200]!r}")

    def _record(self, job: _Break, prefill: Prefill) -> None:
        call = self.call
        self.count += 1
        extensions = self.response.extensions.get("coordinator")
        if not isinstance(extensions, dict):
            return
        last = call.tried[-1]
        extensions.setdefault("continuations", []).append({
            "after": {"pool": job.error.pool, "member": job.error.member, "reason": job.error.reason},
            "pool": last["pool"], "member": last["member"], "prefill_chars": prefill.chars,
        })
        extensions["attempts"] = call.attempts
        extensions["tried"] = list(call.tried)

    def _start(self, error: StreamInterruptedError, state: GuardState) -> _Break:
        if error.pool is not None and error.member is not None:
            self.broken.add((error.pool, error.member))
        return _Break(error, state)

    def _first(self, job: _Break, member: Member) -> bool:
        """For the continuation call's first attempt: True when it is the broken member itself (the
        plan is handed its failure, as that attempt's outcome), False otherwise."""
        pool = self.call.owners[id(member)]
        if (pool.name, member.id) != (job.error.pool, job.error.member):
            return False
        if self._failure(job) is not None:  # the plan reports it now: the hand-over's success is void
            _withdraw(self.coordinator, job.state)
        job.reported = True
        return True

    def _request(self, member: Member, prefill: Prefill) -> tuple[PoolConfig, Member, Any]:
        """The continuation request for ``member``, once the break's report is out of the way; raises
        ``CannotContinueError`` for a member that does not continue this answer."""
        pool, member = self._check(member)
        return pool, member, self.call.prepare(member, body=prefill.body)

    def _refusal(self, pool: PoolConfig, member: Member, response: Any) -> PrefillRefusedError | None:
        """For an error response (read): the refusal to raise, when it refuses the prefill."""
        if refuses_prefill(response.status_code, response.content):
            return self._refused(pool, member, response)
        return None

    @staticmethod
    def _resuming(job: _Break, prefill: Prefill) -> Resuming:
        return Resuming(job.state, Splice(job.state.transcript or Transcript(job.state.fmt), prefill.trimmed))

    def _check(self, member: Member) -> tuple[PoolConfig, Member]:
        pool = self.call.owners[id(member)]
        if not self._eligible(pool, member):
            raise CannotContinueError(f"{pool.name}/{member.id} does not continue this answer")
        return pool, member

    def _spliced(self, job: _Break, prefill: Prefill, response: Any) -> Primed | None:
        """The continuation's primed stream, recorded, when ``response`` is a guarded event stream; None
        (the break's error noted) for anything else: an error response the plan handed back as the
        caller's own, a 2xx that is not ``text/event-stream``. Such a response is the caller's to close."""
        stream = getattr(response, "stream", None)
        if not isinstance(stream, _GuardedStream):
            content_type = response.headers.get("content-type", "")
            self._not_continued(job.error, CannotContinueError(
                f"the continuation was answered with HTTP {response.status_code} {content_type!r}, "
                "not an event stream"))
            return None
        self._record(job, prefill)
        return stream.current

    @staticmethod
    def _not_continued(error: StreamInterruptedError, why: Exception) -> None:
        error.add_note(f"coordinator: not continued: {type(why).__name__}: {str(why).splitlines()[0][:300]}"
                       if str(why) else f"coordinator: not continued: {type(why).__name__}")

    def _begin(self, error: StreamInterruptedError,
               state: GuardState) -> tuple[_Break, tuple[list[str], Prefill] | None]:
        """The break, and the chain and request body of its continuation (None: it is not continued)."""
        job = self._start(error, state)
        return job, self._chain(job)

    def _call_options(self) -> dict[str, Any]:
        return {"classifier": self._classify, "max_retries": 0, "deadline": self.call.remaining()}


class _SyncResume(_Resume):
    """The sync I/O of a continuation; every decision is ``_Resume``'s."""

    def __call__(self, error: StreamInterruptedError, state: GuardState) -> Primed:
        job, plan = self._begin(error, state)
        response = primed = None
        if plan is not None:
            chain, prefill = plan
            try:
                response = self.coordinator.call(chain, lambda member: self._attempt(job, member, prefill),
                                                 **self._call_options())
            except Exception as exc:
                self._not_continued(error, exc)
            primed = None if response is None else self._spliced(job, prefill, response)
        if primed is not None:
            return primed
        if response is not None:
            response.close()
        if not job.reported:
            self._report(job)
        raise error

    def _report(self, job: _Break) -> None:
        found = self._report_of(job)
        if found is None:
            return
        handle, pool, selection, failure, hint = found
        _withdraw(self.coordinator, job.state)  # right before the report: none is sent without one
        try:
            result = handle.report_failure(selection, failure.kind, hint)
        except Exception as exc:
            self._report_failed(pool, selection.member, exc)
            return
        self._notify(pool, selection, failure.kind, result)

    def _attempt(self, job: _Break, member: Member, prefill: Prefill) -> Any:
        if not job.reported:
            if self._first(job, member):
                raise job.error  # the plan reports it and moves on, as for any failed attempt
            self._report(job)
        pool, member, request = self._request(member, prefill)
        response = self.call.note(self.call.inner.handle_request(request))
        if response.status_code >= 400:
            response.read()
            refusal = self._refusal(pool, member, response)
            if refusal is not None:
                response.close()
                raise refusal
            return response
        return self.call.guard(response, member, after=self._resuming(job, prefill))


class _AsyncResume(_Resume):
    """The async I/O of a continuation, line for line ``_SyncResume``'s."""

    async def __call__(self, error: StreamInterruptedError, state: GuardState) -> Primed:
        job, plan = self._begin(error, state)
        response = primed = None
        if plan is not None:
            chain, prefill = plan

            async def attempt(member: Member) -> Any:
                return await self._attempt(job, member, prefill)

            try:
                response = await self.coordinator.call(chain, attempt, **self._call_options())
            except Exception as exc:
                self._not_continued(error, exc)
            primed = None if response is None else self._spliced(job, prefill, response)
        if primed is not None:
            return primed
        if response is not None:
            await response.aclose()
        if not job.reported:
            await self._report(job)
        raise error

    async def _report(self, job: _Break) -> None:
        found = self._report_of(job)
        if found is None:
            return
        handle, pool, selection, failure, hint = found
        _withdraw(self.coordinator, job.state)  # right before the report: none is sent without one
        try:
            result = await handle.report_failure(selection, failure.kind, hint)
        except Exception as exc:
            self._report_failed(pool, selection.member, exc)
            return
        self._notify(pool, selection, failure.kind, result)

    async def _attempt(self, job: _Break, member: Member, prefill: Prefill) -> Any:
        if not job.reported:
            if self._first(job, member):
                raise job.error
            await self._report(job)
        pool, member, request = self._request(member, prefill)
        response = self.call.note(await self.call.inner.handle_async_request(request))
        if response.status_code >= 400:
            await response.aread()
            refusal = self._refusal(pool, member, response)
            if refusal is not None:
                await response.aclose()
                raise refusal
            return response
        return await self.call.aguard(response, member, after=self._resuming(job, prefill))


__all__: Sequence[str] = ("CannotContinueError", "PrefillRefusedError", "Resuming", "guard_options", "recovery")

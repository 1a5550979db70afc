# GENERATED from coordinator/drivers/_async/pool.py by scripts/unasync.py: do not edit.
"""One pool's shared state as a worker sees it: each method asks the pool's codec for a script op
and runs it through the store; acquire and quiet successes are answered from the local view when it
can (docs/design.md, "The local view")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis

from coordinator.core.errors import CorruptStateError
from coordinator.core.types import FailoverEvent, FailureResult, ParkResult, Result, Selection, Snapshot, SuccessResult
from coordinator.drivers._sync.store import Store
from coordinator.store.codec import Op, PoolCodec
from coordinator.store.redis_errors import corruption, reraise

T = TypeVar("T")


class Pool:
    """One pool's shared state. Get it from the coordinator: ``coordinator.pool(name)``."""

    def __init__(self, codec: PoolCodec, store: Store, enter: Callable[[], None] = lambda: None,
                 on_acquire: Callable[[], None] = lambda: None) -> None:
        self._codec = codec
        self._store = store
        self.name = codec.name
        self.config = codec.config
        # The coordinator's check on every use (an async one belongs to one event loop).
        self._enter = enter
        # Starts the coordinator's change-notice listener, which the local view relies on.
        self._start_listener = on_acquire

    @property
    def _client(self) -> Any:
        # The store's, which a fork or a new event loop replaces.
        return self._store.client

    def _run(self, op: Op[T]) -> T:
        self._enter()
        return self._store.run(self._codec, op)

    def _release(self, selection: Selection) -> None:
        """Gives back the probe lease ``selection`` holds, changing nothing else (a cancelled call)."""
        if selection.lease:
            self._run(self._codec.release(selection))

    def acquire(self, *, recovery_probe: bool = False) -> Selection:
        """The member to use. With ``recovery_probe``, an exhausted pool whose member is back hands that
        member to one caller fleet-wide (its probe, ``selection.probe``) and a degraded selection with
        ``probing`` to the others until the probe served (``coord.call`` asks so: its chain has other
        pools to use meanwhile)."""
        self._enter()
        self._start_listener()
        if self._codec.view.due(self._codec.clock(), 0.0):
            self._store.reread()
        local = self._codec.local_acquire()
        return local if local is not None else self._run(self._codec.acquire(recovery_probe))

    def local_selection(self) -> Selection | None:
        """The local view's selection, or None (no round trip either way): the happy path's acquire."""
        self._start_listener()
        codec = self._codec
        return codec.view.selection(codec.clock())

    def withdraw_success(self, selection: Selection) -> bool:
        """Takes back the success noted for the attempt made under ``selection`` (a stream's hand-over,
        when the stream breaks later; docs/design.md, "Failure counts") while it is the last success
        noted on its member; True when it was taken back."""
        return self._codec.view.withdraw_success(selection.member.id, selection)

    def moved_token(self, selection: Selection) -> tuple[str, int] | None:
        """The (epoch, generation) the success of the attempt made under ``selection`` moved the pool to,
        when it made a transition (a probe passed, a failback); None otherwise. A stream whose hand-over
        it was reports a later break under it (docs/design.md, "Continuation")."""
        return self._codec.view.moved_token(selection.member.id, selection)

    def quiet_success(self, selection: Selection) -> bool:
        """True when a success of ``selection`` changes nothing in Redis, as far as the view knows."""
        codec = self._codec
        now = codec.clock()
        codec.view.note_success(selection.member.id, now, selection)
        return codec.view.quiet_decision(selection, now) is not None

    def report_failure(self, selection: Selection, kind: str, retry_after: float | None = None) -> FailureResult:
        return self._run(self._codec.report_failure(selection, kind, retry_after))

    def report_success(self, selection: Selection) -> SuccessResult:
        local = self._codec.local_success(selection)
        return local if local is not None else self._run(self._codec.report_success(selection))

    def park(self, member_id: str, seconds: float | None = None, reason: str = "") -> ParkResult:
        return self._run(self._codec.park(member_id, seconds, reason))

    def unpark(self, member_id: str) -> ParkResult:
        return self._run(self._codec.unpark(member_id))

    def rotate(self, reason: str = "manual", seconds: float | None = None) -> ParkResult:
        return self._run(self._codec.rotate(seconds, reason))

    def reset(self, reason: str = "reset") -> Result:
        """Replace the pool's state, even a corrupt one, with a fresh one (new epoch, one ``reset`` event,
        the event history dropped). Cooldowns are forgotten; unexpired parks of configured members are kept."""
        return self._run(self._codec.reset(reason))

    def snapshot(self) -> Snapshot:
        return self._run(self._codec.snapshot())

    def plan_snapshot(self) -> Snapshot:
        """The snapshot a call's plan reads: served like the call (by the stand-in while the pool's
        corrupt state cannot be healed), where ``snapshot()`` reports the corruption."""
        return self._run(self._codec.snapshot(reports_corruption=False))

    def events(self, limit: int = 100, *, since: float | None = None) -> list[FailoverEvent]:
        """The newest ``limit`` events (written at or after ``since``, unix seconds), oldest first."""
        self._enter()
        lower = self._codec.since_id(since)
        try:
            return self._read_events(lower, limit)
        except CorruptStateError as exc:
            self._repair(exc)
        return self._read_events(lower, limit)

    def _read_events(self, lower: str, limit: int) -> list[FailoverEvent]:
        try:
            entries = self._client.xrevrange(self._codec.events_key, max="+", min=lower, count=limit)
        except redis.RedisError as exc:
            reraise(self._codec, exc)
        return self._codec.parse_events(list(reversed(entries or [])))

    def _repair(self, exc: CorruptStateError) -> None:
        """Heals a stream that a read found corrupt (another type, entries coordinator did not write), so
        that the read can be made again (docs/design.md, "Corrupt state"); re-raises anything else."""
        found = corruption(self._codec, exc)
        if found is None:
            raise exc
        try:
            self._store.repair(self._codec, found, read_only=True)
        except redis.RedisError as refused:  # a heal refused (no +del, out of memory): said as our own error
            reraise(self._codec, refused, "heal")

    def events_after(self, last_id: str, *, block: float | None = None, count: int = 100) -> list[FailoverEvent]:
        """Up to ``count`` events written after the event ``last_id``, oldest first; waits up to
        ``block`` seconds for one to arrive. Keep ``block`` below the coordinator's ``timeout`` (0.25 s
        by default; a coordinator for tailing events wants a longer one)."""
        self._enter()
        args = self._codec.xread_args(last_id, block, count)
        try:
            return self._read_after(args)
        except CorruptStateError as exc:
            self._repair(exc)
        return self._read_after(args)

    def _read_after(self, args: dict[str, Any]) -> list[FailoverEvent]:
        try:
            reply = self._client.xread(**args)
        except redis.RedisError as exc:
            reraise(self._codec, exc)
        return self._codec.parse_xread(reply)

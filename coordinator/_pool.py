"""Thin sync and async drivers: run a ``PoolProtocol`` op's script, map errors, parse the reply."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import redis
import redis.asyncio

from ._protocol import Op, PoolProtocol
from ._store import AsyncStore, SyncStore, reraise
from ._types import FailoverEvent, FailureResult, ParkResult, Result, Selection, Snapshot, SuccessResult

T = TypeVar("T")


class Pool:
    """One pool's shared state, seen from a sync worker. Get it from ``Coordinator.pool(name)``."""

    def __init__(self, proto: PoolProtocol, store: SyncStore, on_use: Callable[[], None] = lambda: None) -> None:
        self._proto = proto
        self._store = store
        self._client = store.client
        self.name = proto.name
        self.config = proto.config
        # Starts the coordinator's change-notice listener, which the local view relies on.
        self._started = on_use

    def _run(self, op: Op[T]) -> T:
        return self._store.run(self._proto, op)

    def acquire(self) -> Selection:
        self._started()
        return self._proto.local_acquire() or self._run(self._proto.acquire())

    def report_failure(self, selection: Selection, kind: str, retry_after: float | None = None) -> FailureResult:
        return self._run(self._proto.report_failure(selection, kind, retry_after))

    def report_success(self, selection: Selection) -> SuccessResult:
        return self._proto.local_success(selection) or self._run(self._proto.report_success(selection))

    def park(self, member_id: str, seconds: float | None = None, reason: str = "") -> ParkResult:
        return self._run(self._proto.park(member_id, seconds, reason))

    def unpark(self, member_id: str) -> ParkResult:
        return self._run(self._proto.unpark(member_id))

    def rotate(self, reason: str = "manual", seconds: float | None = None) -> ParkResult:
        return self._run(self._proto.rotate(seconds, reason))

    def reset(self, reason: str = "reset") -> Result:
        """Replace the pool's state, even a corrupt one, with a fresh one (new epoch, one ``reset`` event,
        the event history dropped). Cooldowns are forgotten; unexpired parks of configured members are kept."""
        return self._run(self._proto.reset(reason))

    def snapshot(self) -> Snapshot:
        return self._run(self._proto.snapshot())

    def events(self, limit: int = 100, *, since: float | None = None) -> list[FailoverEvent]:
        """The newest ``limit`` events (written at or after ``since``, unix seconds), oldest first."""
        lower = self._proto.since_id(since)
        try:
            entries = self._client.xrevrange(self._proto.events_key, max="+", min=lower, count=limit)
        except redis.RedisError as exc:
            reraise(self._proto, exc)
        return self._proto.parse_events(list(reversed(entries or [])))

    def events_after(self, last_id: str, *, block: float | None = None, count: int = 100) -> list[FailoverEvent]:
        """Up to ``count`` events written after the event ``last_id``, oldest first; waits up to
        ``block`` seconds for one to arrive. Keep ``block`` below the coordinator's ``timeout`` (0.25 s
        by default; a coordinator for tailing events wants a longer one)."""
        args = self._proto.xread_args(last_id, block, count)
        try:
            reply = self._client.xread(**args)
        except redis.RedisError as exc:
            reraise(self._proto, exc)
        return self._proto.parse_xread(reply)


class AsyncPool:
    """One pool's shared state, seen from an asyncio worker. Same API as ``Pool``, awaitable."""

    def __init__(self, proto: PoolProtocol, store: AsyncStore, on_use: Callable[[], None] = lambda: None) -> None:
        self._proto = proto
        self._store = store
        self._client = store.client
        self.name = proto.name
        self.config = proto.config
        # Starts the coordinator's change-notice listener on the running loop (it needs one).
        self._started = on_use

    async def _run(self, op: Op[T]) -> T:
        return await self._store.run(self._proto, op)

    async def acquire(self) -> Selection:
        self._started()
        local = self._proto.local_acquire()
        return local if local is not None else await self._run(self._proto.acquire())

    async def report_failure(
        self, selection: Selection, kind: str, retry_after: float | None = None
    ) -> FailureResult:
        return await self._run(self._proto.report_failure(selection, kind, retry_after))

    async def report_success(self, selection: Selection) -> SuccessResult:
        local = self._proto.local_success(selection)
        return local if local is not None else await self._run(self._proto.report_success(selection))

    async def park(self, member_id: str, seconds: float | None = None, reason: str = "") -> ParkResult:
        return await self._run(self._proto.park(member_id, seconds, reason))

    async def unpark(self, member_id: str) -> ParkResult:
        return await self._run(self._proto.unpark(member_id))

    async def rotate(self, reason: str = "manual", seconds: float | None = None) -> ParkResult:
        return await self._run(self._proto.rotate(seconds, reason))

    async def reset(self, reason: str = "reset") -> Result:
        """Replace the pool's state, even a corrupt one, with a fresh one (see ``Pool.reset``)."""
        return await self._run(self._proto.reset(reason))

    async def snapshot(self) -> Snapshot:
        return await self._run(self._proto.snapshot())

    async def events(self, limit: int = 100, *, since: float | None = None) -> list[FailoverEvent]:
        """The newest ``limit`` events (written at or after ``since``, unix seconds), oldest first."""
        lower = self._proto.since_id(since)
        try:
            entries = await self._client.xrevrange(self._proto.events_key, max="+", min=lower, count=limit)
        except redis.RedisError as exc:
            reraise(self._proto, exc)
        return self._proto.parse_events(list(reversed(entries or [])))

    async def events_after(
        self, last_id: str, *, block: float | None = None, count: int = 100
    ) -> list[FailoverEvent]:
        """Up to ``count`` events written after the event ``last_id``, oldest first; waits up to
        ``block`` seconds for one to arrive. Keep ``block`` below the coordinator's ``timeout`` (0.25 s
        by default; a coordinator for tailing events wants a longer one)."""
        args = self._proto.xread_args(last_id, block, count)
        try:
            reply = await self._client.xread(**args)
        except redis.RedisError as exc:
            reraise(self._proto, exc)
        return self._proto.parse_xread(reply)

"""Where a pool's scripts run: Redis, or while Redis is unreachable, a local stand-in.

A coordinator must never be the reason a call fails. State calls use short timeouts and no blind
retries (a mutating script whose reply was lost may already have been applied). When Redis does not
answer, a breaker opens: from then on at most one call per ``probe_interval`` tries Redis, and every
other call runs the very same Lua scripts on a private in-process fakeredis, seeded from what this
worker last learned of each pool (active member, cooldowns, parks). Operator actions are refused
while Redis is down, never queued. When a probe succeeds, the cooldowns learned during the outage
are merged into Redis with ``max()`` (``merge.lua``), the stand-in is dropped and every local view is
re-read. One log line when the outage starts, one when it ends.

``Breaker`` and ``Fallback`` hold the decisions without I/O; ``SyncStore`` and ``AsyncStore`` drive them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

import redis
import redis.asyncio
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from ._backend import redact
from ._errors import StoreUnavailableError
from ._protocol import Op, PoolProtocol
from ._scripts import SCRIPT_NAMES, script_source

T = TypeVar("T")
_log = logging.getLogger("coordinator")

#: Errors that mean "Redis cannot take this call now" rather than "the call is wrong".
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ReadOnlyError,  # a replica that has not been promoted yet, after a failover
    ClusterDownError,
    TryAgainError,
    MasterDownError,
    RedisClusterException,
    OSError,
)
DEFAULT_PROBE_INTERVAL = 1.0


def _short(exc: BaseException) -> str:
    # Sentinel errors embed the repr of a whole client: one log line should stay one readable line.
    text = str(exc).split(" : <", 1)[0]
    return f"{type(exc).__name__}: {text[:200]}"


def reraise(proto: PoolProtocol, exc: Exception) -> NoReturn:
    """Our own error for a script's error reply, or for an unreachable Redis; others unchanged."""
    if isinstance(exc, redis.ResponseError):
        mapped = proto.translate_error(str(exc))
        if mapped is not None:
            raise mapped from None
    if isinstance(exc, UNAVAILABLE):
        raise StoreUnavailableError(f"pool {proto.name!r}: Redis unavailable: {exc}") from exc
    raise exc


class Breaker:
    """Closed while Redis answers; open after a failure, letting one probe through per interval."""

    def __init__(self, probe_interval: float = DEFAULT_PROBE_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.probe_interval = probe_interval
        self._clock = clock
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self._next_probe = 0.0
        self._probing = False

    @property
    def open(self) -> bool:
        return self.down_since is not None

    def allow(self) -> bool:
        """May this call try Redis?"""
        with self._lock:
            if self.down_since is None:
                return True
            if not self._probing and self._clock() >= self._next_probe:
                self._probing = True
                return True
            return False

    def succeeded(self) -> bool:
        """Redis answered. True when that ends an outage."""
        with self._lock:
            self._probing = False
            ended = self.down_since is not None
            self.down_since = None
            return ended

    def failed(self) -> bool:
        """Redis did not answer. True when that starts an outage."""
        with self._lock:
            self._probing = False
            now = self._clock()
            self._next_probe = now + self.probe_interval
            started = self.down_since is None
            if started:
                self.down_since = now
            return started


class Fallback:
    """What the local stand-in starts from, and what it knows that Redis must hear about."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, Any]] = {}
        self.seeded: set[str] = set()

    def remember(self, pool: str, data: Mapping[str, Any]) -> None:
        """Keeps the newest picture Redis replies gave: the pointer from any reply, every member's
        state from an acquire reply, the reported member's cooldown from a failure reply."""
        if "epoch" not in data or "active" not in data:
            return
        last = self._last.setdefault(pool, {"states": {}})
        last.update(active=data.get("active") or "", server_now=float(data.get("now", 0)),
                    wall_ms=time.time() * 1000.0)
        if "valid_until" in data:
            last["states"] = {item[0]: list(item) for item in data.get("states") or [] if item}
        member, until = data.get("member"), data.get("until")
        if "stale" in data and isinstance(member, str) and until:
            entry = last["states"].get(member) or [member, 0, "", 0, 0, 0, ""]
            entry[1], entry[2], entry[3] = until, data.get("kind", entry[2]), data.get("failures", 0)
            last["states"][member] = entry

    def seed(self, proto: PoolProtocol) -> dict[str, str]:
        """The hash the stand-in starts a pool from: a local epoch, the last known pointer and states."""
        cfg = proto.config
        ids = [m.id for m in cfg.members]
        now_ms = int(time.time() * 1000)
        last = self._last.get(proto.name, {})
        active = last.get("active") if last.get("active") in ids else ""
        fields = {
            "epoch": f"local{os.urandom(6).hex()}",
            "generation": "0",
            "version": "0",
            "created": str(now_ms),
            "strategy": cfg.strategy,
            "members": ",".join(ids),
            "weights": ",".join(str(m.weight) for m in cfg.members),
            "digest": proto.digest,
            "active": "" if cfg.strategy == "round_robin" else (active or ids[0]),
            "exhausted": "0",
        }
        # Server deadlines become deadlines of this machine's clock, which the stand-in's TIME reads.
        shift = last.get("wall_ms", 0.0) - last.get("server_now", 0.0)
        for item in last.get("states", {}).values():
            try:
                member_id, cooling, kind, failures, ejections, parked, reason = item
            except (TypeError, ValueError):
                continue
            if member_id not in ids:
                continue
            if cooling and float(cooling) > 0:
                fields[f"{member_id}:cooling_until"] = str(int(float(cooling) + shift))
                fields[f"{member_id}:cooling_kind"] = str(kind or "")
            for name, value in (("failures", failures), ("ejections", ejections)):
                if value:
                    fields[f"{member_id}:{name}"] = str(int(value))
            if parked == -1:
                fields[f"{member_id}:parked_until"] = "forever"
            elif parked and float(parked) > 0:
                fields[f"{member_id}:parked_until"] = str(int(float(parked) + shift))
            if parked and reason:
                fields[f"{member_id}:park_reason"] = str(reason)
        return fields

    @staticmethod
    def merge_items(fields: Mapping[str, str], now_ms: float) -> list[list[Any]]:
        """From a stand-in pool hash: every cooldown still running, as [member, remaining ms, kind]. What
        the worker knew before the outage goes back too: Redis may have come back empty."""
        items = []
        for field, value in fields.items():
            member, _, name = field.rpartition(":")
            if name == "cooling_until" and value.isdigit() and int(value) > now_ms:
                items.append([member, int(int(value) - now_ms), fields.get(f"{member}:cooling_kind", "")])
        return items


class _Base:
    def __init__(self, protocols: Mapping[str, PoolProtocol], url: str, probe_interval: float,
                 on_resync: Callable[[], None], local_fallback: bool) -> None:
        self.protocols = protocols
        self.local_fallback = local_fallback
        self.url = url
        self.breaker = Breaker(probe_interval)
        self.fallback = Fallback()
        self._on_resync = on_resync

    def _down(self, proto: PoolProtocol, op: Op[Any], exc: BaseException) -> None:
        if self.breaker.failed() and self.local_fallback:
            _log.warning("coordinator: Redis at %s is unreachable (%s); serving from local state, probing every "
                         "%gs", redact(self.url), _short(exc), self.breaker.probe_interval)
        if op.operator or not self.local_fallback:
            raise self._refusal(proto, op) from exc

    def _refusal(self, proto: PoolProtocol, op: Op[Any]) -> StoreUnavailableError:
        if not op.operator:
            return StoreUnavailableError(f"pool {proto.name!r}: Redis at {redact(self.url)} is unreachable")
        return StoreUnavailableError(
            f"pool {proto.name!r}: Redis at {redact(self.url)} is unreachable; {op.script} was not applied "
            "(operator actions are never queued): retry when Redis is back"
        )

    def _back(self) -> None:
        self.breaker.succeeded()
        _log.warning("coordinator: Redis at %s is back; merged the cooldowns known locally", redact(self.url))


class SyncStore(_Base):
    """Runs script ops for sync pools (see the module docstring)."""

    def __init__(self, client: Any, protocols: Mapping[str, PoolProtocol], url: str,
                 probe_interval: float = DEFAULT_PROBE_INTERVAL, on_resync: Callable[[], None] = lambda: None,
                 local_fallback: bool = True):
        super().__init__(protocols, url, probe_interval, on_resync, local_fallback)
        self.client = client
        self.scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}
        self._local: Any = None
        self._local_scripts: dict[str, Any] = {}
        self._local_lock = threading.Lock()

    @staticmethod
    def _call(scripts: Mapping[str, Any], proto: PoolProtocol, op: Op[Any]) -> dict[str, Any]:
        script = scripts[op.script]
        data = proto.decode(script(keys=op.keys, args=proto.argv(op, False)))
        if proto.needs_spec(data):
            data = proto.decode(script(keys=op.keys, args=proto.argv(op, True)))
        return data

    def run(self, proto: PoolProtocol, op: Op[T]) -> T:
        if self.breaker.allow():
            try:
                if self.breaker.open:  # this call is the probe: bring Redis up to date before using it
                    self._resync()
                data = self._call(self.scripts, proto, op)
            except UNAVAILABLE as exc:
                self._down(proto, op, exc)
            except redis.RedisError as exc:
                reraise(proto, exc)
            else:
                self.breaker.succeeded()
                self.fallback.remember(proto.name, data)
                return op.parse(data)
        elif op.operator or not self.local_fallback:
            raise self._refusal(proto, op)
        return op.parse(self._run_local(proto, op))

    def _run_local(self, proto: PoolProtocol, op: Op[Any]) -> dict[str, Any]:
        import fakeredis

        with self._local_lock:
            if self._local is None:
                self._local = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
                self._local_scripts = {n: self._local.register_script(script_source(n)) for n in SCRIPT_NAMES}
            if proto.name not in self.fallback.seeded:
                keys = proto.keys.pool_keys(proto.name)
                self._local.delete(*keys)
                self._local.hset(keys[0], mapping=self.fallback.seed(proto))
                self.fallback.seeded.add(proto.name)
        try:
            return self._call(self._local_scripts, proto, op)
        except redis.RedisError as exc:
            reraise(proto, exc)

    def _resync(self) -> None:
        """Merges the stand-in's cooldowns into Redis (raising if Redis is still away), then drops it."""
        self.client.ping()
        now_ms = time.time() * 1000.0
        for pool in sorted(self.fallback.seeded):
            proto = self.protocols[pool]
            items = self.fallback.merge_items(self._local.hgetall(proto.keys.pool(pool)), now_ms)
            if items:
                try:
                    self._call(self.scripts, proto, proto.merge(items))
                except redis.ResponseError as exc:
                    _log.warning("coordinator: merging pool %r after the outage was refused: %s", pool, exc)
        self.fallback.seeded.clear()
        if self._local is not None:
            self._local.flushall()
        self._back()
        self._on_resync()


class AsyncStore(_Base):
    """Runs script ops for asyncio pools; the same decisions as ``SyncStore``."""

    def __init__(self, client: Any, protocols: Mapping[str, PoolProtocol], url: str,
                 probe_interval: float = DEFAULT_PROBE_INTERVAL, on_resync: Callable[[], None] = lambda: None,
                 local_fallback: bool = True):
        super().__init__(protocols, url, probe_interval, on_resync, local_fallback)
        self.client = client
        self.scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}
        self._local: Any = None
        self._local_scripts: dict[str, Any] = {}

    @staticmethod
    async def _call(scripts: Mapping[str, Any], proto: PoolProtocol, op: Op[Any]) -> dict[str, Any]:
        script = scripts[op.script]
        data = proto.decode(await script(keys=op.keys, args=proto.argv(op, False)))
        if proto.needs_spec(data):
            data = proto.decode(await script(keys=op.keys, args=proto.argv(op, True)))
        return data

    async def run(self, proto: PoolProtocol, op: Op[T]) -> T:
        if self.breaker.allow():
            try:
                if self.breaker.open:  # this call is the probe: bring Redis up to date before using it
                    await self._resync()
                data = await self._call(self.scripts, proto, op)
            except UNAVAILABLE as exc:
                self._down(proto, op, exc)
            except redis.RedisError as exc:
                reraise(proto, exc)
            else:
                self.breaker.succeeded()
                self.fallback.remember(proto.name, data)
                return op.parse(data)
        elif op.operator or not self.local_fallback:
            raise self._refusal(proto, op)
        return op.parse(await self._run_local(proto, op))

    async def _run_local(self, proto: PoolProtocol, op: Op[Any]) -> dict[str, Any]:
        import fakeredis

        if self._local is None:
            self._local = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
            self._local_scripts = {n: self._local.register_script(script_source(n)) for n in SCRIPT_NAMES}
        if proto.name not in self.fallback.seeded:
            keys = proto.keys.pool_keys(proto.name)
            await self._local.delete(*keys)
            await self._local.hset(keys[0], mapping=self.fallback.seed(proto))
            self.fallback.seeded.add(proto.name)
        try:
            return await self._call(self._local_scripts, proto, op)
        except redis.RedisError as exc:
            reraise(proto, exc)

    async def _resync(self) -> None:
        """Merges the stand-in's cooldowns into Redis (raising if Redis is still away), then drops it."""
        await self.client.ping()
        now_ms = time.time() * 1000.0
        for pool in sorted(self.fallback.seeded):
            proto = self.protocols[pool]
            items = self.fallback.merge_items(await self._local.hgetall(proto.keys.pool(pool)), now_ms)
            if items:
                try:
                    await self._call(self.scripts, proto, proto.merge(items))
                except redis.ResponseError as exc:
                    _log.warning("coordinator: merging pool %r after the outage was refused: %s", pool, exc)
        self.fallback.seeded.clear()
        if self._local is not None:
            await self._local.flushall()
        self._back()
        self._on_resync()

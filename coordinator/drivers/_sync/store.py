# GENERATED from coordinator/drivers/_async/store.py by scripts/unasync.py: do not edit.
"""Where a pool's scripts run: Redis, or while Redis is unreachable, a local stand-in.

A coordinator must never be the reason a call fails (docs/design.md, "When Redis is away"). State
calls use short timeouts and no blind retries (a mutating script whose reply was lost may already
have been applied). When Redis does not answer, a ``Breaker`` opens: from then on at most one call
per ``probe_interval`` tries Redis, and every other call runs the very same Lua scripts on a private
in-process fakeredis, seeded from what this worker last learned of each pool (``LastKnownState``).
Operator actions are refused while Redis is down, never queued. When a probe succeeds, the
cooldowns learned during the outage are merged into Redis with ``max()`` (``merge.lua``), the
stand-in is dropped and every local view is re-read. One log line when the outage starts, one when
it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import redis

from coordinator.core.errors import StoreUnavailableError
from coordinator.drivers.io_sync import Lock, fake_redis
from coordinator.rules.outage import DEFAULT_PROBE_INTERVAL, Breaker
from coordinator.store.codec import Op, PoolCodec
from coordinator.store.connect import redact
from coordinator.store.redis_errors import UNAVAILABLE, reraise, short_error
from coordinator.store.scripts import SCRIPT_NAMES, script_source
from coordinator.store.standin import LastKnownState

T = TypeVar("T")
_log = logging.getLogger("coordinator")


class Store:
    """Runs script ops for a coordinator's pools (see the module docstring)."""

    def __init__(self, client: Any, codecs: Mapping[str, PoolCodec], url: str,
                 probe_interval: float = DEFAULT_PROBE_INTERVAL, on_resync: Callable[[], None] = lambda: None,
                 local_fallback: bool = True):
        self.client = client
        self.codecs = codecs
        self.url = url
        self.local_fallback = local_fallback
        self.breaker = Breaker(probe_interval)
        self.last_known = LastKnownState()
        self._on_resync = on_resync
        self.scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}
        self._local: Any = None
        self._local_scripts: dict[str, Any] = {}
        self._local_lock = Lock()

    @staticmethod
    def _call(scripts: Mapping[str, Any], codec: PoolCodec, op: Op[Any]) -> dict[str, Any]:
        script = scripts[op.script]
        data = codec.decode(script(keys=op.keys, args=codec.argv(op, False)))
        if codec.needs_spec(data):
            data = codec.decode(script(keys=op.keys, args=codec.argv(op, True)))
        return data

    def run(self, codec: PoolCodec, op: Op[T]) -> T:
        if self.breaker.allow():
            try:
                if self.breaker.open:  # this call is the probe: bring Redis up to date before using it
                    self._merge_back()
                data = self._call(self.scripts, codec, op)
            except UNAVAILABLE as exc:
                self._down(codec, op, exc)
            except redis.RedisError as exc:
                reraise(codec, exc, op.script)
            else:
                self.breaker.succeeded()
                self.last_known.remember(codec.name, data)
                return op.parse(data)
        elif op.operator or not self.local_fallback:
            raise self._refusal(codec, op)
        return op.parse(self._run_local(codec, op))

    def _run_local(self, codec: PoolCodec, op: Op[Any]) -> dict[str, Any]:
        with self._local_lock:
            if self._local is None:
                self._local = fake_redis()
                self._local_scripts = {n: self._local.register_script(script_source(n)) for n in SCRIPT_NAMES}
            if codec.name not in self.last_known.seeded:
                keys = codec.keys.pool_keys(codec.name)
                self._local.delete(*keys)
                self._local.hset(keys[0], mapping=self.last_known.seed(codec))
                self.last_known.seeded.add(codec.name)
        try:
            return self._call(self._local_scripts, codec, op)
        except redis.RedisError as exc:
            reraise(codec, exc, op.script)

    def _merge_back(self) -> None:
        """Merges the stand-in's cooldowns into Redis (raising if Redis is still away), then drops it."""
        self.client.ping()
        now_ms = time.time() * 1000.0
        for pool in sorted(self.last_known.seeded):
            codec = self.codecs[pool]
            items = self.last_known.merge_items(self._local.hgetall(codec.keys.pool(pool)), now_ms)
            if items:
                try:
                    self._call(self.scripts, codec, codec.merge(items))
                except redis.ResponseError as exc:
                    _log.warning("coordinator: merging pool %r after the outage was refused: %s", pool, exc)
        self.last_known.seeded.clear()
        if self._local is not None:
            self._local.flushall()
        self.breaker.succeeded()
        _log.warning("coordinator: Redis at %s is back; merged the cooldowns known locally", redact(self.url))
        self._on_resync()

    def _down(self, codec: PoolCodec, op: Op[Any], exc: BaseException) -> None:
        if self.breaker.failed() and self.local_fallback:
            _log.warning("coordinator: Redis at %s is unreachable (%s); serving from local state, probing every "
                         "%gs", redact(self.url), short_error(exc), self.breaker.probe_interval)
        if op.operator or not self.local_fallback:
            raise self._refusal(codec, op) from exc

    def _refusal(self, codec: PoolCodec, op: Op[Any]) -> StoreUnavailableError:
        if not op.operator:
            return StoreUnavailableError(f"pool {codec.name!r}: Redis at {redact(self.url)} is unreachable")
        return StoreUnavailableError(
            f"pool {codec.name!r}: Redis at {redact(self.url)} is unreachable; {op.script} was not applied "
            "(operator actions are never queued): retry when Redis is back"
        )

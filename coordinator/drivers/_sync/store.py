# GENERATED from coordinator/drivers/_async/store.py by scripts/unasync.py: do not edit.
"""Where a pool's scripts run: Redis, or while Redis cannot serve, a local stand-in.

A coordinator must never be the reason a call fails (docs/design.md, "When Redis is away"). State
calls use short timeouts and no blind retries (a mutating script whose reply was lost may already
have been applied). When Redis cannot serve a call for a reason that is not the caller's (unreachable,
too slow, out of memory, a read-only replica, loading, busy, a cluster down, refused credentials or a
missing grant: ``redis_errors.trouble``), a ``Breaker`` opens: from then on at most one call per
``probe_interval`` tries Redis, and every other call runs the very same Lua scripts on a private
in-process fakeredis, seeded from what this worker last learned of each pool (``LastKnownState``).
Operator actions are refused meanwhile, never queued, with the reason. When a probe succeeds, what the
stand-in learned is merged into Redis with ``max()`` (``merge.lua``), the stand-in is dropped and every
local view is re-read. One log line when an episode starts and one when it ends (a misconfiguration
is repeated at ERROR once a minute: it does not pass by itself). A pool whose state a script finds
corrupt is healed (heal.lua, once fleet-wide) and the call made again; if the heal is refused or even
that fails, that pool alone is served locally until its retry (``probe_interval``) and an operator
action on it raises (docs/design.md, "Corrupt state").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import redis

from coordinator.core.errors import (
    CorruptStateError,
    StoreError,
    StoreMisconfiguredError,
    StoreUnavailableError,
    UnknownMemberError,
)
from coordinator.drivers.io_sync import Lock, fake_redis, to_thread
from coordinator.rules.outage import DEFAULT_PROBE_INTERVAL, Breaker
from coordinator.rules.view import SAFETY_STALENESS
from coordinator.store.codec import Op, PoolCodec, decode_version
from coordinator.store.connect import plain_redis_at, redact
from coordinator.store.redis_errors import Trouble, corruption, reraise, short_error, trouble
from coordinator.store.schema import KeySchema
from coordinator.store.scripts import SCRIPT_NAMES, script_source
from coordinator.store.standin import LastKnownState
from coordinator.store.startup import Permissions, decode_check, risky_policy

T = TypeVar("T")
_log = logging.getLogger("coordinator")
#: How often a misconfiguration that goes on is logged again.
REPEAT_MISCONFIGURED = 60.0
#: A new episode of the trouble just announced, sooner than this, is not announced again (a Redis that
#: refuses writes but serves reads would otherwise log every probe interval).
QUIET_AFTER = 60.0


def evalsha(script: Any, keys: list[str], args: list[Any]) -> Any:
    """What ``script(keys=keys, args=args)`` does (EVALSHA; on NOSCRIPT, load the script and send it
    again), without redis-py's per-call import and pipeline check: these clients are no pipelines."""
    client = script.registered_client
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        script.sha = client.script_load(script.script)
        return client.evalsha(script.sha, len(keys), *keys, *args)


class HealRefused(Exception):
    """heal.lua was refused (a trouble reply): the pool stays corrupt, the other pools are unaffected."""

    def __init__(self, found: str, refused: Trouble, cause: BaseException):
        super().__init__(f"{found}: {refused.what}")
        self.found, self.trouble, self.cause = found, refused, cause


class Store:
    """Runs script ops for a coordinator's pools (see the module docstring)."""

    def __init__(self, client: Any, codecs: Mapping[str, PoolCodec], url: str,
                 probe_interval: float = DEFAULT_PROBE_INTERVAL, on_resync: Callable[[], None] = lambda: None,
                 local_fallback: bool = True, timeout: float = 0.25, keys: KeySchema | None = None):
        self.client = client
        self.keys = keys if keys is not None else KeySchema()
        self.codecs = codecs
        self.url = url
        self.timeout = timeout
        self.local_fallback = local_fallback
        self.breaker = Breaker(probe_interval)
        self.last_known = LastKnownState()
        self._on_resync = on_resync
        self.scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}
        self._local: Any = None
        self._local_scripts: dict[str, Any] = {}
        self._local_lock = Lock()
        #: One safety re-read at a time: the acquires that find their bound lapsed meanwhile wait for
        #: it and then find their views confirmed (or dropped), instead of each sending its own.
        self._reread_lock = Lock()
        #: Why Redis cannot serve now (None while it can), and what the log last said, when.
        self.trouble: Trouble | None = None
        self._announced = False
        self._said: tuple[str, float] = ("", -QUIET_AFTER)
        #: Pools whose corrupt state could not be healed and that were said so (until Redis serves them).
        self._corrupt: set[str] = set()
        #: Corrupt pools whose heal was refused or did not help: served locally until this monotonic time.
        self._unhealable: dict[str, float] = {}

    @staticmethod
    def _call(scripts: Mapping[str, Any], codec: PoolCodec, op: Op[Any]) -> dict[str, Any]:
        script = scripts[op.script]
        data = codec.decode(evalsha(script, op.keys, codec.argv(op, False)))
        if codec.needs_spec(data):
            data = codec.decode(evalsha(script, op.keys, codec.argv(op, True)))
        return data

    def run(self, codec: PoolCodec, op: Op[T]) -> T:
        if (not op.operator and not op.reports_corruption and self.local_fallback
                and self._unhealable.get(codec.name, 0.0) > time.monotonic()):
            # Corrupt, and its heal refused or failed a moment ago: served locally until the pool's retry,
            # by one stand-in that keeps what this window's calls report.
            return op.parse(self._run_local(codec, op))
        if self.breaker.allow():
            try:
                if self.breaker.open:  # this call is the probe: bring Redis up to date before using it
                    self._merge_back()
                data = self._call_healing(codec, self.last_known.to_redis(codec, op))
                data = self._heal(codec, op, data)
            except Exception as exc:
                found = exc.found if isinstance(exc, HealRefused) else corruption(codec, exc)
                if found is None:
                    self._down(codec, op, exc)
                elif op.operator or op.reports_corruption or not self.local_fallback:
                    # An operator action is never served locally; a snapshot asked for says it is corrupt.
                    if isinstance(exc, HealRefused):
                        raise self._refusal(codec, op, exc.trouble) from exc.cause
                    if isinstance(exc, redis.RedisError):
                        reraise(codec, exc, op.script)
                    raise
                else:  # corrupt, and not healed (see _call_healing): this pool is served locally for a while
                    self._say_corrupt(codec, found, exc.cause if isinstance(exc, HealRefused) else exc)
                    self._unhealable[codec.name] = time.monotonic() + self.breaker.probe_interval
                    self.last_known.seeded.discard(codec.name)  # the window's stand-in starts from the last truth
                    return op.parse(self._run_local(codec, op))
            else:
                self._up()
                self._corrupt.discard(codec.name)
                if self._unhealable.pop(codec.name, None) is not None:
                    self.last_known.seeded.discard(codec.name)  # a later outage seeds from this reply
                self.last_known.remember(codec.name, data)
                return op.parse(data)
        elif op.operator or not self.local_fallback:
            raise self._refusal(codec, op, self.trouble or Trouble("Redis is unreachable"))
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
        try:
            data = self._call(self._local_scripts, codec, self.last_known.to_local(codec, op))
        except redis.RedisError as exc:
            reraise(codec, exc, op.script)
        # The stand-in's transitions are this worker's alone: only a transition Redis made is the fleet's
        # one (docs/design.md, "Tokens and exactly-once events"), so no hook fires for a local one.
        return {**data, "transitioned": False}

    def _call_healing(self, codec: PoolCodec, op: Op[Any]) -> dict[str, Any]:
        """``op`` on Redis; a state the script finds corrupt is healed first (docs/design.md, "Corrupt
        state"), then ``op`` runs again on the healed state."""
        try:
            data = self._call(self.scripts, codec, op)
            if op.script != "snapshot":  # snapshot accepts any membership
                codec.check_known(data)
            return data
        except (redis.ResponseError, CorruptStateError) as exc:
            found = corruption(codec, exc)
            if found is None:
                raise
            code, _, detail = str(exc).partition(" ")
            unknown = detail.split(" ")[0] if code == "COORD_UNKNOWN_MEMBER" else ""
        try:
            sound = self.repair(codec, found, read_only=op.script == "snapshot")
        except redis.ResponseError as exc:
            refused = trouble(exc)
            if refused is None:
                raise
            # A refused heal (a user without +del, out of memory) concerns this pool alone: the other
            # pools stay on Redis (docs/design.md, "Corrupt state").
            raise HealRefused(found, refused, exc) from exc
        if unknown and sound.get("foreign"):
            # Not corrupt: the pool runs another configuration's membership (docs/design.md, "Rolling
            # deploys"), which lacks the member named; a report changes nothing, as a stale one.
            if op.script in ("report_failure", "report_success"):
                return {**sound, "member": unknown, "stale": True, "cooled": False, "transitioned": False}
            raise UnknownMemberError(codec.name, unknown, (
                f"pool {codec.name!r}: the fleet's membership (another configuration's, see docs/design.md "
                f"\"Rolling deploys\") has no member {unknown!r}; {op.script} was not applied"))
        data = self._call(self.scripts, codec, op)
        if op.script != "snapshot":
            codec.check_known(data)
        return data

    def repair(self, codec: PoolCodec, found: str, read_only: bool = False) -> dict[str, Any]:
        """Runs heal.lua: a state still corrupt is rebuilt under a new epoch keeping what can be read,
        exactly once fleet-wide (a worker that comes second finds it sound and writes nothing). The worker
        that rebuilt it says so in the log, once; the ``healed`` event and field say it to everyone. A
        ``read_only`` caller (snapshot, events) heals only under the stored membership, and otherwise gets
        ``CorruptStateError`` with nothing written (docs/design.md, "Corrupt state")."""
        try:
            data = self._call(self.scripts, codec, codec.heal(read_only))
        except redis.ResponseError as exc:
            if trouble(exc) is None:
                reraise(codec, exc, "heal")
            raise
        codec.view.forget()
        if data.get("healed"):
            _log.warning("coordinator: pool %r: its state in Redis was corrupt (%s); rebuilt it under the new "
                         "epoch %s, keeping the state of %d member(s), %d unreadable field(s) dropped%s (see "
                         "docs/design.md, \"Corrupt state\")", codec.name, data.get("found") or found,
                         data.get("epoch"), int(data.get("kept") or 0), int(data.get("dropped") or 0),
                         ", the event stream replaced" if data.get("stream_replaced") else "")
        return data

    def _say_corrupt(self, codec: PoolCodec, found: str, exc: BaseException) -> None:
        if codec.name in self._corrupt:
            return
        self._corrupt.add(codec.name)
        _log.error("coordinator: pool %r: its state in Redis is corrupt (%s) and could not be rebuilt (%s); "
                   "serving its calls from local state", codec.name, found, short_error(exc))

    def reread(self) -> None:
        """The safety re-read (docs/design.md, "The local view"): for every pool whose view's safety
        bound ends within half of it, one pipelined ``HMGET epoch version`` (one round trip for all of
        them); a view whose fields did not move holds on, the others are dropped (their next acquire
        asks Redis). While Redis cannot serve, nothing is read: the acquires take the usual path."""
        with self._reread_lock:
            due = [c for c in self.codecs.values() if c.view.due(c.clock(), SAFETY_STALENESS / 2)]
            if not due or self.breaker.open:
                return
            try:
                pipe = self.client.pipeline(transaction=False)
                for codec in due:
                    pipe.hmget(codec.keys.pool(codec.name), "epoch", "version")
                replies = pipe.execute()
            except Exception:
                for codec in due:
                    codec.view.forget()
                return
            self._confirm(due, replies)

    @staticmethod
    def _confirm(due: list[PoolCodec], replies: list[Any]) -> None:
        for codec, reply in zip(due, replies, strict=True):
            seen = decode_version(reply)
            if seen is None:
                codec.view.forget()
            else:
                codec.view.confirm(*seen, codec.clock())

    def _merge_back(self) -> None:
        """Merges what the stand-in learned into Redis (raising if Redis still cannot serve), then drops it."""
        self.client.time()
        now_ms = time.time() * 1000.0
        for pool in sorted(self.last_known.seeded):
            codec = self.codecs[pool]
            items = self.last_known.merge_items(self._local.hgetall(codec.keys.pool(pool)), now_ms)
            if items:
                try:
                    self._call_healing(codec, codec.merge(items))
                except (redis.ResponseError, HealRefused) as exc:
                    if isinstance(exc, redis.ResponseError) and trouble(exc) is not None:
                        raise
                    _log.warning("coordinator: merging pool %r after the outage was refused: %s", pool, exc)
        self.last_known.seeded.clear()
        if self._local is not None:
            self._local.flushall()
        self._on_resync()

    def _heal(self, codec: PoolCodec, op: Op[Any], data: dict[str, Any]) -> dict[str, Any]:
        """A reply under an epoch this worker did not know: Redis lost the pool's state (a flush, an
        eviction, an empty replica promoted) and a script made a new one, or an operator reset it. After
        a loss, what this worker knew goes into the new state (merge.lua, atomically, with ``max()``), and
        a failure it reported under the old token is applied under the new one instead of dropped."""
        old, new = self.last_known.redis_epoch(codec.name), str(data.get("epoch") or "")
        if not old or not new or new == old:
            return data
        origin = self._origin(codec, new)
        if origin == "reset":
            return data
        healed = origin.startswith("healed")
        # A heal kept what Redis held (heal.lua): nothing is merged over it, unless it could read nothing
        # (a key of another type), and then never a park, which an operator may have removed since
        # (docs/design.md, "Corrupt state").
        now = float(data.get("now", 0))
        items = [] if origin == "healed" else self.last_known.heal_items(codec.name, now, parks=not healed)
        if items:
            merged = self._call(self.scripts, codec, codec.merge(items, "merged after the state was lost"))
            codec.view.forget()
            if not healed:  # a heal of a corrupt state was said once, by the worker that healed it
                _log.warning("coordinator: pool %r: Redis lost its state (new epoch %s); merged what this "
                             "worker knew of %d member(s)", codec.name, new, len(items))
            data = {**data, "generation": merged.get("generation", data.get("generation"))}
            if op.script == "acquire":  # the choice made on the empty state may be the member just restored as cooling
                return self._call(self.scripts, codec, op)
        if op.script == "report_failure" and data.get("stale") and op.args[1] == old:
            renewed = Op(op.script, op.keys, [op.args[0], new, str(data.get("generation", 0)), *op.args[3:]],
                         op.parse, op.operator)
            return self._call(self.scripts, codec, renewed)
        return data

    def _origin(self, codec: PoolCodec, epoch: str) -> str:
        """``reset`` when an operator's reset made ``epoch`` (then what was known is meant to be forgotten),
        ``healed`` when a heal of a corrupt state did (``healed unread`` when nothing of the old state was
        readable: heal.lua's reason says so), else "" (the state was lost)."""
        entries = self.client.xrevrange(codec.events_key, max="+", min="-", count=20)
        for _, fields in entries or []:
            if (fields or {}).get("epoch") == epoch and (fields or {}).get("type") in ("reset", "healed"):
                if fields["type"] == "healed" and str(fields.get("reason")).endswith("; nothing readable"):
                    return "healed unread"
                return str(fields["type"])
        return ""

    def _up(self) -> None:
        if self.breaker.succeeded():
            self.trouble = None
            if self._announced:
                self._announced = False
                _log.warning("coordinator: Redis at %s is back; merged what was learned locally",
                             redact(self.url))

    def _down(self, codec: PoolCodec, op: Op[Any], exc: Exception) -> None:
        found = trouble(exc)
        if found is None:
            if isinstance(exc, redis.RedisError):
                reraise(codec, exc, op.script)
            raise exc
        if op.operator and found.misconfigured:
            # A grant only an operator action needs (DEL, for reset) is the operator's to hear of: the
            # workers' own calls, whose grants start-up checked, stay on Redis.
            raise self._refusal(codec, op, found) from exc
        self.trouble = found
        self.breaker.failed()
        if self.local_fallback:
            self._announce(found, exc)
        if op.operator or not self.local_fallback:
            raise self._refusal(codec, op, found) from exc

    def _announce(self, found: Trouble, exc: BaseException) -> None:
        now = time.monotonic()
        said, at = self._said
        if self._announced:
            if not (found.misconfigured and now - at >= REPEAT_MISCONFIGURED):
                return
        elif said == found.what and now - at < QUIET_AFTER:
            return
        self._announced = True
        self._said = (found.what, now)
        if found.misconfigured:
            _log.error("coordinator: %s (Redis at %s: %s); serving calls from local state until it is fixed "
                       "(see docs/security.md)", found.what, redact(self.url), short_error(exc))
        else:
            _log.warning("coordinator: %s (Redis at %s: %s); serving calls from local state, probing every %gs",
                         found.what, redact(self.url), short_error(exc), self.breaker.probe_interval)

    def _refusal(self, codec: PoolCodec, op: Op[Any], found: Trouble) -> StoreError:
        kind: type[StoreError] = StoreMisconfiguredError if found.misconfigured else StoreUnavailableError
        if not op.operator:
            return kind(f"pool {codec.name!r}: {found.what} (Redis at {redact(self.url)})")
        return kind(
            f"pool {codec.name!r}: {found.what} (Redis at {redact(self.url)}); {op.script} was not applied "
            "(operator actions are never queued): retry when Redis serves again"
        )

    def check(self) -> None:
        """Raises ``StoreMisconfiguredError`` when Redis answers but refuses this worker (credentials,
        TLS, a permission the workers' scripts need), ``StoreUnavailableError`` when it cannot be
        reached or cannot serve now; warns when its eviction policy may drop the pools' state."""
        keys = self.keys.pool_keys(next(iter(self.codecs), "check"))
        try:
            self.client.script_load(script_source("check"))
            raw = self.scripts["check"](keys=keys, args=[self.keys.channel])
        except Exception as exc:
            found = trouble(exc)
            if found is None:
                raise
            if isinstance(exc, redis.TimeoutError) and to_thread(plain_redis_at, self.url, self.timeout):
                found = Trouble("the URL asks for TLS (rediss://) but the port speaks plain Redis", True)
            if isinstance(exc, redis.exceptions.NoPermissionError):
                found = Trouble(f"the Redis user may not run the workers' scripts (EVALSHA, SCRIPT LOAD) or use "
                                f"the pools' keys such as {keys[0]}: {exc}", True)
            kind = StoreMisconfiguredError if found.misconfigured else StoreUnavailableError
            detail = "" if found.misconfigured and str(exc) in found.what else f": {short_error(exc, 1000)}"
            raise kind(f"{found.what} (Redis at {redact(self.url)}){detail}") from None
        allowed = decode_check(raw)
        if allowed.problem:
            raise StoreMisconfiguredError(f"{allowed.problem} (Redis at {redact(self.url)})")
        policy = self._eviction_policy(allowed)
        warning = risky_policy(policy)
        if warning:
            _log.warning("coordinator: Redis at %s: %s", redact(self.url), warning)

    def renew(self, client: Any) -> None:
        """Starts over on ``client`` with fresh locks and no stand-in (after a fork, or a new event
        loop); what this worker last learned of each pool is kept."""
        self.client = client
        self.scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}
        self.breaker = Breaker(self.breaker.probe_interval)
        self._local = None
        self._local_scripts = {}
        self._local_lock = Lock()
        self._reread_lock = Lock()
        self.last_known.seeded.clear()
        self.trouble = None
        self._announced = False

    def _eviction_policy(self, allowed: Permissions) -> str:
        # CONFIG and INFO need grants the workers' user need not have: then nothing is said.
        try:
            if allowed.config:
                found = self.client.config_get("maxmemory-policy")
                return str(found.get("maxmemory-policy", ""))
            if allowed.info:
                info = self.client.info("memory")
                return str(info.get("maxmemory_policy", ""))
        except Exception:
            pass
        return ""

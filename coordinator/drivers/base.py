"""What the sync and async drivers share without I/O: the coordinator's pool registry and call
planning, and the mapping of a plan's store actions to pool methods."""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import time
import types
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from coordinator.core.config import Config, PoolConfig, RedisConfig, load_config
from coordinator.core.errors import ConfigError, UnknownPoolError
from coordinator.rules.backoff import RandomSource
from coordinator.rules.classify import Classifier
from coordinator.rules.hooks import Hook
from coordinator.rules.plan import Acquire, Action, CallPlan, Raise, ReadSnapshot, ReportFailure, ReportSuccess
from coordinator.rules.view import DEFAULT_STALENESS, NoticeHealth
from coordinator.store.codec import DEFAULT_STREAM_MAX_AGE, PoolCodec
from coordinator.store.connect import is_cluster
from coordinator.store.notices import Notice
from coordinator.store.schema import KeySchema
from coordinator.transport.failover import Caller, FailoverTransport

#: Every live coordinator, and what it does in a forked child (see ``after_fork_in_child``).
_forked: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()


def after_fork_in_child(owner: Any, renew: Callable[[Any], None]) -> None:
    """After ``os.fork()``, the child runs ``renew(owner)``: a child must never use its parent's
    connections, listener thread or locks (a parent thread may have held one at the fork)."""
    _forked[owner] = renew


def _in_child() -> None:
    for owner, renew in list(_forked.items()):
        with contextlib.suppress(Exception):
            renew(owner)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child)


class CoordinatorBase:
    """The configured pools and the call planning of ``Coordinator`` and ``AsyncCoordinator``."""

    #: The transport checks it: a sync client needs a sync coordinator, an async client an async one.
    is_async = False

    def __init__(
        self,
        url: str,
        pools: Iterable[PoolConfig],
        prefix: str,
        stream_maxlen: int,
        hooks: Iterable[Hook] = (),
        classifier: Classifier | None = None,
        staleness: float = DEFAULT_STALENESS,
        stream_max_age: float | None = DEFAULT_STREAM_MAX_AGE,
    ) -> None:
        if not isinstance(staleness, int | float) or not 0 <= staleness <= 60:
            raise ConfigError(f"staleness must be between 0 and 60 seconds, not {staleness!r}")
        if isinstance(stream_maxlen, bool) or not isinstance(stream_maxlen, int) or stream_maxlen < 1:
            raise ConfigError(f"stream_maxlen must be a positive number of entries, not {stream_maxlen!r}")
        if stream_max_age is not None and (isinstance(stream_max_age, bool)
                                           or not isinstance(stream_max_age, int | float)
                                           or not math.isfinite(stream_max_age) or stream_max_age <= 0):
            raise ConfigError(f"stream_max_age must be a positive number of seconds or None, not {stream_max_age!r}")
        self.url = url
        #: Seconds a worker may reuse an acquire decision without asking Redis (0: never).
        self.staleness = float(staleness)
        #: Observers of every ``call`` (see ``coordinator.Hook``); append to add more.
        self.hooks: list[Hook] = list(hooks)
        #: Tried before the built-in classification on every ``call``; None answers "don't know".
        self.classifier = classifier
        self.keys = KeySchema(RedisConfig(url=url, prefix=prefix).prefix)
        #: Whether this coordinator's change-notice subscription is up (its views count on notices then).
        self.notice_health = NoticeHealth()
        self._codecs: dict[str, PoolCodec] = {}
        for cfg in pools:
            if not isinstance(cfg, PoolConfig):
                raise ConfigError(f"pools must be PoolConfig objects, got {type(cfg).__name__}")
            if cfg.name in self._codecs:
                raise ConfigError(f"pool {cfg.name!r} is configured twice")
            codec = PoolCodec(cfg, self.keys, stream_maxlen, staleness, stream_max_age=stream_max_age)
            codec.view.health = self.notice_health
            self._codecs[cfg.name] = codec

    def _notice_channels(self, client: Any, legacy_notices: bool) -> tuple[list[str], bool]:
        """Sets where this coordinator's writes publish; returns the channels to listen on and whether
        they are sharded (docs/design.md, "Change notices").

        Rolling deploy: while ``legacy_notices`` is on, every write is also published on the shared
        channel of earlier releases, and this worker listens there alone (every writer of either
        release publishes there). Once no worker of an earlier release is left, a second rollout with
        ``legacy_notices=False`` moves listeners to the pools' own channels (sharded on Cluster); a
        worker still on the shared setting goes on publishing to both, so nobody misses a notice.
        """
        sharded = is_cluster(client) and not legacy_notices
        for codec in self._codecs.values():
            codec.channels = self.keys.notice_targets(codec.name, sharded, legacy_notices)
        if legacy_notices:
            return [self.keys.channel], False
        return [self.keys.pool_channel(name) for name in self._codecs], sharded

    def _on_notice(self, notice: Notice) -> None:
        codec = self._codecs.get(notice.pool)
        if codec is not None:
            codec.view.notice(notice.epoch, notice.version, notice, codec.clock())

    def _forget_views(self) -> None:
        """Nothing local is trusted any more (notices may have been missed): every view re-reads Redis."""
        for codec in self._codecs.values():
            codec.view.forget()

    @classmethod
    def _config_args(cls, config: Config | str | os.PathLike[str]) -> dict[str, Any]:
        if not isinstance(config, Config):
            config = load_config(config)
        return {"url": config.redis.url, "pools": list(config.pools.values()), "prefix": config.redis.prefix}

    @property
    def pool_names(self) -> list[str]:
        return list(self._codecs)

    def pool_config(self, name: str) -> PoolConfig:
        return self._codec(name).config

    def _plan(
        self,
        pools: str | Sequence[str],
        *,
        deadline: float | None,
        max_retries: int | None,
        classifier: Classifier | None,
        rng: RandomSource | None,
        clock: Callable[[], float] | None,
    ) -> CallPlan:
        names = [pools] if isinstance(pools, str) else list(pools)
        return CallPlan(
            [self._codec(name).config for name in names],
            classifiers=[c for c in (classifier, self.classifier) if c is not None],
            max_retries=max_retries,
            deadline=deadline,
            clock=clock if clock is not None else time.monotonic,
            rng=rng,
        )

    def transport(self, pools: str | Sequence[str], inner: Any = None, **call_options: Any) -> FailoverTransport:
        """An httpx (or httpx2) transport that fails over across ``pools`` (a pool or a chain).

        ``inner`` is the transport that really sends (default: the HTTP library's own);
        ``call_options`` go to every ``call`` (e.g. ``deadline``). Sync with ``Coordinator``, async
        with ``AsyncCoordinator``.
        """
        # Every subclass has ``call``, ``_enter`` and ``_carry_on``: the transport asks for no more (failover.Caller).
        return FailoverTransport(cast(Caller, self), pools, inner, **call_options)

    def _codec(self, name: str) -> PoolCodec:
        try:
            return self._codecs[name]
        except KeyError:
            raise UnknownPoolError(name, list(self._codecs)) from None


def store_call(pools: Mapping[str, Any], action: Action) -> Callable[[], Any] | None:
    """The pool method a plan's action names, bound and ready (its result a coroutine for async pools)."""
    if isinstance(action, Acquire):
        return lambda: pools[action.pool].acquire(recovery_probe=action.recovery_probe)
    if isinstance(action, ReadSnapshot):
        return pools[action.pool].plan_snapshot  # type: ignore[no-any-return]
    if isinstance(action, ReportFailure):
        sel = action.selection
        return lambda: pools[sel.pool].report_failure(sel, action.kind, action.retry_after)
    if isinstance(action, ReportSuccess):
        sel = action.selection
        return lambda: pools[sel.pool].report_success(sel)
    return None


def raise_action(action: Raise) -> None:
    if action.cause is None:
        raise action.error
    raise action.error from action.cause


def is_stream(value: object) -> bool:
    return isinstance(value, Iterator) and not isinstance(value, io.IOBase)


#: Types whose values ``attempt`` hands back as they are: not awaitable, not an (async) iterator. These
#: are properties of the class (generators, whose awaitability is their code's, are never listed), so
#: a value of a type seen before skips the checks.
plain_types: set[type] = {type(None)}


def note_plain_type(value: object) -> None:
    kind = type(value)
    if len(plain_types) < 256 and not isinstance(value, types.GeneratorType | types.CoroutineType) and \
            not inspect.isawaitable(value) and not isinstance(value, AsyncIterator) and not is_stream(value):
        plain_types.add(kind)


def resume(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    """The stream as the caller reads it: its first item (already taken to judge it), then the rest."""
    try:
        yield first
        yield from rest
    finally:
        # A caller that stops early must release the stream (its HTTP connection) now, not at GC.
        close = getattr(rest, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()

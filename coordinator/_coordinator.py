"""``Coordinator`` and ``AsyncCoordinator``: the entry points a worker holds."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

import redis
import redis.asyncio

from ._backend import DEFAULT_TIMEOUT, connect, connect_async
from ._backoff import RandomSource
from ._classify import Classifier
from ._config import Config, Member, PoolConfig, RedisConfig, load_config
from ._errors import ConfigError, UnknownPoolError
from ._executor import CallPlan, run_async, run_sync
from ._hooks import Hook
from ._keys import KeySchema
from ._notices import AsyncNoticeListener, Notice, NoticeListener
from ._pool import AsyncPool, Pool
from ._protocol import DEFAULT_STREAM_MAXLEN, PoolProtocol
from ._store import DEFAULT_PROBE_INTERVAL, AsyncStore, SyncStore
from ._transport import FailoverTransport
from ._view import DEFAULT_STALENESS

T = TypeVar("T")


def _nothing() -> None:
    pass


class _Base:
    def __init__(
        self,
        url: str,
        pools: Iterable[PoolConfig],
        prefix: str,
        stream_maxlen: int,
        hooks: Iterable[Hook] = (),
        classifier: Classifier | None = None,
        staleness: float = DEFAULT_STALENESS,
    ) -> None:
        if not isinstance(staleness, int | float) or not 0 <= staleness <= 60:
            raise ConfigError(f"staleness must be between 0 and 60 seconds, not {staleness!r}")
        self.url = url
        #: Seconds a worker may reuse an acquire decision without asking Redis (0: never).
        self.staleness = float(staleness)
        #: Observers of every ``call`` (see ``coordinator.Hook``); append to add more.
        self.hooks: list[Hook] = list(hooks)
        #: Tried before the built-in classification on every ``call``; None answers "don't know".
        self.classifier = classifier
        self.keys = KeySchema(RedisConfig(url=url, prefix=prefix).prefix)
        self._protocols: dict[str, PoolProtocol] = {}
        for cfg in pools:
            if not isinstance(cfg, PoolConfig):
                raise ConfigError(f"pools must be PoolConfig objects, got {type(cfg).__name__}")
            if cfg.name in self._protocols:
                raise ConfigError(f"pool {cfg.name!r} is configured twice")
            self._protocols[cfg.name] = PoolProtocol(cfg, self.keys, stream_maxlen, staleness)

    def _on_notice(self, notice: Notice) -> None:
        proto = self._protocols.get(notice.pool)
        if proto is not None:
            proto.view.notice(notice.epoch, notice.version, notice, proto.clock())

    def _resync(self) -> None:
        for proto in self._protocols.values():
            proto.view.forget()

    @classmethod
    def _config_args(cls, config: Config | str | os.PathLike[str]) -> dict[str, Any]:
        if not isinstance(config, Config):
            config = load_config(config)
        return {"url": config.redis.url, "pools": list(config.pools.values()), "prefix": config.redis.prefix}

    @property
    def pool_names(self) -> list[str]:
        return list(self._protocols)

    def pool_config(self, name: str) -> PoolConfig:
        return self._protocol(name).config

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
            [self._protocol(name).config for name in names],
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
        return FailoverTransport(self, pools, inner, **call_options)  # type: ignore[arg-type]

    def _protocol(self, name: str) -> PoolProtocol:
        try:
            return self._protocols[name]
        except KeyError:
            raise UnknownPoolError(name, list(self._protocols)) from None


class Coordinator(_Base):
    """Fleet-wide failover state for sync workers.

    - ``url``: ``memory://`` (embedded, this process only), ``redis://``, ``rediss://``, ``unix://``,
      ``redis+cluster://``, ``redis+sentinel://`` (see the README).
    - ``prefix``: the key prefix, one per tenant or product sharing a Redis.
    - ``staleness``: seconds a worker may reuse an acquire decision without asking Redis (default 1;
      change notices drop it sooner; 0 asks Redis on every acquire).
    - ``timeout``: seconds to connect to and to hear from Redis before serving from local state.
    - ``probe_interval``: while Redis is unreachable, how often one call tries it again.
    - ``local_fallback``: serve acquire and reports from local state while Redis is unreachable
      (default); False raises ``StoreUnavailableError`` instead (the CLI does, operators need truth).
    - ``hooks``, ``classifier``: observers and a failure classifier for every ``call``.
    """

    def __init__(
        self,
        url: str = "memory://",
        pools: Iterable[PoolConfig] = (),
        *,
        prefix: str = "coord",
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        client: redis.Redis | None = None,
        hooks: Iterable[Hook] = (),
        classifier: Classifier | None = None,
        staleness: float = DEFAULT_STALENESS,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        local_fallback: bool = True,
    ) -> None:
        super().__init__(url, pools, prefix, stream_maxlen, hooks, classifier, staleness)
        self.client = client if client is not None else connect(url, timeout)
        self._store = SyncStore(self.client, self._protocols, url, probe_interval, self._resync, local_fallback)
        self._listener: NoticeListener | None = None
        self._listener_lock = threading.Lock()
        self._pools = {name: Pool(proto, self._store, self._start_listener) for name, proto in self._protocols.items()}

    def _start_listener(self) -> None:
        # Started by the first acquire: a coordinator used only for operator actions needs none.
        if self._listener is None and self.staleness > 0:
            with self._listener_lock:
                if self._listener is None:
                    self._listener = NoticeListener(self.client, self.keys.channel, self._on_notice, self._resync)

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], **kwargs: Any) -> Coordinator:
        """Build from a ``Config`` or the path of a ``coordinator.toml``."""
        return cls(**{**cls._config_args(config), **kwargs})

    def pool(self, name: str) -> Pool:
        self._protocol(name)
        return self._pools[name]

    def call(
        self,
        pools: str | Sequence[str],
        fn: Callable[[Member], T],
        *,
        deadline: float | None = None,
        max_retries: int | None = None,
        classifier: Classifier | None = None,
        hooks: Iterable[Hook] = (),
        sleep: Callable[[float], object] | None = None,
        rng: RandomSource | None = None,
        clock: Callable[[], float] | None = None,
    ) -> T:
        """Run ``fn(member)`` on a member of ``pools`` (a pool name, or a chain: a list of names tried in
        order) and return what ``fn`` returned. Rate limits, exhausted quotas and auth failures cool the
        member and move to the next one at once; transient errors retry the same member with backoff
        first; a missing model skips the rest of its pool.

        - ``deadline``: seconds this whole call may take (waits, backoff, new attempts); an attempt
          already running is not interrupted, so give ``fn``'s client its own timeout.
        - ``max_retries``: retries of one member on transient errors, overriding each pool's
          ``attempts_per_member - 1``; moving to another member never counts as a retry.
        - ``classifier``: tried first for each failure (then the coordinator's, then the built-in one).
        - ``hooks``: observers for this call, after the coordinator's own.
        - ``sleep``, ``rng``, ``clock``: injectable for tests (``time.sleep``, ``random``, ``time.monotonic``).

        If ``fn`` returns an iterator (or is a generator function), failover happens only until its
        first item; the call returns an iterator that yields that item and the rest, and errors after
        it surface as they are. A returned HTTP response with status >= 400 counts as a failure.

        Raises the caller's own exception unchanged for request, content-policy and context-length
        failures, ``AllMembersFailedError`` when no member served; cancellation propagates at once.
        """
        plan = self._plan(
            pools, deadline=deadline, max_retries=max_retries, classifier=classifier, rng=rng, clock=clock
        )
        result: T = run_sync(
            plan,
            {cfg.name: self.pool(cfg.name) for cfg in plan.pools},
            fn,
            hooks=[*self.hooks, *hooks],
            sleep=sleep if sleep is not None else time.sleep,
        )
        return result

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.client.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCoordinator(_Base):
    """Fleet-wide failover state for asyncio workers: the ``Coordinator`` API, awaitable."""

    def __init__(
        self,
        url: str = "memory://",
        pools: Iterable[PoolConfig] = (),
        *,
        prefix: str = "coord",
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        client: redis.asyncio.Redis | None = None,
        hooks: Iterable[Hook] = (),
        classifier: Classifier | None = None,
        staleness: float = DEFAULT_STALENESS,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        local_fallback: bool = True,
    ) -> None:
        super().__init__(url, pools, prefix, stream_maxlen, hooks, classifier, staleness)
        self.client = client if client is not None else connect_async(url, timeout)
        self._store = AsyncStore(self.client, self._protocols, url, probe_interval, self._resync, local_fallback)
        self._listener: AsyncNoticeListener | None = None
        if self.staleness > 0 and self._protocols:
            self._listener = AsyncNoticeListener(self.client, self.keys.channel, self._on_notice, self._resync)
        start = self._listener.ensure_started if self._listener is not None else _nothing
        self._pools = {name: AsyncPool(proto, self._store, start) for name, proto in self._protocols.items()}

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], **kwargs: Any) -> AsyncCoordinator:
        return cls(**{**cls._config_args(config), **kwargs})

    def pool(self, name: str) -> AsyncPool:
        self._protocol(name)
        return self._pools[name]

    @overload
    async def call(
        self,
        pools: str | Sequence[str],
        fn: Callable[[Member], Awaitable[T]],
        *,
        deadline: float | None = None,
        max_retries: int | None = None,
        classifier: Classifier | None = None,
        hooks: Iterable[Hook] = (),
        sleep: Callable[[float], object] | None = None,
        rng: RandomSource | None = None,
        clock: Callable[[], float] | None = None,
    ) -> T: ...

    @overload
    async def call(
        self,
        pools: str | Sequence[str],
        fn: Callable[[Member], T],
        *,
        deadline: float | None = None,
        max_retries: int | None = None,
        classifier: Classifier | None = None,
        hooks: Iterable[Hook] = (),
        sleep: Callable[[float], object] | None = None,
        rng: RandomSource | None = None,
        clock: Callable[[], float] | None = None,
    ) -> T: ...

    async def call(
        self,
        pools: str | Sequence[str],
        fn: Callable[[Member], Any],
        *,
        deadline: float | None = None,
        max_retries: int | None = None,
        classifier: Classifier | None = None,
        hooks: Iterable[Hook] = (),
        sleep: Callable[[float], object] | None = None,
        rng: RandomSource | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Any:
        """``Coordinator.call`` for asyncio. ``fn`` may be sync or async, return an awaitable, an async
        iterator or an iterator (or be an async generator function). ``sleep`` may be sync or async
        (default ``asyncio.sleep``). Cancelling the task cancels the call at once, touching no state.
        """
        plan = self._plan(
            pools, deadline=deadline, max_retries=max_retries, classifier=classifier, rng=rng, clock=clock
        )
        return await run_async(
            plan,
            {cfg.name: self.pool(cfg.name) for cfg in plan.pools},
            fn,
            hooks=[*self.hooks, *hooks],
            sleep=sleep if sleep is not None else asyncio.sleep,
        )

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()
        await self.client.aclose()

    async def __aenter__(self) -> AsyncCoordinator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

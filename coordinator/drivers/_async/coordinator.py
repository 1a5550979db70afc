"""The entry point a worker holds: its pools, their store, the change-notice listener, and ``call``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from coordinator.core.config import Config, PoolConfig
from coordinator.core.types import Selection
from coordinator.drivers._async.executor import run_plan
from coordinator.drivers._async.pool import AsyncPool
from coordinator.drivers._async.store import AsyncStore
from coordinator.drivers.base import CoordinatorBase, after_fork_in_child
from coordinator.drivers.io_async import (
    IS_ASYNC,
    CallFn,
    LoopBinding,
    NoticeListener,
    RedisClient,
    attempt,
    check_at_start,
    close_within,
    connect,
    default_sleep,
)
from coordinator.rules.backoff import RandomSource
from coordinator.rules.classify import Classifier
from coordinator.rules.happy import first_pool, plain_success
from coordinator.rules.hooks import Hook
from coordinator.rules.outage import DEFAULT_PROBE_INTERVAL
from coordinator.rules.plan import Outcome
from coordinator.rules.view import DEFAULT_STALENESS
from coordinator.store.codec import DEFAULT_STREAM_MAX_AGE, DEFAULT_STREAM_MAXLEN
from coordinator.store.connect import DEFAULT_TIMEOUT

T = TypeVar("T")


class AsyncCoordinator(CoordinatorBase):
    """Fleet-wide failover state for a worker.

    - ``url``: ``memory://`` (embedded, this process only), ``redis://``, ``rediss://``, ``unix://``,
      ``redis+cluster://``, ``redis+sentinel://`` (see the README).
    - ``prefix``: the key prefix, one per tenant or product sharing a Redis.
    - ``staleness``: seconds a worker may reuse an acquire decision without asking Redis while it does
      not hear the change notices (default 1; 0 asks Redis on every acquire). While its subscription
      is healthy a decision holds until a notice outdates it (at most ``SAFETY_STALENESS``, 5 min).
    - ``stream_maxlen``, ``stream_max_age``: event retention per pool, entries and seconds (default
      1,000 and 7 days; ``stream_max_age=None`` keeps entries of any age).
    - ``legacy_notices``: also publish change notices on the shared channel of earlier releases and
      listen there (default, for rolling deploys); False: per-pool channels only (see the README).
    - ``timeout``: seconds to connect to and to hear from Redis before serving from local state.
    - ``probe_interval``: while Redis is unreachable, how often one call tries it again.
    - ``local_fallback``: serve acquire and reports from local state while Redis is unreachable
      (default); False raises ``StoreUnavailableError`` instead (the CLI does, operators need truth).
    - ``hooks``, ``classifier``: observers and a failure classifier for every ``call``.
    """

    is_async = IS_ASYNC
    #: Clients left behind by ``_renew`` (never closed: see there), kept so no finalizer closes them.
    _abandoned: ClassVar[list[Any]] = []

    def __init__(
        self,
        url: str = "memory://",
        pools: Iterable[PoolConfig] = (),
        *,
        prefix: str = "coord",
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        client: RedisClient | None = None,
        hooks: Iterable[Hook] = (),
        classifier: Classifier | None = None,
        staleness: float = DEFAULT_STALENESS,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        local_fallback: bool = True,
        stream_max_age: float | None = DEFAULT_STREAM_MAX_AGE,
        legacy_notices: bool = True,
    ) -> None:
        super().__init__(url, pools, prefix, stream_maxlen, hooks, classifier, staleness, stream_max_age)
        self._timeout = timeout
        self._own_client = client is None
        self.client = client if client is not None else connect(url, timeout)
        # Where every write publishes its notice, whether or not this worker listens (staleness 0).
        self._channels, self._sharded = self._notice_channels(self.client, legacy_notices)
        self._store = AsyncStore(self.client, self._codecs, url, probe_interval, self._forget_views, local_fallback,
                                 timeout, self.keys)
        # Started by the first acquire: a coordinator used only for operator actions needs none.
        self._listener: NoticeListener | None = None
        self._new_listener()
        self._binding = LoopBinding()
        self._pools = {name: AsyncPool(codec, self._store, self._enter, self._start_listener)
                       for name, codec in self._codecs.items()}
        after_fork_in_child(self, AsyncCoordinator._after_fork)
        if not self.url.startswith("memory://"):
            # Sync: refuse to start on a misconfiguration (an outage is no reason not to start).
            # Async: a constructor cannot wait; ``await coordinator.check()`` says the same.
            check_at_start(self._store)

    def _new_listener(self) -> None:
        if self.staleness > 0 and self._codecs:
            self._listener = NoticeListener(self.client, self._channels, self._on_notice, self._forget_views,
                                            self._sharded, self.notice_health)

    def _start_listener(self) -> None:
        if self._listener is not None:
            self._listener.ensure_started()

    def _enter(self) -> None:
        """Every use: an async coordinator belongs to one event loop (a closed one is replaced)."""
        if self._binding.rebind():
            self._renew()

    def _after_fork(self) -> None:
        # The parent's client stays referenced: no finalizer may close it here and wait for its locks.
        self._abandoned.append(self.client)
        self._renew()

    def _renew(self) -> None:
        """Fresh connections, listener and locks, never the old ones: after a fork (the parent's threads
        may hold their locks, their sockets are the parent's) or when the event loop they belonged to
        is closed. The old client is never closed here: after a fork closing may wait for a lock nobody
        will release, and a closed loop can run nothing any more."""
        self._binding = LoopBinding()
        if self._own_client:
            self.client = connect(self.url, self._timeout)
        self._store.renew(self.client)
        self._listener = None
        self._new_listener()
        self._forget_views()

    async def check(self) -> None:
        """Asks Redis whether this worker can use it: raises ``StoreMisconfiguredError`` naming the
        problem when Redis answers but refuses the credentials, the TLS handshake or a permission the
        workers' scripts need, ``StoreUnavailableError`` when Redis cannot be reached or cannot serve
        now; returns None when all is well (warning in the log about an ``allkeys-*`` eviction policy).
        ``Coordinator`` runs it when it is built; call it at start with ``AsyncCoordinator``."""
        self._enter()
        if not self.url.startswith("memory://"):
            await self._store.check()

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], **kwargs: Any) -> AsyncCoordinator:
        """Build from a ``Config`` or the path of a ``coordinator.toml``."""
        return cls(**{**cls._config_args(config), **kwargs})

    def pool(self, name: str) -> AsyncPool:
        self._codec(name)
        return self._pools[name]

    async def call(
        self,
        pools: str | Sequence[str],
        fn: CallFn[T],
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
        - ``sleep``, ``rng``, ``clock``: injectable for tests (default sleep: ``time.sleep``, or
          ``asyncio.sleep`` for ``AsyncCoordinator``; ``random``; ``time.monotonic``).

        If ``fn`` returns an iterator (or is a generator function), failover happens only until its
        first item; the call returns an iterator that yields that item and the rest, and errors after
        it surface as they are. A returned HTTP response with status >= 400 counts as a failure. With
        ``AsyncCoordinator``, ``fn`` may be sync or async and return an awaitable or an async iterator;
        cancelling the task cancels the call at once, touching no state.

        Raises the caller's own exception unchanged for request, content-policy and context-length
        failures, ``AllMembersFailedError`` when no member served; cancellation propagates at once.
        """
        self._enter()
        every_hook = [*self.hooks, *hooks] if hooks or self.hooks else []
        name = first_pool(pools) if not every_hook and deadline is None and max_retries is None else None
        pool = self._pools.get(name) if name is not None else None  # unknown: the plan raises
        if pool is not None and (isinstance(pools, str) or len(pools) == 1 or all(p in self._codecs for p in pools)):
            # The happy path (rules/happy.py): no plan unless the view has no answer or something fails.
            selection = pool.local_selection()
            if selection is not None:
                return await self._carry_on(pools, fn, selection, fn, classifier=classifier, sleep=sleep, rng=rng,
                                            clock=clock)
        return await self._run(pools, fn, None, every_hook, deadline=deadline, max_retries=max_retries,
                               classifier=classifier, sleep=sleep, rng=rng, clock=clock)

    async def _carry_on(
        self,
        pools: str | Sequence[str],
        fn: CallFn[T],
        selection: Selection,
        first: CallFn[T],
        *,
        classifier: Classifier | None = None,
        sleep: Callable[[float], object] | None = None,
        rng: RandomSource | None = None,
        clock: Callable[[], float] | None = None,
    ) -> T:
        """Internal: the happy path of ``call`` from its first attempt on, for a call with no hooks,
        deadline or ``max_retries``. ``first(member)`` is that attempt, under ``selection`` (the local
        view's, of the first pool): ``fn`` itself for ``call``; for the transport's happy path, the rest
        of an attempt it already sent (transport/happy.py). A plain success that changes nothing is
        returned; anything else goes to the plan, which carries on from this attempt as if it had made it."""
        outcome = await attempt(first, selection, clock if clock is not None else time.monotonic)
        if plain_success(outcome) and self._pools[selection.pool].quiet_success(selection):
            return outcome.result  # type: ignore[no-any-return]
        return await self._run(pools, fn, (selection, outcome), [], classifier=classifier, sleep=sleep, rng=rng,
                               clock=clock)

    async def _run(
        self,
        pools: str | Sequence[str],
        fn: CallFn[T],
        first: tuple[Selection, Outcome] | None,
        every_hook: list[Hook],
        *,
        deadline: float | None = None,
        max_retries: int | None = None,
        classifier: Classifier | None = None,
        sleep: Callable[[float], object] | None = None,
        rng: RandomSource | None = None,
        clock: Callable[[], float] | None = None,
    ) -> T:
        """The generic plan (docs/design.md, "The call plan"), from ``first`` on when it is given."""
        plan = self._plan(
            pools, deadline=deadline, max_retries=max_retries, classifier=classifier, rng=rng, clock=clock
        )
        result: T = await run_plan(
            plan,
            {cfg.name: self.pool(cfg.name) for cfg in plan.pools},
            fn,
            hooks=every_hook,
            sleep=sleep if sleep is not None else default_sleep,
            first=first,
        )
        return result

    async def aclose(self) -> None:
        """Stops the listener and closes the connections, within about ``timeout`` plus a second."""
        if self._listener is not None:
            await self._listener.aclose(self._timeout + 1.0)
            self._listener = None
        await close_within(self.client, self._timeout + 1.0)

    async def __aenter__(self) -> AsyncCoordinator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

"""Shared fixtures: a real redis-server on a free loopback port (or COORDINATOR_TEST_REDIS_URL), and
the `backend` matrix that runs one behaviour suite on real Redis and memory://, sync and async."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

import coordinator as co
from coordinator.store.connect import connect
from coordinator.testing import RedisServer, free_port

__all__ = ["RedisServer", "free_port"]  # tests import them from here


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    external = os.environ.get("COORDINATOR_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer()
    try:
        yield server.url
    finally:
        server.close()


class RedisCluster:
    """Three masters with --cluster-enabled on loopback, joined by redis-cli --cluster create."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", "2000") for _ in range(masters)]
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while True:
            info = redis.Redis(port=self.nodes[0].port, decode_responses=True).cluster("info")
            if info.get("cluster_state") == "ok":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster did not become ok: {info}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    external = os.environ.get("COORDINATOR_TEST_CLUSTER_URL")
    if external:
        yield external
        return
    cluster = RedisCluster()
    try:
        yield cluster.url
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def owns_redis() -> bool:
    """True when the suite started the server itself and may FLUSHALL it."""
    return not os.environ.get("COORDINATOR_TEST_REDIS_URL")


class _SyncView:
    """Runs an async object's coroutine methods to completion, so one suite drives both APIs."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **k: self._runner.run(attr(*a, **k))
        return attr


@dataclass
class Backend:
    """Builds coordinators for one cell of the matrix (redis|memory, sync|async)."""

    name: str
    url: str
    prefix: str
    is_async: bool
    runner: asyncio.Runner | None = None
    #: Seconds a worker may reuse an acquire decision; None: the library's default (the local view).
    staleness: float | None = 0

    def __post_init__(self) -> None:
        self._opened: list[Any] = []
        # A sync client on the same server, for tests that inspect or damage raw state.
        self.raw: redis.Redis = connect(self.url)

    def coordinator(self, *pools: co.PoolConfig, **kwargs: Any) -> Any:
        kwargs.setdefault("prefix", self.prefix)
        # Loopback Redis answers; a reply slowed by a loaded machine must not turn a behaviour test into
        # a test of the local stand-in (the outage and fault tests make Redis misbehave on purpose).
        kwargs.setdefault("timeout", 5.0)
        # The behaviour suite checks the scripts' semantics call by call: every acquire asks Redis.
        # The "-view" cells (the executor suite) run through the local view with the default staleness.
        if self.staleness is not None:
            kwargs.setdefault("staleness", self.staleness)
        if self.is_async:
            assert self.runner is not None
            runner = self.runner

            async def build() -> co.AsyncCoordinator:
                return co.AsyncCoordinator(self.url, list(pools), **kwargs)

            acoord = runner.run(build())
            self._opened.append(acoord)
            view = _SyncView(acoord, runner)
            view.pool = lambda name: _SyncView(acoord.pool(name), runner)  # type: ignore[method-assign]
            return view
        coord = co.Coordinator(self.url, list(pools), **kwargs)
        self._opened.append(coord)
        return coord

    def keys(self, pool: str) -> list[str]:
        return co.KeySchema(self.prefix).pool_keys(pool)

    def close(self) -> None:
        for c in self._opened:
            if self.is_async:
                assert self.runner is not None
                self.runner.run(c.aclose())
            else:
                c.close()
        self.raw.close()


CELLS = ["redis-sync", "redis-async", "memory-sync", "memory-async", "cluster-sync"]
#: The same suites through the local view at the default staleness, on real Redis and memory://.
VIEW_CELLS = ["redis-sync-view", "memory-async-view"]


@pytest.fixture(params=CELLS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """One cell of the matrix. A suite that also runs through the local view overrides this fixture
    with ``params=CELLS + VIEW_CELLS`` and the same body (tests/behaviour/test_executor.py)."""
    yield from make_backend(request)


def make_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    kind, mode, *view = request.param.split("-")
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif kind == "cluster":
        url = request.getfixturevalue("redis_cluster_url")
    else:
        url = f"memory://{uuid.uuid4().hex}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    runner = asyncio.Runner() if mode == "async" else None
    b = Backend(request.param, url, prefix, mode == "async", runner, staleness=None if view else 0)
    try:
        yield b
    finally:
        b.close()
        if runner is not None:
            runner.close()

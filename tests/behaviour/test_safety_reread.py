"""The safety re-read (docs/design.md, "The local view"): a view whose safety bound lapsed is checked
with one pipelined ``HMGET epoch version`` for all of a worker's pools, not an acquire script per pool;
only a pool whose version moved is acquired again."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

import coordinator as co
from coordinator.rules.view import SAFETY_STALENESS
from tests.helpers import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stats(client: co.Coordinator) -> tuple[int, int]:
    found = client.client.info("commandstats")
    return (int(found.get("cmdstat_evalsha", {}).get("calls", 0)), int(found.get("cmdstat_hmget", {}).get("calls", 0)))


async def _async_fleet(url: str, prefix: str, names: list[str]) -> tuple[co.AsyncCoordinator, Clock, list[Any]]:
    """An AsyncCoordinator on ``names`` with a settable clock, every view learned while notices are heard."""
    import asyncio

    coord = co.AsyncCoordinator(url, [co.PoolConfig(name=n, members=[co.Member(id="a"), co.Member(id="b")])
                                      for n in names], prefix=prefix, legacy_notices=False)
    clock = Clock()
    for name in names:
        coord._codec(name).clock = clock
    pools = [coord.pool(n) for n in names]
    for pool in pools:
        await pool.acquire()
    deadline = time.monotonic() + 10
    while not coord._codec(names[0]).view.health.ok:
        assert time.monotonic() < deadline, "the notice subscription is up"
        await asyncio.sleep(0.005)
    for pool in pools:
        await pool.acquire()
    return coord, clock, pools


@pytest.fixture(params=["redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url"))


def test_lapsed_views_are_checked_in_one_round_trip_and_only_changed_pools_re_acquire(url: str) -> None:
    prefix = f"sr{uuid.uuid4().hex[:8]}"
    names = [f"p{i}" for i in range(6)]
    coord = co.Coordinator(url, [co.PoolConfig(name=n, members=[co.Member(id="a"), co.Member(id="b")])
                                 for n in names], prefix=prefix, legacy_notices=False)
    clock = Clock()
    for name in names:
        coord._codec(name).clock = clock
    pools = [coord.pool(n) for n in names]
    for pool in pools:
        pool.acquire()
    wait_for(lambda: coord._codec("p0").view.health.ok, "the notice subscription is up")
    for pool in pools:
        pool.acquire()  # learned while notices are heard: held up to the safety bound
    # A write no notice announced (by hand: what a lost notice looks like) to one pool.
    coord.client.hincrby(co.KeySchema(prefix).pool("p3"), "version", 1)
    before = stats(coord) if "cluster" not in url else None
    clock.now += SAFETY_STALENESS
    selections = [pool.acquire() for pool in pools]
    assert [s.member.id for s in selections] == ["a"] * len(names)
    views = [coord._codec(n).view for n in names]
    if before is not None:
        evalsha, hmget = stats(coord)
        # (The scripts' own HMGETs count too: the one acquire below adds its own.)
        assert hmget - before[1] >= len(names), "one HMGET per pool, pipelined"
        assert evalsha - before[0] == 1, "only the pool whose version moved ran the acquire script"
    assert all(v.hits > 0 for v in views)
    clock.now += 1
    before_hits = [v.hits for v in views]
    for pool in pools:
        pool.acquire()
    assert [v.hits for v in views] == [h + 1 for h in before_hits], "every view holds again"
    coord.client.delete(*[k for n in names for k in co.KeySchema(prefix).pool_keys(n)])
    coord.close()


def test_the_async_driver_re_reads_the_same_way(url: str) -> None:
    import asyncio

    async def main() -> None:
        prefix = f"sra{uuid.uuid4().hex[:8]}"
        names = [f"p{i}" for i in range(4)]
        coord, clock, pools = await _async_fleet(url, prefix, names)
        await coord.client.hincrby(co.KeySchema(prefix).pool("p1"), "version", 1)
        views = [coord._codec(n).view for n in names]
        clock.now += SAFETY_STALENESS
        misses = [v.misses for v in views]
        for pool in pools:
            assert (await pool.acquire()).member.id == "a"
        # Only p1 (its version moved) missed the view; the others were confirmed by the re-read.
        assert [v.misses - m for v, m in zip(views, misses, strict=True)] == [0, 1, 0, 0]
        await coord.client.delete(*[k for n in names for k in co.KeySchema(prefix).pool_keys(n)])
        await coord.aclose()

    asyncio.run(main())


def test_concurrent_acquires_on_lapsed_views_share_one_re_read(redis_url: str) -> None:
    """Acquires that find their bound lapsed at the same time wait for one re-read, not one each."""
    import asyncio

    async def main() -> None:
        prefix = f"srs{uuid.uuid4().hex[:8]}"
        names = [f"p{i}" for i in range(4)]
        coord, clock, pools = await _async_fleet(redis_url, prefix, names)
        pipelines = 0
        real = coord.client.pipeline

        def counting(*args: object, **kwargs: object) -> object:
            nonlocal pipelines
            pipelines += 1
            return real(*args, **kwargs)

        coord.client.pipeline = counting  # type: ignore[method-assign]
        clock.now += SAFETY_STALENESS
        selections = await asyncio.gather(*(pool.acquire() for pool in pools for _ in range(8)))
        assert {s.member.id for s in selections} == {"a"}
        assert pipelines == 1, "32 concurrent acquires on 4 lapsed views: one re-read"
        coord.client.pipeline = real  # type: ignore[method-assign]
        await coord.client.delete(*[k for n in names for k in co.KeySchema(prefix).pool_keys(n)])
        await coord.aclose()

    asyncio.run(main())

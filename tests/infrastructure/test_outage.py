"""Redis outages (docs/design.md, "When Redis is away"): the coordinator is never the reason a call fails.

Each test runs its own redis-server so it can kill, pause and restart it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import pytest
import redis
from conftest import RedisServer
from helpers import pool_config

import coordinator as co


@pytest.fixture
def server():
    srv = RedisServer()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        os.kill(srv.proc.pid, signal.SIGCONT)
    srv.close()


def test_calls_keep_working_while_redis_is_down_and_merge_back(server, caplog):
    caplog.set_level(logging.INFO, logger="coordinator")
    coord = co.Coordinator(server.url, [pool_config()], staleness=0, probe_interval=0.2)
    pool = coord.pool("p")
    pool.report_failure(pool.acquire(), "rate_limited", retry_after=600)  # k0 cools in Redis
    assert pool.acquire().member.id == "k1"
    server.stop()

    sel = pool.acquire()
    assert sel.member.id == "k1" and sel.epoch.startswith("local"), "seeded from the last state Redis gave"
    result = pool.report_failure(sel, "auth")  # learned during the outage
    assert result.cooled and result.active == "k2"
    for _ in range(50):
        pool.report_success(pool.acquire())
    with pytest.raises(co.StoreUnavailableError, match="operator actions are never queued"):
        pool.park("k2", reason="while down")

    server.start()  # back, and empty
    raw = redis.Redis(port=server.port, decode_responses=True)
    deadline = 200
    while pool.acquire().epoch.startswith("local"):
        deadline -= 1
        assert deadline > 0, "never re-synced"
        time.sleep(0.01)
    snap = pool.snapshot()
    assert snap.member("k1").cooling_until is not None, "the cooldown learned while down was merged"
    assert snap.active == "k2" and not snap.member("k2").parked, "the refused park was never applied"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is unreachable" in m for m in messages) == 1
    assert sum("is back" in m for m in messages) == 1
    raw.close()
    coord.close()


def test_a_down_redis_costs_one_timeout_per_probe_interval(server, monkeypatch):
    coord = co.Coordinator(server.url, [pool_config()], staleness=0, probe_interval=60)
    pool = coord.pool("p")
    pool.acquire()
    server.stop()
    calls: list[object] = []
    original = coord._store._call

    def counting(scripts, proto, op):
        if scripts is coord._store.scripts:
            calls.append(op.script)
        return original(scripts, proto, op)

    monkeypatch.setattr(coord._store, "_call", counting)
    for _ in range(100):
        pool.report_success(pool.acquire())
    assert len(calls) == 1, "only the first call met the dead server; the rest went local"
    coord.close()


def test_a_paused_server_times_out_fast_and_recovers(server):
    coord = co.Coordinator(server.url, [pool_config()], staleness=0, probe_interval=0.2, timeout=0.1)
    pool = coord.pool("p")
    pool.acquire()
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(20):
            pool.report_success(pool.acquire())
        assert coord._store.breaker.open
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    for _ in range(500):
        if not pool.acquire().epoch.startswith("local"):
            break
        time.sleep(0.01)
    assert not coord._store.breaker.open
    assert pool.snapshot().epoch is not None
    coord.close()


def test_async_coordinator_survives_an_outage(server):
    async def main():
        coord = co.AsyncCoordinator(server.url, [pool_config()], staleness=0, probe_interval=0.2)
        pool = coord.pool("p")
        await pool.report_failure(await pool.acquire(), "quota_exhausted")
        server.stop()
        sel = await pool.acquire()
        assert sel.member.id == "k1" and sel.epoch.startswith("local")
        await pool.report_failure(sel, "rate_limited", retry_after=300)
        with pytest.raises(co.StoreUnavailableError):
            await pool.rotate()
        server.start()
        for _ in range(300):
            if not (await pool.acquire()).epoch.startswith("local"):
                break
            await asyncio.sleep(0.01)
        snap = await pool.snapshot()
        assert snap.member("k1").cooling_until is not None and snap.active == "k2"
        await coord.aclose()

    asyncio.run(main())


def test_without_local_fallback_the_error_is_raised(server):
    coord = co.Coordinator(server.url, [pool_config()], staleness=0, local_fallback=False)
    pool = coord.pool("p")
    pool.acquire()
    server.stop()
    with pytest.raises(co.StoreUnavailableError, match="unreachable"):
        pool.acquire()
    coord.close()

"""Lost state heals from the fleet's memory (docs/design.md, "When Redis is away"): after FLUSHDB (as
after an eviction, or an empty replica promoted) the next worker to touch a pool merges what it knew
(cooldowns by max(), ejection counts, parks) into the new state; a failure reported under the old token
is applied, not dropped; a failure reported during an outage reaches Redis afterwards."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
import redis
from conftest import RedisServer

import coordinator as co
from tests.helpers import members


def cfg() -> co.PoolConfig:
    return co.PoolConfig(name="p", members=members(3))


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def test_after_flushdb_the_first_worker_brings_back_what_it_knew(redis_url: str, prefix: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coordinator")
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    coord = co.Coordinator(redis_url, [cfg()], prefix=prefix, staleness=0)
    pool = coord.pool("p")
    pool.report_failure(pool.acquire(), "quota_exhausted", retry_after=3600)  # k0 out for an hour
    pool.park("k2", reason="billing")
    assert coord.call("p", lambda m: m.id) == "k1"  # workers keep calling: each reply tells them the state
    before = pool.snapshot()
    assert before.active == "k1"
    for key in co.KeySchema(prefix).pool_keys("p"):
        raw.delete(key)  # what FLUSHDB or an eviction does to this pool
    assert coord.call("p", lambda m: m.id) == "k1", "not the exhausted member of the empty state"
    after = pool.snapshot()
    assert after.epoch != before.epoch and after.active == "k1"
    k0 = after.member("k0")
    assert k0.cooling_until is not None and k0.cooling_until >= before.member("k0").cooling_until - 1
    assert k0.ejections == 1 and after.member("k2").parked and after.member("k2").reason == "billing"
    assert sum("lost its state" in r.getMessage() for r in caplog.records) == 1
    coord.close()
    raw.close()


def test_a_failure_reported_under_the_old_token_is_applied(redis_url: str, prefix: str) -> None:
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    coord = co.Coordinator(redis_url, [cfg()], prefix=prefix, staleness=10)
    pool = coord.pool("p")
    old = pool.acquire()
    raw.delete(*co.KeySchema(prefix).pool_keys("p"))
    sel = pool.acquire()  # still the old epoch's decision, from the local view
    assert sel.epoch == old.epoch
    result = pool.report_failure(sel, "quota_exhausted", retry_after=3600)
    assert not result.stale and result.cooled and result.active == "k1"
    assert pool.snapshot().member("k0").cooling_until is not None
    coord.close()
    raw.close()


def test_a_failure_reported_during_an_outage_reaches_redis_and_ejections_survive(prefix: str) -> None:
    with RedisServer() as server:
        coord = co.Coordinator(server.url, [cfg()], prefix=prefix, staleness=0, probe_interval=0.2)
        pool = coord.pool("p")
        sel = pool.acquire()
        server.stop()
        result = pool.report_failure(sel, "rate_limited", retry_after=600)  # the token Redis gave
        assert not result.stale and result.cooled, "applied by the stand-in, not dropped as stale"
        server.start()  # back, and empty
        deadline = time.monotonic() + 10
        while pool.acquire().epoch.startswith("local"):
            assert time.monotonic() < deadline, "never re-synced"
            time.sleep(0.02)
        snap = pool.snapshot()
        assert snap.member("k0").cooling_until is not None and snap.member("k0").ejections == 1
        assert snap.active == "k1"
        coord.close()


def test_an_allkeys_eviction_policy_is_warned_about_at_start(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coordinator")
    with RedisServer("--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru") as server:
        co.Coordinator(server.url, [cfg()], prefix=prefix).close()
    warned = [r.getMessage() for r in caplog.records if "allkeys-lru" in r.getMessage()]
    assert len(warned) == 1 and "noeviction" in warned[0]
    caplog.clear()
    with RedisServer("--maxmemory", "100mb", "--maxmemory-policy", "noeviction") as server:
        co.Coordinator(server.url, [cfg()], prefix=prefix).close()
    assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]


def test_a_real_eviction_heals_from_the_fleets_memory_without_a_flap(prefix: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Redis really evicts the pool's keys (allkeys-lru, memory filled with other keys): the next call
    merges what the worker knew, so the exhausted member stays out (its deadline kept by max()) and no
    call goes to it."""
    caplog.set_level(logging.INFO, logger="coordinator")
    with RedisServer("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru") as server:
        raw = redis.Redis.from_url(server.url, decode_responses=True)
        # timeout: no stand-in on a loaded machine
        coord = co.Coordinator(server.url, [cfg()], prefix=prefix, staleness=0, timeout=5.0)
        warned = [r.getMessage() for r in caplog.records if "maxmemory-policy is allkeys-lru" in r.getMessage()]
        assert len(warned) == 1 and "noeviction" in warned[0]
        pool = coord.pool("p")
        pool.report_failure(pool.acquire(), "quota_exhausted", retry_after=3600)  # k0 out for an hour
        pool.park("k2", reason="billing")
        served: list[str] = []

        def fn(member: co.Member) -> str:
            served.append(member.id)
            return member.id

        assert coord.call("p", fn) == "k1"
        before = pool.snapshot()
        state = co.KeySchema(prefix).pool("p")
        filled = 0
        while raw.exists(state):  # EXISTS does not touch the key's LRU clock
            assert filled < 5000, "Redis never evicted the pool's state"
            raw.set(f"filler:{filled}", "x" * 20_000)
            filled += 1
        evicted = int(raw.info("stats")["evicted_keys"])
        assert evicted > 0
        errors = []
        for _ in range(50):
            try:
                coord.call("p", fn)
            except Exception as exc:  # the goal is none
                errors.append(exc)
        assert errors == [] and set(served) == {"k1"}, (errors, served)
        after = pool.snapshot()
        assert after.epoch != before.epoch and after.active == "k1"
        k0 = after.member("k0")
        assert k0.cooling_until is not None and k0.cooling_until >= before.member("k0").cooling_until - 0.01
        assert k0.ejections == 1 and after.member("k2").parked and after.member("k2").reason == "billing"
        assert sum("lost its state" in r.getMessage() for r in caplog.records) == 1
        assert len([r for r in caplog.records if "allkeys-lru" in r.getMessage()]) == 1
        coord.close()
        raw.close()

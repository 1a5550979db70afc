"""Rolling deploys (docs/design.md, "Rolling deploys"): workers of an old and a new configuration of one pool
run side by side against a real redis-server, as fast as they can, sync and async. The stored membership
changes exactly once (one ``reconfigured`` event, no flapping back), every call is served, and each worker
uses only members of its own configuration that the fleet's membership has."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from typing import Any

import pytest
import redis
from helpers import join_or_kill

import coordinator as co

PER_CONFIG = 3
#: Worker coordinators wait up to 5 s (timeout=5.0) for Redis: on a loaded machine a slower reply would be
#: served by the stand-in, which is not what these tests are about.
SECONDS = 2.0
OLD = ["k0", "k1", "k2"]
NEW = ["k1", "k2", "k3"]


def cfg(ids: list[str], revision: int) -> co.PoolConfig:
    return co.PoolConfig(name="p", members=[co.Member(id=i) for i in ids], revision=revision)


def _worker(url: str, prefix: str, ids: list[str], revision: int, use_async: bool, barrier: Any, out: Any) -> None:
    used: list[tuple[float, str]] = []
    errors: list[str] = []

    def fn(member: co.Member) -> str:
        used.append((time.time(), member.id))
        return member.id

    if use_async:
        async def run() -> None:
            coord = co.AsyncCoordinator(url, [cfg(ids, revision)], prefix=prefix, staleness=0, timeout=5.0)
            barrier.wait(30)
            end = time.monotonic() + SECONDS
            while time.monotonic() < end:
                try:
                    await coord.call("p", fn)
                except Exception as exc:
                    errors.append(repr(exc))
            await coord.aclose()

        asyncio.run(run())
    else:
        coord = co.Coordinator(url, [cfg(ids, revision)], prefix=prefix, staleness=0, timeout=5.0)
        barrier.wait(30)
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            try:
                coord.call("p", fn)
            except Exception as exc:
                errors.append(repr(exc))
        coord.close()
    out.put({"ids": ids, "used": used, "errors": errors})


def _race(url: str, prefix: str, old_revision: int, new_revision: int) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2 * PER_CONFIG)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, prefix, ids, rev, i % 2 == 1, barrier, out))
             for ids, rev in ((OLD, old_revision), (NEW, new_revision)) for i in range(PER_CONFIG)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=60) for _ in procs]
    finally:
        join_or_kill(procs)
    return results


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize(("old_revision", "new_revision"), [(1, 2), (0, 0)], ids=["revisions", "no-revisions"])
def test_two_configurations_racing_change_the_membership_once(redis_url: str, prefix: str, old_revision: int,
                                                              new_revision: int) -> None:
    # The pool as the old deploy left it.
    with co.Coordinator(redis_url, [cfg(OLD, old_revision)], prefix=prefix, staleness=0, timeout=5.0) as old:
        assert old.call("p", lambda m: m.id) == "k0"
    results = _race(redis_url, prefix, old_revision, new_revision)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    state, events_key = co.KeySchema(prefix).pool_keys("p")
    entries = [f for _, f in raw.xrange(events_key)]
    changed = [f for f in entries if f["type"] == "reconfigured"]
    calls = sum(len(r["used"]) for r in results)
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[:3]
    assert calls > 100
    assert len(changed) == 1, [f["type"] for f in entries]
    assert raw.hget(state, "members") == ",".join(NEW) and (raw.hget(state, "revision") or "0") == str(new_revision)
    changed_at = int(changed[0]["time_us"]) / 1e6
    for r in results:
        assert {member for _, member in r["used"]} <= set(r["ids"])
        late = [member for at, member in r["used"] if at > changed_at + 0.2]
        assert set(late) <= set(NEW), f"{r['ids']} used a member the fleet no longer has: {set(late)}"
    assert {m for r in results if r["ids"] == NEW for _, m in r["used"]} >= {"k1"}
    raw.close()


def test_a_lower_revision_never_replaces_the_membership(redis_url: str, prefix: str) -> None:
    with co.Coordinator(redis_url, [cfg(NEW, 2)], prefix=prefix, staleness=0, timeout=5.0) as new:
        new.call("p", lambda m: m.id)
        with co.Coordinator(redis_url, [cfg(OLD, 1)], prefix=prefix, staleness=0, timeout=5.0) as old:
            pool = old.pool("p")
            assert {old.call("p", lambda m: m.id) for _ in range(20)} == {"k1"}, "the members both have"
            sel = pool.acquire()
            assert pool.report_failure(sel, "rate_limited", retry_after=60).cooled
            assert old.call("p", lambda m: m.id) == "k2"
            assert new.pool("p").snapshot().member("k1").cooling_until is not None, "one fleet state"
            pool.report_failure(pool.acquire(), "rate_limited", retry_after=60)
            sel = pool.acquire()
            assert sel.degraded and sel.member.id in ("k1", "k2")
        snap = new.pool("p").snapshot()
        assert [m.id for m in snap.members] == NEW and snap.active == "k3"
        assert [e.type for e in new.pool("p").events()].count("reconfigured") == 0

"""Corrupt state healed exactly once fleet-wide (docs/design.md, "Corrupt state"): several real worker
processes, sync and async, meet one corrupt pool at the same instant against a real redis-server; every
call is served, the state is rebuilt once (one ``healed`` event, one log line in the whole fleet), and what
could be read, or (when nothing could) the cooldowns the workers remembered, is kept: no call goes to the
exhausted or the parked member."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import uuid
from typing import Any

import pytest
import redis

import coordinator as co
from tests.helpers import join_or_kill, members

WORKERS = 6
CALLS = 60
# Coordinators here wait up to 5 s (timeout=5.0) for Redis: on a loaded machine a slower reply would be
# served by the stand-in, which is not what these tests are about.


def cfg() -> co.PoolConfig:
    return co.PoolConfig(name="p", members=members(3))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def _worker(url: str, prefix: str, index: int, warm: bool, barrier: Any, out: Any) -> None:
    lines = _Lines()
    logging.getLogger("coordinator").addHandler(lines)
    logging.getLogger("coordinator").setLevel(logging.INFO)
    used: dict[str, int] = {}
    errors: list[str] = []

    def fn(member: co.Member) -> str:
        used[member.id] = used.get(member.id, 0) + 1
        return member.id

    if index % 2:
        async def run() -> None:
            coord = co.AsyncCoordinator(url, [cfg()], prefix=prefix, staleness=0, timeout=5.0)
            await coord.check()
            if warm:
                await coord.call("p", fn)
            barrier.wait(30)  # the parent corrupts the state now
            barrier.wait(30)
            for _ in range(CALLS):
                try:
                    await coord.call("p", fn)
                except Exception as exc:
                    errors.append(repr(exc))
            await coord.aclose()

        asyncio.run(run())
    else:
        coord = co.Coordinator(url, [cfg()], prefix=prefix, staleness=0, timeout=5.0)
        if warm:
            coord.call("p", fn)
        barrier.wait(30)
        barrier.wait(30)
        for _ in range(CALLS):
            try:
                coord.call("p", fn)
            except Exception as exc:
                errors.append(repr(exc))
        coord.close()
    out.put({"used": used, "errors": errors, "lines": lines.lines})


def _fleet(url: str, prefix: str, warm: bool, corrupt: Any) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, prefix, i, warm, barrier, out)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    try:
        barrier.wait(60)
        corrupt()
        barrier.wait(30)
        results = [out.get(timeout=60) for _ in procs]
    finally:
        join_or_kill(procs)
    return results


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _history(url: str, prefix: str) -> float:
    """k0 out for an hour (quota), k2 parked: the fleet is on k1. Returns k0's cooling deadline."""
    coord = co.Coordinator(url, [cfg()], prefix=prefix, staleness=0, timeout=5.0)
    pool = coord.pool("p")
    pool.report_failure(pool.acquire(), "quota_exhausted", retry_after=3600)
    pool.park("k2", reason="billing")
    until = pool.snapshot().member("k0").cooling_until
    coord.close()
    assert until is not None
    return until


def _check(url: str, prefix: str, results: list[dict[str, Any]], until: float, words: str,
           park_kept: bool = True) -> None:
    raw = redis.Redis.from_url(url, decode_responses=True)
    events_key = co.KeySchema(prefix).events("p")
    healed = [f for _, f in raw.xrange(events_key) if f.get("type") == "healed"]
    errors = [e for r in results for e in r["errors"]]
    used: dict[str, int] = {}
    for r in results:
        for member, n in r["used"].items():
            used[member] = used.get(member, 0) + n
    lines = [line for r in results for line in r["lines"]]
    said = [text for _, text in lines if "was corrupt" in text]
    assert errors == [], errors[:3]
    assert len(healed) == 1, healed
    assert words in healed[0]["reason"] and len(said) == 1 and words in said[0], said
    assert not [text for level, text in lines if level >= logging.ERROR or "lost its state" in text], lines
    assert set(used) == {"k1"}, f"a call went to the exhausted or the parked member: {used}"
    assert sum(used.values()) >= WORKERS * CALLS
    coord = co.Coordinator(url, [cfg()], prefix=prefix, staleness=0, timeout=5.0)
    snap = coord.pool("p").snapshot()
    coord.close()
    k0 = snap.member("k0")
    assert snap.epoch == healed[0]["epoch"] and snap.active == "k1" and words in snap.healed_reason
    assert k0.cooling_until is not None and k0.cooling_until >= until - 0.01 and k0.ejections == 1
    assert snap.member("k2").parked == park_kept and snap.member("k2").reason == ("billing" if park_kept else "")
    raw.close()


def test_fresh_workers_meeting_garbage_fields_heal_once_keeping_what_is_readable(redis_url: str,
                                                                                 prefix: str) -> None:
    until = _history(redis_url, prefix)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    state = co.KeySchema(prefix).pool("p")
    results = _fleet(redis_url, prefix, False,
                     lambda: raw.hset(state, mapping={"generation": "abc", "k1:failures": "1.5"}))
    _check(redis_url, prefix, results, until, "field generation is not an integer")
    raw.close()


def test_workers_meeting_a_state_key_of_another_type_heal_it_once_from_their_memory(redis_url: str,
                                                                                    prefix: str) -> None:
    until = _history(redis_url, prefix)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    state = co.KeySchema(prefix).pool("p")

    def corrupt() -> None:
        raw.delete(state)
        raw.rpush(state, "not a hash")

    # Nothing of the hash can be read: the cooldowns and ejection counts the workers remember (their last
    # replies) come back by max(); a park does not (an operator may have removed it since they last saw it).
    results = _fleet(redis_url, prefix, True, corrupt)
    _check(redis_url, prefix, results, until, "has type list, expected hash", park_kept=False)
    raw.close()


def test_a_heal_is_whole_even_when_redis_is_out_of_memory(prefix: str) -> None:
    """Redis refuses a script's first write when memory is full, but lets a script that already wrote
    finish: heal.lua's first write is a DEL, so the rebuilt state is written whole, never half."""
    from conftest import RedisServer

    with RedisServer("--maxmemory", "4mb", "--maxmemory-policy", "noeviction") as server:
        until = _history(server.url, prefix)
        raw = redis.Redis.from_url(server.url, decode_responses=True)
        state = co.KeySchema(prefix).pool("p")
        raw.hset(state, mapping={"generation": "abc", "k0:failures": "x"})
        filled = 0
        try:
            while True:
                raw.set(f"filler:{filled}", "x" * 20_000)
                filled += 1
                assert filled < 5000
        except redis.exceptions.OutOfMemoryError:
            pass
        with co.Coordinator(server.url, [cfg()], prefix=prefix, staleness=0, timeout=5.0) as coord:
            assert coord.call("p", lambda m: m.id) == "k1"
            snap = coord.pool("p").snapshot()
        assert snap.healed_at is not None and snap.active == "k1"
        assert snap.member("k0").cooling_until is not None and snap.member("k0").cooling_until >= until - 0.01
        assert snap.member("k2").parked and raw.hget(state, "generation") == "1"
        assert "k0:failures" not in raw.hgetall(state)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            raw.set("still-full", "x" * 20_000)  # the heal ran with memory full
        raw.close()

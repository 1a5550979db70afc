"""Concurrency proof: many OS processes against one real Redis race to report the same failure.

Every round all processes acquire the same selection, then all report its failure at once. The
pointer must move exactly one step, exactly one event must be written, and exactly one process may
see ``transitioned=True``. Parks made concurrently with failovers must all survive.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import coordinator as co

PROCESSES = 32
ROUNDS = 100


def _race_config() -> co.PoolConfig:
    # One member more than rounds, with hour-long cooldowns, so every round fails over a fresh member.
    return co.PoolConfig(name="race", members=[co.Member(id=f"m{i}") for i in range(ROUNDS + 1)])


def _racer(url: str, prefix: str, barrier: Any, out: Any) -> None:
    pool = co.Coordinator(url, [_race_config()], prefix=prefix).pool("race")
    rows = []
    for round_no in range(ROUNDS):
        barrier.wait()
        sel = pool.acquire()
        barrier.wait()
        result = pool.report_failure(sel, "quota_exhausted")
        rows.append((round_no, sel.member.id, sel.generation, result.transitioned))
    out.put(rows)


def test_32_processes_report_the_same_failure_for_100_rounds(redis_url):
    prefix = f"race{time.monotonic_ns()}"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES, timeout=60)
    out = ctx.Queue()
    started = time.monotonic()
    procs = [ctx.Process(target=_racer, args=(redis_url, prefix, barrier, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    elapsed = time.monotonic() - started
    print(f"\nconcurrency proof: {PROCESSES} processes x {ROUNDS} rounds in {elapsed:.2f}s")

    for round_no in range(ROUNDS):
        rows = [r[round_no] for r in results]
        assert {row[1] for row in rows} == {f"m{round_no}"}, "everyone acquired the same active member"
        assert len({row[2] for row in rows}) == 1, "under the same token"
        assert sum(row[3] for row in rows) == 1, f"round {round_no}: exactly one caller saw transitioned=True"

    pool = co.Coordinator(redis_url, [_race_config()], prefix=prefix).pool("race")
    events = pool.events(limit=10_000)
    failovers = [e for e in events if e.type == "failover"]
    assert len(failovers) == ROUNDS
    assert [(e.from_member, e.to_member) for e in failovers] == [(f"m{i}", f"m{i + 1}") for i in range(ROUNDS)]
    assert [e.generation for e in events] == list(range(1, ROUNDS + 2)), "one event per generation step"
    snap = pool.snapshot()
    assert snap.active == f"m{ROUNDS}" and snap.generation == ROUNDS + 1


def _parker(url: str, prefix: str, worker: int, barrier: Any, out: Any) -> None:
    cfg = co.PoolConfig(name="parks", members=[co.Member(id=f"m{i}") for i in range(PROCESSES * 2)])
    pool = co.Coordinator(url, [cfg], prefix=prefix).pool("parks")
    barrier.wait()
    acknowledged = []
    for i in range(20):
        if worker % 2 == 0:
            # Half the fleet parks its own member while the other half keeps failing over.
            pool.park(f"m{PROCESSES + worker // 2}", seconds=3600, reason=f"w{worker}-{i}")
            acknowledged.append(f"m{PROCESSES + worker // 2}")
        else:
            pool.report_failure(pool.acquire(), "rate_limited", retry_after=3600)
    out.put(acknowledged)


def test_no_park_is_lost_under_concurrent_failovers(redis_url):
    prefix = f"parks{time.monotonic_ns()}"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES, timeout=60)
    out = ctx.Queue()
    procs = [ctx.Process(target=_parker, args=(redis_url, prefix, w, barrier, out)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    acknowledged = {m for _ in procs for m in out.get(timeout=120)}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    cfg = co.PoolConfig(name="parks", members=[co.Member(id=f"m{i}") for i in range(PROCESSES * 2)])
    snap = co.Coordinator(redis_url, [cfg], prefix=prefix).pool("parks").snapshot()
    assert len(acknowledged) == PROCESSES // 2
    assert {m.id for m in snap.members if m.parked} == acknowledged
    events = co.Coordinator(redis_url, [cfg], prefix=prefix).pool("parks").events(limit=10_000)
    assert [e.generation for e in events] == list(range(1, len(events) + 1))
    assert sum(e.type == "parked" for e in events) == 20 * PROCESSES // 2

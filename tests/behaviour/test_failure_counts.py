"""Failure counts without success reports (docs/design.md, "Failure counts").

A transient failure is counted fleet-wide; the count restarts when the reporting worker served on
the member since its own last failure report there (no longer than the grace before the member's
last counted failure). So a member that truly fails is cooled after N failures in a row, each worker's
first report after it died restarting the run at most once (so at most N + (W - 1)(N - 1) failures
from W workers; exactly N from one), and a
member that fails now and then is never cooled, however many workers share it: a worker's report
restarts the count unless its own previous request there failed too.

The rules run through the real Lua, on memory:// (hypothesis) and on real Redis with many processes.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import coordinator as co


def _config(threshold: int) -> co.PoolConfig:
    return co.PoolConfig(name="p", members=[co.Member(id=f"k{i}") for i in range(3)],
                         cooldown=co.CooldownPolicy(transient_threshold=threshold))


def _fleet(url: str, workers: int, threshold: int) -> list[co.Coordinator]:
    prefix = f"fc{uuid.uuid4().hex[:8]}"
    return [co.Coordinator(url, [_config(threshold)], prefix=prefix) for _ in range(workers)]


@settings(max_examples=20, deadline=None)
@given(threshold=st.integers(min_value=2, max_value=4),
       order=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=30))
def test_a_dead_member_is_cooled_after_n_failures_each_worker_restarting_the_run_at_most_once(threshold: int,
                                                                                  order: list[int]) -> None:
    fleet = _fleet(f"memory://fc{uuid.uuid4().hex}", 4, threshold)
    pools = [coord.pool("p") for coord in fleet]
    for pool in pools:  # every worker served on k0 before it died
        sel = pool.acquire()
        assert sel.member.id == "k0" and pool.report_success(sel) is not None
    counted, reported, served = 0, set(), {i for i in range(4)}
    cooled_after = None
    for n, worker in enumerate(order, start=1):
        result = pools[worker].report_failure(pools[worker].acquire(), "transient")
        # The reference rule: a worker's first report after its success restarts the run.
        counted = 1 if worker in served else counted + 1
        served.discard(worker)
        reported.add(worker)
        if result.cooled or result.stale or result.cooling_until is not None:
            cooled_after = n
            break
        assert result.failures == counted
    if cooled_after is None:
        assert counted < threshold
    else:
        assert counted == threshold, "cooled exactly when the count reached the threshold"
        # Each other worker's first report may restart the run once, dropping at most N - 1 counted.
        assert cooled_after <= threshold + (len(reported) - 1) * (threshold - 1)
        if len(reported) == 1:
            assert cooled_after == threshold, "one worker alone: N failures in a row"
    for coord in fleet:
        coord.close()


@settings(max_examples=15, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(min_value=0, max_value=3), st.booleans()), max_size=60))
def test_a_member_that_serves_between_each_workers_failures_is_never_cooled(steps: list[tuple[int, bool]]) -> None:
    fleet = _fleet(f"memory://fc{uuid.uuid4().hex}", 4, 2)
    pools = [coord.pool("p") for coord in fleet]
    for pool in pools:
        pool.report_success(pool.acquire())
    last_failed = [False] * 4
    for worker, fails in steps:
        pool = pools[worker]
        sel = pool.acquire()
        if fails and not last_failed[worker]:
            result = pool.report_failure(sel, "transient")
            assert not result.cooled and result.failures == 1
        else:
            pool.report_success(sel)
        last_failed[worker] = fails and not last_failed[worker]
    snap = pools[0].snapshot()
    assert snap.active == "k0" and snap.generation == 1 and snap.member("k0").cooling_until is None
    for coord in fleet:
        coord.close()


# -- many processes against real Redis --------------------------------------------------------------

PROCESSES = 4
REQUESTS = 1500


def _healthy_worker(url: str, prefix: str, index: int, barrier: Any, out: Any) -> None:
    # A view that holds for a minute even before the notice subscription is confirmed: the cold
    # acquires then do not depend on how fast a loaded machine confirms it.
    coord = co.Coordinator(url, [_config(3)], prefix=prefix, staleness=60)
    pool = coord.pool("p")
    barrier.wait()
    failures = 0
    for i in range(REQUESTS):
        sel = pool.acquire()
        if (i + 7 * index + 1) % 100 == 0:  # 1% of requests fail, never two in a row, never the first
            pool.report_failure(sel, "transient")
            failures += 1
        else:
            pool.report_success(sel)
    out.put(failures)
    coord.close()


def test_a_99_percent_healthy_member_under_fleet_traffic_is_never_cooled(redis_url: str) -> None:
    prefix = f"fch{time.monotonic_ns()}"
    raw = co.Coordinator(redis_url, [_config(3)], prefix=prefix).client
    calls_before = int(raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(PROCESSES, timeout=60), ctx.Queue()
    procs = [ctx.Process(target=_healthy_worker, args=(redis_url, prefix, i, barrier, out)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    failures = sum(results)
    assert failures == PROCESSES * REQUESTS // 100
    # One script call per failure: no success report, no acquire after a failure, no reset
    # (docs/design.md, "Failure counts"). Besides, each process's start: the permission check, its
    # first acquire, one after its notice subscription is confirmed (which drops the views), and the
    # first call of a script Redis does not hold yet (NOSCRIPT, then loaded and called again).
    # Far below the 1,440 successes, none of which may cost a call.
    calls = int(raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)) - calls_before
    assert calls <= failures + 5 * PROCESSES, calls
    coord = co.Coordinator(redis_url, [_config(3)], prefix=prefix)
    snap = coord.pool("p").snapshot()
    assert snap.active == "k0" and snap.member("k0").cooling_until is None
    assert [e.type for e in coord.pool("p").events()] == ["created"], "no failover, no ejection"
    assert snap.member("k0").failures <= 1
    coord.close()


def _dying_worker(url: str, prefix: str, barrier: Any, out: Any) -> None:
    coord = co.Coordinator(url, [_config(3)], prefix=prefix)
    pool = coord.pool("p")
    pool.report_success(pool.acquire())  # it served until now
    barrier.wait()
    counted = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sel = pool.acquire()
        if sel.member.id != "k0":
            break
        result = pool.report_failure(sel, "transient")
        if result.cooled or (not result.stale and result.cooling_until is None):
            counted += 1  # this report was counted (or made the cooldown)
    out.put(counted)
    coord.close()


def test_a_member_that_dies_is_cooled_each_process_restarting_the_run_at_most_once(redis_url: str) -> None:
    prefix = f"fcd{time.monotonic_ns()}"
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(PROCESSES, timeout=60), ctx.Queue()
    procs = [ctx.Process(target=_dying_worker, args=(redis_url, prefix, barrier, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    counted = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert 3 <= sum(counted) <= 3 + (PROCESSES - 1) * 2, counted
    coord = co.Coordinator(redis_url, [_config(3)], prefix=prefix)
    snap = coord.pool("p")
    assert snap.snapshot().active == "k1"
    assert [e.type for e in snap.events()] == ["created", "failover"], "one failover, once"
    coord.close()

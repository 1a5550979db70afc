"""The worker's local view (docs/design.md, "The local view"): zero round trips on the happy path,
dropped by change notices,
bounded by staleness, and harmless when a notice is missed. No timing assertions: time is injected
where it matters, and waits are for conditions, bounded."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest
import redis
from conftest import RedisServer
from helpers import event_types, pool_config, wait_for

import coordinator as co
from coordinator.core.config import Member
from coordinator.rules.view import PoolView
from coordinator.store.codec import decode_acquire

MEMBERS = {m: Member(id=m) for m in ("a", "b", "c")}


def reply(**fields):
    base = {"epoch": "e1", "generation": 3, "version": 7, "now": 1_000_000.0, "active": "a", "member": "a",
            "valid_until": 1_000_000.0 + 86_400_000, "degraded": False, "lease": "", "rotation": "", "dirty": ""}
    base.update(fields)
    return base


def test_decision_is_reused_until_the_staleness_bound():
    view = PoolView("p", MEMBERS, staleness=1.0)
    view.learn_acquire(decode_acquire(reply()), now=100.0)
    sel = view.selection(100.5)
    assert sel is not None and (sel.member.id, sel.epoch, sel.generation) == ("a", "e1", 3)
    assert sel.now == pytest.approx(1000.5)
    assert view.selection(101.0) is None, "never older than staleness"


def test_valid_until_shorter_than_staleness_wins():
    view = PoolView("p", MEMBERS, staleness=10.0)
    view.learn_acquire(decode_acquire(reply(valid_until=1_000_000.0 + 250)), now=100.0)
    assert view.selection(100.2) is not None
    assert view.selection(100.3) is None


def test_newer_notice_drops_the_decision_older_does_not():
    view = PoolView("p", MEMBERS, staleness=60.0)
    view.learn_acquire(decode_acquire(reply()), now=100.0)
    view.notice("e1", 6)
    view.notice("e1", 7)
    assert view.selection(100.1) is not None
    view.notice("e1", 8)
    assert view.selection(100.2) is None


def test_new_epoch_drops_the_decision():
    view = PoolView("p", MEMBERS, staleness=60.0)
    view.learn_acquire(decode_acquire(reply()), now=100.0)
    view.notice("e2", 1)
    assert view.selection(100.1) is None


def test_a_notice_that_overtook_the_reply_keeps_it_from_being_used():
    view = PoolView("p", MEMBERS, staleness=60.0)
    view.notice("e1", 8)
    view.learn_acquire(decode_acquire(reply(version=7)), now=100.0)
    assert view.selection(100.1) is None


@pytest.mark.parametrize("fields", [{"degraded": True}, {"lease": "xyz"}, {"valid_until": 0}])
def test_degraded_probe_and_uncacheable_answers_are_not_reused(fields):
    view = PoolView("p", MEMBERS, staleness=60.0)
    view.learn_acquire(decode_acquire(reply(**fields)), now=100.0)
    assert view.selection(100.0) is None


def test_zero_staleness_never_reuses():
    view = PoolView("p", MEMBERS, staleness=0)
    view.learn_acquire(decode_acquire(reply()), now=100.0)
    assert view.selection(100.0) is None


def test_round_robin_rotation_is_spread_locally_by_weight():
    view = PoolView("p", MEMBERS, staleness=60.0)
    view.learn_acquire(decode_acquire(reply(active="", member="a", rotation="a:1,c:3")), now=100.0)
    picks = [view.selection(100.0).member.id for _ in range(40)]
    assert picks.count("a") == 10 and picks.count("c") == 30 and "b" not in picks


def test_only_successes_that_reset_something_are_news():
    view = PoolView("p", MEMBERS, staleness=60.0)
    view.learn_acquire(decode_acquire(reply(dirty="b")), now=100.0)
    sel_a = view.selection(100.0)
    assert not view.success_is_news(sel_a, 100.0)
    sel_b = co.Selection(pool="p", member=MEMBERS["b"], epoch="e1", generation=3)
    assert view.success_is_news(sel_b, 100.0)
    probe = co.Selection(pool="p", member=MEMBERS["a"], epoch="e1", generation=3, lease="l")
    assert view.success_is_news(probe, 100.0)
    assert view.success_is_news(sel_a, 200.0), "an expired decision knows nothing"


def test_a_sticky_notice_brings_the_new_decision_along():
    from coordinator.store.notices import parse_notice

    view = PoolView("p", MEMBERS, staleness=1.0)
    view.learn_acquire(decode_acquire(reply()), now=100.0)
    notice = parse_notice("p e1 4 8 b a")
    view.notice(notice.epoch, notice.version, notice, now=100.5)
    sel = view.selection(100.6)
    assert (sel.member.id, sel.generation) == ("b", 4)
    assert view.success_is_news(co.Selection(pool="p", member=MEMBERS["a"], epoch="e1", generation=4), 100.6)
    assert not view.success_is_news(sel, 100.6)
    assert view.selection(101.5) is None, "the staleness bound holds for notices too"
    old = parse_notice("p e1 3 7 c -")
    view.notice(old.epoch, old.version, old, now=100.7)
    assert view.selection(100.8) is None or view.selection(100.8).member.id != "c", "an older notice is ignored"


def test_a_notice_without_a_decision_only_drops():
    from coordinator.store.notices import parse_notice

    view = PoolView("p", MEMBERS, staleness=1.0)
    view.learn_acquire(decode_acquire(reply()), now=100.0)
    for text in ("p e1 4 8 - -", "p e1 5 9", "p e1 6 10 nobody -"):
        notice = parse_notice(text)
        view.notice(notice.epoch, notice.version, notice, now=100.1)
        assert view.selection(100.2) is None
    assert parse_notice("garbage") is None and parse_notice(b"p e1 x 1") is None


# -- against real stores ------------------------------------------------------------------------------


def test_happy_path_costs_zero_round_trips():
    server = RedisServer()
    try:
        coord = co.Coordinator(server.url, [pool_config()], staleness=30)
        pool = coord.pool("p")
        pool.report_success(pool.acquire())
        wait_for(lambda: coord._listener is not None and coord._listener.state.subscribed.is_set())
        pool.acquire()  # the subscription dropped what was learned before it: learn again
        raw = redis.Redis(port=server.port)
        raw.config_resetstat()
        for _ in range(200):
            pool.report_success(pool.acquire())
        stats = raw.info("commandstats")
        assert "cmdstat_evalsha" not in stats and "cmdstat_eval" not in stats, stats
        raw.close()
        coord.close()
    finally:
        server.close()


@pytest.fixture(params=["redis", "memory"])
def url(request):
    return request.getfixturevalue("redis_url") if request.param == "redis" else f"memory://{uuid.uuid4().hex}"


def test_change_notice_moves_a_worker_before_its_staleness_runs_out(url):
    prefix = f"v{uuid.uuid4().hex[:8]}"
    writer = co.Coordinator(url, [pool_config()], prefix=prefix, staleness=0)
    reader = co.Coordinator(url, [pool_config()], prefix=prefix, staleness=60)
    reader_pool = reader.pool("p")
    assert reader_pool.acquire().member.id == "k0"
    wait_for(lambda: reader._listener.state.subscribed.is_set())
    assert reader_pool.acquire().member.id == "k0"
    writer.pool("p").report_failure(writer.pool("p").acquire(), "rate_limited", retry_after=600)
    # Staleness is a minute and the wait at most 10 s: only the notice can make the reader move.
    wait_for(lambda: reader_pool.acquire().member.id == "k1")
    reader.close()
    writer.close()


def test_missed_notice_costs_one_request_and_no_duplicate_event(url):
    prefix = f"v{uuid.uuid4().hex[:8]}"
    writer = co.Coordinator(url, [pool_config()], prefix=prefix, staleness=0)
    reader = co.Coordinator(url, [pool_config()], prefix=prefix, staleness=60)
    pool = reader.pool("p")
    pool.acquire()
    wait_for(lambda: reader._listener.state.subscribed.is_set())
    assert pool.acquire().member.id == "k0"
    reader._listener.close()  # from here on the reader misses every notice
    writer.pool("p").report_failure(writer.pool("p").acquire(), "rate_limited", retry_after=600)
    stale = pool.acquire()
    assert stale.member.id == "k0", "the reader still believes k0 is active"
    result = pool.report_failure(stale, "rate_limited", retry_after=600)
    assert result.stale and not result.transitioned and result.active == "k1"
    assert pool.acquire().member.id == "k1", "the report's reply refreshed the view"
    assert event_types(pool) == ["created", "failover"]
    reader.close()
    writer.close()


def test_async_coordinator_uses_the_view_and_notices(url):
    prefix = f"v{uuid.uuid4().hex[:8]}"

    async def main():
        writer = co.AsyncCoordinator(url, [pool_config()], prefix=prefix, staleness=0)
        reader = co.AsyncCoordinator(url, [pool_config()], prefix=prefix, staleness=60)
        pool = reader.pool("p")
        assert (await pool.acquire()).member.id == "k0"
        deadline = time.monotonic() + 10
        while not reader._listener.state.subscribed.is_set():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        sel = await pool.acquire()
        assert (await pool.report_success(sel)).reset is False
        await writer.pool("p").report_failure(await writer.pool("p").acquire(), "auth")
        while (await pool.acquire()).member.id != "k1":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        await reader.aclose()
        await writer.aclose()

    asyncio.run(main())


def test_lost_subscription_is_logged_once_and_recovers(caplog):
    caplog.set_level(logging.INFO, logger="coordinator")
    server = RedisServer()
    try:
        coord = co.Coordinator(server.url, [pool_config()], staleness=30)
        pool = coord.pool("p")
        pool.acquire()
        wait_for(lambda: coord._listener.state.subscribed.is_set())
        raw = redis.Redis(port=server.port)
        raw.client_kill_filter(_type="pubsub")
        wait_for(lambda: coord._listener.state.lost or not coord._listener.state.subscribed.is_set())
        wait_for(lambda: coord._listener.state.subscribed.is_set() and not coord._listener.state.lost)
        lost = [r for r in caplog.records if "change notices" in r.getMessage() and "lost" in r.getMessage()]
        resumed = [r for r in caplog.records if "resumed" in r.getMessage()]
        assert len(lost) == 1 and len(resumed) == 1
        raw.close()
        coord.close()
    finally:
        server.close()

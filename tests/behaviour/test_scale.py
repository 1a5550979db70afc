"""Fleet scale (docs/design.md, "Scripts", "Change notices", "The local view"): what a call costs Redis
does not grow with the pool, notices reach only the pool's listeners and only for real changes, a
healthy subscription lets views wait for them, and the happy path of ``call`` never reaches Redis.
Everything is proved by what Redis saw (INFO commandstats, the hash, the channels), never by timing."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from helpers import pool_config
from provider_errors import rate_limited

import coordinator as co
from coordinator.rules.view import SAFETY_STALENESS, NoticeHealth, PoolView
from coordinator.store.codec import decode_acquire


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def calls(raw: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in raw.info("commandstats").items()}


def prefix() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


def test_a_call_on_a_stamped_state_reads_only_the_header_and_the_indexed_members(redis_url, raw):
    p = prefix()
    coord = co.Coordinator(redis_url, [pool_config(50)], prefix=p, staleness=0)
    pool = coord.pool("p")
    pool.report_failure(pool.acquire(), "rate_limited", retry_after=600)
    state = raw.hgetall(f"{p}:{{p}}")
    assert state["nondefault"] == "k0" and state["checked"].startswith(f"{state['version']} {state['digest']} ")
    raw.config_resetstat()
    sel = pool.acquire()
    pool.report_success(sel)
    seen = calls(raw)
    assert sel.member.id == "k1"
    assert "hgetall" not in seen and "xrevrange" not in seen, seen
    coord.close()


def test_state_of_an_older_release_is_stamped_in_place_and_a_foreign_write_revalidated(redis_url, raw):
    p = prefix()
    coord = co.Coordinator(redis_url, [pool_config(3)], prefix=p, staleness=0)
    pool = coord.pool("p")
    pool.report_failure(pool.acquire(), "rate_limited", retry_after=600)
    key = f"{p}:{{p}}"
    raw.hdel(key, "checked", "nondefault")  # what a release without the stamp leaves
    before = raw.hgetall(key)
    raw.config_resetstat()
    assert pool.acquire().member.id == "k1"
    assert calls(raw).get("hgetall") == 1, "the full path, once"
    after = raw.hgetall(key)
    assert after.pop("nondefault") == "k0" and after.pop("checked").startswith(before["version"] + " ")
    assert after == before, "stamped in place: no version, no other field"
    raw.config_resetstat()
    pool.acquire()
    assert "hgetall" not in calls(raw)
    # A write by another release moves the version without a stamp: the next call validates in full.
    raw.hincrby(key, "version", 1)
    raw.config_resetstat()
    pool.acquire()
    assert calls(raw).get("hgetall") == 1
    coord.close()


class Channel:
    """Everything published on some channels up to a barrier: no waiting on time."""

    def __init__(self, raw: redis.Redis, *channels: str) -> None:
        self.raw, self.channels = raw, channels
        self.pubsub = raw.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(*channels)
        deadline = time.monotonic() + 5
        while self.pubsub.get_message(timeout=0.1) is None and len(self.pubsub.channels) < len(channels):
            assert time.monotonic() < deadline

    def received(self) -> list[tuple[str, str]]:
        for channel in self.channels:
            self.raw.publish(channel, "barrier")
        seen, barriers = [], 0
        deadline = time.monotonic() + 5
        while barriers < len(self.channels):
            assert time.monotonic() < deadline, "barrier lost"
            message = self.pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if message["data"] == "barrier":
                barriers += 1
            else:
                seen.append((message["channel"], message["data"].split(" ")[0]))
        return seen

    def close(self) -> None:
        self.pubsub.close()


@pytest.mark.parametrize("legacy", [True, False])
def test_notices_go_to_the_pools_own_channel_and_the_shared_one_only_while_legacy(redis_url, raw, legacy):
    p = prefix()
    listen = Channel(raw, f"{p}:changes:{{a}}", f"{p}:changes:{{b}}", f"{p}:changes")
    coord = co.Coordinator(redis_url, [pool_config(3, name="a"), pool_config(3, name="b")], prefix=p,
                           staleness=0, legacy_notices=legacy)
    coord.pool("a").acquire()
    seen = listen.received()
    shared = [(f"{p}:changes", "a")] if legacy else []
    assert sorted(seen) == sorted([(f"{p}:changes:{{a}}", "a"), *shared])
    listen.close()
    coord.close()


def test_a_write_that_changes_no_decision_sends_no_notice(redis_url, raw):
    p = prefix()
    cfg = pool_config(3, cooldown=co.CooldownPolicy(transient_threshold=5))
    coord = co.Coordinator(redis_url, [cfg], prefix=p, staleness=0, legacy_notices=False)
    pool = coord.pool("p")
    sel = pool.acquire()
    version = raw.hget(f"{p}:{{p}}", "version")
    listen = Channel(raw, f"{p}:changes:{{p}}")
    first = pool.report_failure(sel, "transient")
    second = pool.report_failure(sel, "transient")
    assert (first.failures, second.failures) == (1, 2) and raw.hget(f"{p}:{{p}}", "k0:failures") == "2"
    assert listen.received() == [], "only a count moved: every listener's decision is still right"
    assert raw.hget(f"{p}:{{p}}", "version") == version, "a count moves no version (docs/design.md, 'The local view')"
    pool.report_success(sel)
    assert raw.hget(f"{p}:{{p}}", "k0:failures") is None
    assert listen.received() == [], "a count reset changes no decision either"
    # A cooldown does: one notice, one version.
    for _ in range(5):
        pool.report_failure(pool.acquire(), "transient")
    assert len(listen.received()) == 1
    assert int(raw.hget(f"{p}:{{p}}", "version")) == int(version) + 1
    listen.close()
    coord.close()


def test_events_are_trimmed_by_count_and_by_age(redis_url, raw):
    p = prefix()
    coord = co.Coordinator(redis_url, [pool_config(3)], prefix=p, staleness=0, stream_maxlen=5, stream_max_age=3600)
    pool = coord.pool("p")
    pool.acquire()
    raw.config_resetstat()
    for _ in range(3):
        pool.park("k2", seconds=60)
    seen = calls(raw)
    assert seen.get("xadd") == 3 and seen.get("xtrim") == 3
    with pytest.raises(co.ConfigError, match="stream_maxlen"):
        co.Coordinator(redis_url, [pool_config(3)], prefix=p, stream_maxlen=0)
    with pytest.raises(co.ConfigError, match="stream_max_age"):
        co.Coordinator(redis_url, [pool_config(3)], prefix=p, stream_max_age=-1)
    coord.close()


def test_a_healthy_subscription_keeps_a_decision_until_a_notice():
    members = {m: co.Member(id=m) for m in ("a", "b")}
    health = NoticeHealth()
    view = PoolView("p", members, staleness=1.0, health=health)
    reply = {"epoch": "e", "generation": 1, "version": 1, "now": 0.0, "active": "a", "member": "a",
             "valid_until": 86_400_000.0, "rotation": "", "dirty": ""}
    health.ok = True
    view.learn_acquire(decode_acquire(reply), now=100.0)
    assert view.selection(150.0) is not None, "no notice: still right, no round trip"
    assert view.selection(100.0 + SAFETY_STALENESS) is None, "never past the safety bound"
    view.learn_acquire(decode_acquire(reply), now=200.0)
    health.ok = False
    assert view.selection(200.5) is not None and view.selection(201.0) is None, "unheard: staleness again"


def test_a_healthy_worker_sends_redis_nothing_on_the_happy_path(redis_url, raw):
    p = prefix()
    coord = co.Coordinator(redis_url, [pool_config(3)], prefix=p)
    pool = coord.pool("p")
    assert coord.call("p", lambda member: member.id) == "k0"
    deadline = time.monotonic() + 5
    while not coord.notice_health.ok:
        assert time.monotonic() < deadline, "the listener never subscribed"
        time.sleep(0.01)
    pool.acquire()
    raw.config_resetstat()
    assert [coord.call("p", lambda member: member.id) for _ in range(50)] == ["k0"] * 50
    assert "evalsha" not in calls(raw)
    coord.close()


def test_a_failure_on_the_happy_path_is_carried_on_by_the_plan(redis_url, raw):
    p = prefix()
    coord = co.Coordinator(redis_url, [pool_config(3)], prefix=p, staleness=30)
    coord.pool("p").acquire()  # a local decision: the next call takes the happy path
    tried: list[str] = []

    def fn(member: Any) -> str:
        tried.append(member.id)
        if member.id == "k0":
            raise rate_limited(60)
        return member.id

    assert coord.call("p", fn) == "k1"
    assert tried == ["k0", "k1"], "one attempt each: the happy path's attempt was not repeated"
    assert raw.hget(f"{p}:{{p}}", "active") == "k1" and raw.hget(f"{p}:{{p}}", "k0:cooling_until")
    coord.close()


def _count_config() -> co.PoolConfig:
    return pool_config(3, cooldown=co.CooldownPolicy(transient_threshold=9))


def _strip_times(state: dict[str, str]) -> dict[str, str]:
    return {f: ("<ms>" if f.endswith(":failed_at") else v) for f, v in state.items()}


def test_a_count_on_a_stamped_state_writes_what_the_full_path_writes(redis_url, raw):
    # The count-only write (lib/commit.lua, commit_count) against the generic commit on the same state:
    # p1 keeps its stamp (the fast path), p2 lost it (the full path, stamped in place).
    p1, p2 = prefix(), prefix()
    one = co.Coordinator(redis_url, [_count_config()], prefix=p1, staleness=0, legacy_notices=False)
    pool1 = one.pool("p")
    pool1.report_failure(pool1.acquire(), "transient")  # k0 joins the index
    raw.hset(f"{p2}:{{p}}", mapping=raw.hgetall(f"{p1}:{{p}}"))
    two = co.Coordinator(redis_url, [_count_config()], prefix=p2, staleness=0, legacy_notices=False)
    pool2 = two.pool("p")
    results = []
    for pool, p in ((pool1, p1), (pool2, p2)):
        sel = pool.acquire()
        if p == p2:
            raw.hdel(f"{p}:{{p}}", "checked")
        raw.config_resetstat()
        result = pool.report_failure(sel, "transient")
        results.append(dataclasses.replace(result, now=0.0))
        assert calls(raw).get("hgetall") == (1 if p == p2 else None)
    assert results[0] == results[1] and results[0].failures == 2 and not results[0].transitioned
    assert _strip_times(raw.hgetall(f"{p1}:{{p}}")) == _strip_times(raw.hgetall(f"{p2}:{{p}}"))
    one.close()
    two.close()


def test_a_count_that_changes_the_index_takes_the_full_write(redis_url, raw):
    p = prefix()
    coord = co.Coordinator(redis_url, [_count_config()], prefix=p, staleness=0, legacy_notices=False)
    pool = coord.pool("p")
    key = f"{p}:{{p}}"
    sel = pool.acquire()
    pool.report_failure(sel, "transient")
    version, checked = raw.hget(key, "version"), raw.hget(key, "checked")
    # A member that was in its default state joins the index.
    k1 = dataclasses.replace(sel, member=_count_config().members[1])
    assert pool.report_failure(k1, "transient").failures == 1
    assert raw.hget(key, "nondefault") == "k0,k1" and raw.hget(key, "k1:failures") == "1"
    # One whose cooldown ended more than a day ago (and has nothing else) leaves it at the next write.
    raw.hdel(key, "k1:failures", "k1:failed_at")
    raw.hset(key, "k1:cooling_until", int(sel.now * 1000) - 2 * 86400000)
    assert pool.report_failure(sel, "transient").failures == 2
    assert raw.hget(key, "nondefault") == "k0"
    assert (raw.hget(key, "version"), raw.hget(key, "checked")) == (version, checked), "a count keeps both"
    coord.close()


def test_a_count_on_a_stamped_state_still_finds_an_unreadable_member_field(redis_url, raw):
    p = prefix()
    coord = co.Coordinator(redis_url, [_count_config()], prefix=p, staleness=0, legacy_notices=False)
    pool = coord.pool("p")
    key = f"{p}:{{p}}"
    pool.report_failure(pool.acquire(), "transient")
    raw.hset(key, "k0:failed_at", "soon")  # tolerated: only ever restarts a count
    assert pool.report_failure(pool.acquire(), "transient").failures == 2
    raw.hset(key, "k0:failures", "2x")
    result = pool.report_failure(pool.acquire(), "transient")
    state = raw.hgetall(key)
    assert state["healed"].endswith("field k0:failures is not an integer"), state.get("healed")
    assert result.failures == 1 and state["k0:failures"] == "1"
    coord.close()

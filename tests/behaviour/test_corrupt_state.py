"""Garbage in a pool's Redis keys (wrong types, unreadable or out-of-range fields, a membership that
does not add up, a foreign or far-future stream, huge values) never fails a call: the first operation
that meets it heals it (docs/design.md, "Corrupt state"), once fleet-wide, under a new epoch keeping
every member state that can still be read, with one ``healed`` event, one notice and one log line;
``pool.reset()`` stays for operators. Decisions: the scripts only append to the stream, so foreign
entries are met (and healed) by ``events()``; hash fields of ids that are not members are ignored and
left alone; a park reason is free text of any size.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from helpers import pool_config
from hypothesis import HealthCheck, settings

import coordinator as co

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- garbage in a pool's Redis keys ----------------------------------------------------------------------


def dump(raw: Any, keys: list[str]) -> dict[str, Any]:
    """Type and full content of each key, to prove that nothing was written."""
    out: dict[str, Any] = {}
    for key in keys:
        kind = raw.type(key)
        if kind == "hash":
            value: Any = raw.hgetall(key)
        elif kind == "stream":
            value = raw.xrange(key)
        elif kind == "string":
            value = raw.get(key)
        elif kind == "list":
            value = raw.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(raw.smembers(key))
        elif kind == "zset":
            value = raw.zrange(key, 0, -1, withscores=True)
        else:
            value = None
        out[key] = (kind, value)
    return out


class Notices:
    """Change notices on a prefix's channel, read up to a barrier message this test publishes itself:
    Redis delivers one channel's messages in order, so no wait is needed to prove that none came."""

    def __init__(self, backend: Any) -> None:
        self.raw = backend.raw
        self.channel = co.KeySchema(backend.prefix).channel
        # Cluster nodes relay PUBLISH over the bus: no order between nodes, so no barrier there.
        self.enabled = not backend.name.startswith("cluster")
        if self.enabled:
            self.pubsub = self.raw.pubsub()
            self.pubsub.subscribe(self.channel)
            assert self._next()["type"] == "subscribe"

    def _next(self) -> dict[str, Any]:
        message = self.pubsub.get_message(timeout=5.0)
        assert message is not None, "no pub/sub message within 5 s"
        return dict(message)

    def received(self) -> list[str]:
        if not self.enabled:
            return []
        self.raw.publish(self.channel, "barrier")
        seen = []
        while (message := self._next())["data"] != "barrier":
            seen.append(message["data"])
        return seen

    def close(self) -> None:
        if self.enabled:
            self.pubsub.close()


def _prepare(backend: Any, strategy: str = "sticky") -> tuple[Any, co.Selection, list[str]]:
    """A pool with some history: a cooled member, a park, a few events."""
    pool = backend.coordinator(pool_config(3, strategy=strategy)).pool("p")
    sel = pool.acquire()
    pool.report_failure(sel, "rate_limited", retry_after=600)
    pool.park("k2", seconds=3600, reason="kept")
    return pool, pool.acquire(), backend.keys("p")


def _every_operation(pool: Any, sel: co.Selection) -> dict[str, Any]:
    return {
        "acquire": pool.acquire,
        "report_failure": lambda: pool.report_failure(sel, "rate_limited", retry_after=5),
        "report_success": lambda: pool.report_success(sel),
        "snapshot": pool.snapshot,
        "events": pool.events,
        "park": lambda: pool.park("k1", seconds=60),
        "unpark": lambda: pool.unpark("k1"),
        "rotate": lambda: pool.rotate(reason="x"),
    }


def _healed_entries(backend: Any) -> list[dict[str, str]]:
    _, events_key = backend.keys("p")
    if backend.raw.type(events_key) != "stream":
        return []
    return [fields for _, fields in backend.raw.xrange(events_key) if fields.get("type") == "healed"]


def assert_heals(backend: Any, caplog: pytest.LogCaptureFixture, words: list[str], *,
                 trigger: str = "acquire", kept: bool = True, dropped: tuple[str, ...] = ()) -> co.Snapshot:
    """A fresh worker (nothing cached locally) meets the corrupt state through ``trigger`` and is served;
    the state is rebuilt once, under a new epoch, holding every member state that could still be read
    (``kept``: k0's cooldown and ejection, k2's park, unless a field of ``dropped`` was the garbage), with
    one ``healed`` event, one change notice, one log line and the snapshot saying what was found. Every
    other operation then serves too, and a second worker finds nothing to heal."""
    caplog.clear()
    caplog.set_level(logging.INFO, logger="coordinator")
    state_key, _ = backend.keys("p")
    old_epoch = backend.raw.hget(state_key, "epoch") if backend.raw.type(state_key) == "hash" else None
    notices = Notices(backend)
    try:
        pool = backend.coordinator(pool_config(3)).pool("p")
        sel = co.Selection(pool="p", member=pool.config.members[1], epoch="e", generation=1)
        _every_operation(pool, sel)[trigger]()
        received = notices.received()
    finally:
        notices.close()
    healed = _healed_entries(backend)
    assert len(healed) == 1, healed
    for word in words:
        assert word in healed[0]["reason"], (word, healed[0])
    snap = pool.snapshot()
    assert snap.epoch == healed[0]["epoch"] != old_epoch
    assert snap.healed_at is not None and abs(snap.healed_at - snap.now) < 60
    assert all(word in snap.healed_reason for word in words), snap.healed_reason
    if notices.enabled:
        assert [n.split()[:2] for n in received][:1] == [["p", snap.epoch]]
    logged = [r.getMessage() for r in caplog.records if "was corrupt" in r.getMessage()]
    assert len(logged) == 1 and all(word in logged[0] for word in words), logged
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    k0, k2 = snap.member("k0"), snap.member("k2")
    if kept:
        assert (k0.cooling_until is None) == ("k0:cooling_until" in dropped), k0
        assert k0.ejections == (0 if "k0:ejections" in dropped else 1), k0
        assert k2.parked and k2.reason == "kept" and k2.parked_until is not None, k2
        assert snap.active == "k1"
    else:
        assert all(m.cooling_until is None and not m.parked and m.ejections == 0 for m in snap.members)
        assert snap.active == "k0"
    # Every script refuses what it cannot trust: the rebuilt state is one every script accepts.
    for operation in _every_operation(pool, pool.acquire()).values():
        operation()
    fresh = backend.coordinator(pool_config(3)).pool("p")
    fresh.acquire()
    fresh.snapshot()
    assert len(_healed_entries(backend)) == 1, "healed once, not once per worker"
    return snap


REDIS_AND_MEMORY = pytest.mark.parametrize("backend", ["redis-sync", "memory-sync"], indirect=True)
# Tests that also damage keys by type run on the cluster and through the asyncio API.
EVERY_BACKEND = pytest.mark.parametrize(
    "backend", ["redis-sync", "redis-async", "memory-sync", "memory-async", "cluster-sync"], indirect=True
)

GARBAGE_FIELDS = [
    ("generation", "abc"), ("generation", "nan"), ("generation", "inf"), ("generation", "0x10"),
    ("generation", "-1"), ("generation", " 12"), ("generation", "1e3"), ("generation", "9" * 400),
    ("generation", "9" * 14), ("version", "NaN"), ("version", "\u0661\u0662"), ("rr", "-3"), ("created", "tomorrow"),
    ("skip_until", "Infinity"), ("k0:cooling_until", "-99999999999999"), ("k1:failures", "1.5"),
    ("k1:ejections", "0b1"), ("k0:parked_until", "never"), ("k0:parked_until", "-1"),
    ("epoch", ""), ("epoch", "two words"), ("epoch", "x" * 65), ("epoch", "a\nb"), ("exhausted", "yes"),
    ("members", ""), ("members", "k0,k0,k1,k1"), ("members", "k0,k1"), ("members", "k0,{k1},k2"),
    ("members", "k0,k 1,k2"), ("members", "k0,k1:x,k2"), ("weights", "1,nan,1"), ("weights", "1,0,10"),
    ("weights", "1,-1,1"), ("weights", "1,1001,1"), ("weights", "1,1"), ("weights", "1,0x1,1"),
    ("strategy", "random"), ("strategy", ""), ("active", "nobody"), ("active", ""),
]


@REDIS_AND_MEMORY
@pytest.mark.parametrize(("field", "value"), GARBAGE_FIELDS, ids=ascii)
def test_garbage_field_is_healed_keeping_what_can_be_read(backend: Any, caplog: pytest.LogCaptureFixture,
                                                         field: str, value: str) -> None:
    _prepare(backend)
    backend.raw.hset(backend.keys("p")[0], field, value)
    word = "weights" if field == "members" and value == "k0,k1" else field
    snap = assert_heals(backend, caplog, [word], dropped=(field,))
    assert snap.strategy == "sticky" and [m.id for m in snap.members] == ["k0", "k1", "k2"]
    stored = backend.raw.hgetall(backend.keys("p")[0])
    assert stored.get(field) != value or field == "active", "the garbage is gone"


@EVERY_BACKEND
def test_a_garbage_field_heals_through_every_api(backend: Any, caplog: pytest.LogCaptureFixture) -> None:
    _prepare(backend)
    backend.raw.hset(backend.keys("p")[0], mapping={"k1:failures": "1.5", "generation": "abc"})
    assert_heals(backend, caplog, ["generation"])
    assert "k1:failures" not in backend.raw.hgetall(backend.keys("p")[0])


@REDIS_AND_MEMORY
@pytest.mark.parametrize(("field", "value"), [("members", "k0,k0,k1"), ("weights", "1,0,1")])
def test_a_hand_edit_that_keeps_the_membership_length_is_healed_by_snapshot(
        backend: Any, caplog: pytest.LogCaptureFixture, field: str, value: str) -> None:
    # What the scripts trust (docs/design.md, "Scripts"): a stamp of the validated membership's
    # version and lengths (HSTRLEN is O(1); reading the list is not). An edit by hand that moves no
    # version and keeps the lengths is seen by snapshot, which always validates everything, and by
    # every script once any write moves the version; the calls that trust the stamp do not read it.
    # A snapshot is a read: it reports what it found and writes nothing, since the stored membership is
    # the unreadable part and the reader's own config is no ground to rewrite the fleet's (docs/design.md,
    # "Corrupt state"). It drops only the stamp (derived data), so the next call of a worker validates
    # the whole state and heals it.
    _, _, keys = _prepare(backend)
    backend.raw.hset(keys[0], field, value)
    before = dump(backend.raw, keys)
    with pytest.raises(co.CorruptStateError, match=field):
        backend.coordinator(pool_config(3)).pool("p").snapshot()
    after = dump(backend.raw, keys)
    before[keys[0]][1].pop("checked")
    assert after == before, "a read wrote nothing but dropped the stamp"
    assert_heals(backend, caplog, [field])


@REDIS_AND_MEMORY
@pytest.mark.parametrize("field", ["epoch", "generation", "version", "members", "weights", "strategy", "active"])
def test_missing_field_is_healed(backend: Any, caplog: pytest.LogCaptureFixture, field: str) -> None:
    _prepare(backend)
    backend.raw.hdel(backend.keys("p")[0], field)
    assert_heals(backend, caplog, [])


def _write_type(raw: Any, key: str, kind: str) -> None:
    raw.delete(key)
    if kind == "string":
        raw.set(key, "not yours")
    elif kind == "list":
        raw.rpush(key, "a", "b")
    elif kind == "set":
        raw.sadd(key, "a")
    elif kind == "zset":
        raw.zadd(key, {"a": 1.0})
    elif kind == "hash":
        raw.hset(key, "type", "failover")
    elif kind == "stream":
        raw.xadd(key, {"epoch": "x"})


@EVERY_BACKEND
@pytest.mark.parametrize("kind", ["string", "list", "set", "zset", "stream"])
def test_state_key_of_a_wrong_type_is_replaced(backend: Any, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    pool, _, (state, _) = _prepare(backend)
    _write_type(backend.raw, state, kind)
    assert_heals(backend, caplog, [f"has type {kind}, expected hash"], kept=False)
    types = [e.type for e in pool.events()]
    assert types[:4] == ["created", "failover", "parked", "healed"], "the readable stream is kept"


@EVERY_BACKEND
@pytest.mark.parametrize("kind", ["string", "list", "set", "zset", "hash"])
def test_event_key_of_a_wrong_type_is_replaced(backend: Any, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    pool, _, (_, events_key) = _prepare(backend)
    _write_type(backend.raw, events_key, kind)
    # Only a call that appends an event reads the stream (docs/design.md, "Scripts").
    assert_heals(backend, caplog, [f"has type {kind}, expected stream"], trigger="park")
    assert [e.type for e in pool.events()][:2] == ["healed", "parked"]


@EVERY_BACKEND
def test_an_events_read_of_a_stream_of_another_type_heals_it(backend: Any, caplog: pytest.LogCaptureFixture) -> None:
    _, _, (_, events_key) = _prepare(backend)
    _write_type(backend.raw, events_key, "list")
    assert_heals(backend, caplog, ["expected stream"], trigger="events")


@REDIS_AND_MEMORY
def test_both_keys_of_wrong_types(backend: Any, caplog: pytest.LogCaptureFixture) -> None:
    _prepare(backend)
    state, events_key = backend.keys("p")
    _write_type(backend.raw, state, "string")
    _write_type(backend.raw, events_key, "list")
    assert_heals(backend, caplog, ["expected hash"], kept=False)
    assert backend.raw.type(events_key) == "stream"


@EVERY_BACKEND
def test_foreign_stream_entries_are_healed_by_the_read_that_meets_them(backend: Any,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    pool, sel, (_, events_key) = _prepare(backend)
    backend.raw.xadd(events_key, {"hello": "world"})
    foreign = backend.raw.xadd(events_key, {"type": "failover", "epoch": "e", "generation": "NaN"})
    # The scripts never read entries: transitions go on and are appended after the foreign ones.
    result = pool.report_failure(sel, "rate_limited", retry_after=60)
    assert result.transitioned and not _healed_entries(backend)
    entries = backend.raw.xrange(events_key)
    assert entries[-1][1]["type"] == result.events[-1] and entries[-1][1]["generation"] == str(result.generation)
    backend.raw.hset(backend.keys("p")[0], "k1:cooling_until", "0")  # k1 serves again, as _prepare left it
    backend.raw.hset(backend.keys("p")[0], "active", "k1")
    assert_heals(backend, caplog, [f"holds an entry {foreign}"], trigger="events")


@REDIS_AND_MEMORY
@pytest.mark.parametrize("entry_id", ["18446744073709551615-18446744073709551614", "99999999999999-0"])
def test_stream_ids_far_in_the_future_are_healed_before_any_write(backend: Any, caplog: pytest.LogCaptureFixture,
                                                                  entry_id: str) -> None:
    pool, _, (_, events_key) = _prepare(backend)
    backend.raw.xadd(events_key, {"type": "parked", "epoch": pool.snapshot().epoch, "generation": "99"},
                     id=entry_id)
    assert_heals(backend, caplog, ["far in the future"], trigger="park")
    assert [e.type for e in pool.events()][:2] == ["healed", "parked"]


@REDIS_AND_MEMORY
@pytest.mark.parametrize(("stored", "trigger"), [({"members": "zz,k1,k2", "active": "zz"}, "acquire"),
                                                 ({"members": "k0,k9,k2", "active": "k0"}, "park")])
def test_membership_edited_by_hand_is_healed(backend: Any, caplog: pytest.LogCaptureFixture,
                                             stored: dict[str, str], trigger: str) -> None:
    # Valid ids that are not this worker's, under this worker's digest: caught as soon as a reply names
    # one (acquire) or a configured member is missing (park k1).
    _, _, (state, _) = _prepare(backend)
    backend.raw.hset(state, mapping=stored)
    assert_heals(backend, caplog, ["does not match its digest"], trigger=trigger)


@REDIS_AND_MEMORY
def test_fields_of_ids_that_are_not_members_are_ignored_and_left_alone(backend: Any) -> None:
    pool, sel, (state, _) = _prepare(backend)
    orphans = {f"ghost{i}:cooling_until": "garbage" for i in range(2000)} | {"zz:parked_until": "nan"}
    backend.raw.hset(state, mapping=orphans)
    assert pool.report_failure(sel, "rate_limited", retry_after=60).transitioned
    pool.park("k0", reason="still works")
    stored = backend.raw.hgetall(state)
    assert {k: stored[k] for k in orphans} == orphans


@REDIS_AND_MEMORY
def test_huge_values(backend: Any, caplog: pytest.LogCaptureFixture) -> None:
    pool, sel, (state, events_key) = _prepare(backend)
    # Free text of any size is tolerated: a park reason of 1 MB is shown as it is.
    backend.raw.hset(state, mapping={"k1:parked_until": "forever", "k1:park_reason": "r" * 1_000_000})
    assert pool.snapshot().member("k1").reason == "r" * 1_000_000
    backend.raw.xadd(events_key, {"type": "parked", "epoch": sel.epoch, "generation": "9", "reason": "e" * 1_000_000})
    assert pool.events(limit=1)[0].reason == "e" * 1_000_000
    # Anything structural that is huge is healed at once (a park reason is kept, as long as an
    # operator's may be: 200 characters).
    for field, value in [("epoch", "x" * 1_000_000), ("generation", "7" * 1_000_000),
                         ("members", "k0,k1,k2" + ",k3" * 200_000)]:
        backend.raw.hset(state, field, value)
        before = backend.raw.hget(state, "epoch")
        caplog.set_level(logging.INFO, logger="coordinator")
        caplog.clear()
        after = backend.coordinator(pool_config(3)).pool("p").acquire()
        assert after.epoch != before
        assert sum("was corrupt" in r.getMessage() for r in caplog.records) == 1
        assert field.replace("members", "weights") in pool.snapshot().healed_reason
    assert pool.snapshot().member("k1").reason == "r" * 200


@REDIS_AND_MEMORY
def test_huge_durations_never_write_an_unreadable_state(backend: Any) -> None:
    policy = co.CooldownPolicy(rate_limited=1e15, max=1e15)
    pool = backend.coordinator(pool_config(3, cooldown=policy)).pool("p")
    hundred_years = 100 * 365 * 86400
    sel = pool.acquire()
    pool.report_failure(sel, "rate_limited")  # base cooldown of 31 million years
    pool.park("k1", seconds=1e300, reason="longer than time")
    pool.rotate(seconds=1e18)
    snap = pool.snapshot()  # the state is still readable
    for member_id in ("k0", "k1", "k2"):
        state = snap.member(member_id)
        deadline = state.cooling_until or state.parked_until
        assert deadline is not None and math.isfinite(deadline) and deadline <= snap.now + hundred_years + 1
    for value in backend.raw.hgetall(backend.keys("p")[0]).values():
        assert "e+" not in value and "inf" not in value and "nan" not in value
    sel = pool.acquire()
    assert sel.degraded and sel.retry_at is not None and math.isfinite(sel.retry_at)
    for retry_after in (math.nan, math.inf, -math.inf, -1.0, 1e300, 5e-324):
        pool.report_failure(sel, "rate_limited", retry_after=retry_after)
    pool.snapshot()


@EVERY_BACKEND
def test_reset_keeps_parks_and_starts_a_new_epoch(backend: Any) -> None:
    pool, sel, (state, _) = _prepare(backend)
    pool.park("k0", reason="operator said so")
    pool.park("k1", seconds=1, reason="about to lapse")
    backend.raw.hset(state, "k1:parked_until", "1")  # already over: not carried over
    notices = Notices(backend)
    try:
        result = pool.reset(reason="fresh start")
        received = notices.received()
    finally:
        notices.close()
    assert result.epoch != sel.epoch and result.generation == 1 and result.active is not None
    if notices.enabled:
        assert [n.split()[:3] for n in received] == [["p", result.epoch, "1"]]
    snap = pool.snapshot()
    parks = {m.id: (m.parked, m.parked_until, m.reason) for m in snap.members}
    assert parks["k0"] == (True, math.inf, "operator said so")
    assert parks["k2"][0] and parks["k2"][1] == pytest.approx(sel.now + 3600, abs=5) and parks["k2"][2] == "kept"
    assert parks["k1"] == (False, None, "")
    assert all(m.cooling_until is None and m.failures == 0 and m.ejections == 0 for m in snap.members)
    assert snap.active == "k1" == result.active
    # Tokens of the old epoch move nothing.
    stale = pool.report_failure(sel, "rate_limited", retry_after=60)
    assert stale.stale and not stale.transitioned and pool.snapshot().active == "k1"
    assert [e.type for e in pool.events()] == ["reset"]
    assert pool.events()[0].to_member == "k1"


@REDIS_AND_MEMORY
def test_reset_of_a_pool_without_state_creates_it(backend: Any) -> None:
    pool = backend.coordinator(pool_config(2, strategy="round_robin")).pool("p")
    result = pool.reset()
    assert result.transitioned and result.active is None and result.generation == 1
    assert [(e.type, e.reason) for e in pool.events()] == [("reset", "reset")]
    assert {pool.acquire().member.id for _ in range(4)} == {"k0", "k1"}




@REDIS_AND_MEMORY
@pytest.mark.parametrize("strategy", ["priority", "round_robin"])
def test_every_strategy_heals(backend: Any, caplog: pytest.LogCaptureFixture, strategy: str) -> None:
    _prepare(backend, strategy)
    backend.raw.hset(backend.keys("p")[0], "k1:ejections", "many")
    caplog.set_level(logging.INFO, logger="coordinator")
    pool = backend.coordinator(pool_config(3, strategy=strategy)).pool("p")
    served = {pool.acquire().member.id for _ in range(6)}
    assert served == {"k1"}, "neither the cooling k0 nor the parked k2"
    snap = pool.snapshot()
    assert snap.healed_at is not None and "k1:ejections" in snap.healed_reason
    assert snap.strategy == strategy and (snap.active is None) == (strategy == "round_robin")
    assert snap.member("k0").cooling_until is not None and snap.member("k2").parked
    assert sum("was corrupt" in r.getMessage() for r in caplog.records) == 1

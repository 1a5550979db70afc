"""Garbage in a pool's Redis keys (wrong types, unreadable or out-of-range fields, a membership that
does not add up, a foreign or far-future stream, huge values) is reported as ``CorruptStateError``
naming the key, with nothing written and no change notice (raw dumps are compared); ``pool.reset()``
heals it. Decisions: foreign stream entries make ``events()`` raise (the scripts themselves only
append, so they keep working); hash fields of ids that are not members are ignored and left alone; a
park reason is free text of any size.
"""

from __future__ import annotations

import math
import re
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
        "park": lambda: pool.park("k1", seconds=60),
        "unpark": lambda: pool.unpark("k2"),
        "rotate": lambda: pool.rotate(reason="x"),
        "snapshot": pool.snapshot,
    }


#: The operations of ``_every_operation`` that append an event (here: the others' selection is stale
#: or they change nothing); only they read the event stream.
APPENDING = ("park", "unpark", "rotate")


def assert_reported_and_untouched(backend: Any, key: str, words: list[str],
                                  only: tuple[str, ...] | None = None) -> None:
    """Every operation of a fresh worker (nothing cached locally) raises CorruptStateError naming
    ``key`` and ``words`` (with ``only``: those operations, and the others answer), and neither key
    of the pool, nor the channel, sees a write."""
    keys = backend.keys("p")
    before = dump(backend.raw, keys)
    notices = Notices(backend)
    try:
        pool = backend.coordinator(pool_config(3)).pool("p")  # nothing cached locally
        sel = co.Selection(pool="p", member=pool.config.members[1], epoch="e", generation=1)
        for name, operation in _every_operation(pool, sel).items():
            if only is not None and name not in only:
                operation()
                assert dump(backend.raw, keys) == before, f"{name} wrote to a corrupt state"
                continue
            try:
                operation()
            except co.CorruptStateError as exc:
                message = str(exc)
                assert key in message, (name, message)
                for word in words:
                    assert word in message, (name, word, message)
            else:
                raise AssertionError(f"{name} did not report the corrupt state")
            assert dump(backend.raw, keys) == before, f"{name} wrote to a corrupt state"
        assert notices.received() == []
    finally:
        notices.close()


def assert_healed(backend: Any, old_epoch: str | None) -> None:
    pool = backend.coordinator(pool_config(3)).pool("p")
    result = pool.reset(reason="repair after garbage")
    assert result.transitioned and result.events == ("reset",) and result.generation == 1
    assert result.epoch != old_epoch
    events = pool.events()
    assert [(e.type, e.generation, e.epoch, e.reason) for e in events] == [
        ("reset", 1, result.epoch, "repair after garbage")
    ]
    snap = pool.snapshot()
    assert snap.epoch == result.epoch and [m.id for m in snap.members] == ["k0", "k1", "k2"]
    sel = pool.acquire()
    assert sel.epoch == result.epoch
    assert pool.report_failure(sel, "rate_limited", retry_after=60).transitioned


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
def test_garbage_field_is_reported_untouched_and_healed_by_reset(backend: Any, field: str, value: str) -> None:
    pool, _, (state, _) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    backend.raw.hset(state, field, value)
    word = "weights" if field == "members" and value == "k0,k1" else field
    assert_reported_and_untouched(backend, state, [word])
    assert_healed(backend, old_epoch)


@REDIS_AND_MEMORY
@pytest.mark.parametrize(("field", "value"), [("members", "k0,k0,k1"), ("weights", "1,0,1")])
def test_a_hand_edit_that_keeps_the_membership_length_is_reported_by_snapshot(backend: Any, field: str,
                                                                               value: str) -> None:
    # What the scripts trust (docs/design.md, "Scripts"): a stamp of the validated membership's
    # version and lengths (HSTRLEN is O(1); reading the list is not). An edit by hand that moves no
    # version and keeps the lengths is seen by snapshot, which always validates everything, and by
    # every script once any write moves the version; the calls that trust the stamp do not read it.
    pool, _, (state, _) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    backend.raw.hset(state, field, value)
    fresh = backend.coordinator(pool_config(3)).pool("p")
    with pytest.raises(co.CorruptStateError, match=field):
        fresh.snapshot()
    assert_healed(backend, old_epoch)


@REDIS_AND_MEMORY
@pytest.mark.parametrize("field", ["epoch", "generation", "version", "members", "weights", "strategy", "active"])
def test_missing_field_is_reported_untouched_and_healed(backend: Any, field: str) -> None:
    pool, _, (state, _) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    backend.raw.hdel(state, field)
    assert_reported_and_untouched(backend, state, [])
    assert_healed(backend, old_epoch)


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
def test_state_key_of_a_wrong_type_is_reported_untouched_and_healed(backend: Any, kind: str) -> None:
    pool, _, (state, _) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    _write_type(backend.raw, state, kind)
    assert_reported_and_untouched(backend, state, [f"has type {kind}, expected hash"])
    assert [e.type for e in pool.events()][-1] == "parked", "the stream is intact and readable"
    assert_healed(backend, old_epoch)


@EVERY_BACKEND
@pytest.mark.parametrize("kind", ["string", "list", "set", "zset", "hash"])
def test_event_key_of_a_wrong_type_is_reported_untouched_and_healed(backend: Any, kind: str) -> None:
    pool, _, (_, events_key) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    _write_type(backend.raw, events_key, kind)
    # Only a call that appends an event reads the stream (docs/design.md, "Scripts").
    assert_reported_and_untouched(backend, events_key, [f"has type {kind}, expected stream"], APPENDING)
    reads = [pool.events]
    if not backend.name.startswith("memory"):
        # fakeredis answers XREAD on a key of another type with a Python AttributeError, not WRONGTYPE.
        reads.append(lambda: pool.events_after("0-0"))
    for read in reads:
        with pytest.raises(co.CorruptStateError, match=re.escape(events_key)):
            read()
    assert_healed(backend, old_epoch)


@REDIS_AND_MEMORY
def test_both_keys_of_wrong_types_name_the_state_key_first(backend: Any) -> None:
    state, events_key = backend.keys("p")
    backend.raw.set(state, "x")
    backend.raw.rpush(events_key, "y")
    assert_reported_and_untouched(backend, state, ["expected hash"])
    assert_healed(backend, None)


@EVERY_BACKEND
def test_foreign_stream_entries_make_events_raise_but_scripts_only_append(backend: Any) -> None:
    pool, sel, (_, events_key) = _prepare(backend)
    foreign = backend.raw.xadd(events_key, {"hello": "world"})
    backend.raw.xadd(events_key, {"type": "failover", "epoch": "e", "generation": "NaN"})
    for read in (pool.events, lambda: pool.events_after("0-0")):
        with pytest.raises(co.CorruptStateError, match=rf"{re.escape(events_key)} holds an entry {foreign}"):
            read()
    # The scripts never read entries: transitions go on and are appended after the foreign ones.
    result = pool.report_failure(sel, "rate_limited", retry_after=60)
    assert result.transitioned
    entries = backend.raw.xrange(events_key)
    assert entries[-1][1]["type"] == result.events[-1] and entries[-1][1]["generation"] == str(result.generation)
    assert pool.events_after(entries[-2][0])[0].generation == result.generation
    assert_healed(backend, result.epoch)


@REDIS_AND_MEMORY
@pytest.mark.parametrize("entry_id", ["18446744073709551615-18446744073709551614", "99999999999999-0"])
def test_stream_ids_far_in_the_future_are_reported_before_any_write(backend: Any, entry_id: str) -> None:
    pool, _, (_, events_key) = _prepare(backend)
    old_epoch = pool.snapshot().epoch
    backend.raw.xadd(events_key, {"type": "parked", "epoch": old_epoch, "generation": "99"}, id=entry_id)
    assert_reported_and_untouched(backend, events_key, ["far in the future"], APPENDING)
    with pytest.raises(co.CorruptStateError, match="did not write"):
        pool.events()
    assert_healed(backend, old_epoch)


@REDIS_AND_MEMORY
def test_membership_edited_by_hand_is_reported(backend: Any) -> None:
    _, _, (state, _) = _prepare(backend)
    # Valid ids that are not this worker's: caught as soon as a reply names one, before any write
    # for acquire (nothing changes when the active member can serve).
    backend.raw.hset(state, mapping={"members": "zz,k1,k2", "active": "zz"})
    before = dump(backend.raw, backend.keys("p"))
    fresh = backend.coordinator(pool_config(3)).pool("p")
    with pytest.raises(co.CorruptStateError, match=r"field members names 'zz'.*reset\(\)"):
        fresh.acquire()
    assert dump(backend.raw, backend.keys("p")) == before
    # A configured member missing from the stored list: reported, not "unknown member", nothing written.
    backend.raw.hset(state, mapping={"members": "k0,k9,k2", "active": "k0"})
    before = dump(backend.raw, backend.keys("p"))
    for operation in (lambda: fresh.park("k1"), lambda: fresh.unpark("k1")):
        with pytest.raises(co.CorruptStateError, match="field members lacks configured member 'k1'"):
            operation()
    assert dump(backend.raw, backend.keys("p")) == before
    assert_healed(backend, None)


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
def test_huge_values(backend: Any) -> None:
    pool, sel, (state, events_key) = _prepare(backend)
    # Free text of any size is tolerated: a park reason of 1 MB is shown as it is.
    backend.raw.hset(state, mapping={"k1:parked_until": "forever", "k1:park_reason": "r" * 1_000_000})
    assert pool.snapshot().member("k1").reason == "r" * 1_000_000
    backend.raw.xadd(events_key, {"type": "parked", "epoch": sel.epoch, "generation": "9", "reason": "e" * 1_000_000})
    assert pool.events(limit=1)[0].reason == "e" * 1_000_000
    # Anything structural that is huge is reported at once, with nothing written.
    for field, value in [("epoch", "x" * 1_000_000), ("generation", "7" * 1_000_000),
                         ("members", "k0,k1,k2" + ",k3" * 200_000)]:
        saved = backend.raw.hget(state, field)
        backend.raw.hset(state, field, value)
        assert_reported_and_untouched(backend, state, [field.replace("members", "weights")])
        backend.raw.hset(state, field, saved)
    assert pool.acquire().epoch == sel.epoch


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



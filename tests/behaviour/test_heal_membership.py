"""A corrupt state met by a worker whose configuration is not the fleet's (docs/design.md, "Corrupt state"
and "Rolling deploys"): the heal keeps the stored membership when it can be read and is not lower than the
caller's, an operator action is never served by the stand-in, what workers remember is not merged over a
heal, and a heal that leaves no member available writes its `exhausted` event."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import coordinator as co
from tests.helpers import event_types


def cfg(ids: str, revision: int = 0) -> co.PoolConfig:
    return co.PoolConfig(name="p", members=[co.Member(id=i) for i in ids.split(",")], revision=revision)


def _hash(backend: Any) -> dict[str, str]:
    return dict(backend.raw.hgetall(backend.keys("p")[0]))


def test_an_operator_action_on_a_member_the_fleet_lacks_is_refused(backend: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coordinator")
    new = backend.coordinator(cfg("k0,k1,k2", 2)).pool("p")
    new.acquire()
    old = backend.coordinator(cfg("k0,k1,k2,k3", 1)).pool("p")
    assert old.acquire().member.id == "k0"
    before = _hash(backend)
    for action in (lambda: old.park("k3", seconds=60, reason="x"), lambda: old.unpark("k3")):
        with pytest.raises(co.UnknownMemberError, match="fleet's membership") as raised:
            action()
        assert raised.value.member == "k3"
    assert _hash(backend) == before, "nothing written"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records
    assert old.park("k1", seconds=60, reason="shared").parked_until is not None
    assert _hash(backend)["k1:park_reason"] == "shared"


def test_a_heal_keeps_the_stored_higher_revision(backend: Any) -> None:
    new = backend.coordinator(cfg("k1,k2,k3", 2)).pool("p")
    new.acquire()
    new.park("k3", reason="revoked")  # until unparked
    state_key = backend.keys("p")[0]
    backend.raw.hset(state_key, "generation", "abc")
    old = backend.coordinator(cfg("k0,k1,k2", 1)).pool("p")
    assert old.acquire().member.id == "k1", "served within the fleet's membership"
    stored = _hash(backend)
    assert stored["members"] == "k1,k2,k3" and stored["revision"] == "2"
    assert stored["k3:parked_until"] == "forever" and stored["k3:park_reason"] == "revoked"
    assert "healed" in stored and stored["generation"].isdigit()
    assert new.snapshot().member("k3").parked
    assert event_types(new).count("reconfigured") == 0


def test_a_heal_with_a_higher_caller_revision_applies_it(backend: Any) -> None:
    old = backend.coordinator(cfg("k0,k1,k2", 1)).pool("p")
    old.acquire()
    backend.raw.hset(backend.keys("p")[0], "generation", "abc")
    new = backend.coordinator(cfg("k1,k2,k3", 2)).pool("p")
    assert new.acquire().member.id == "k1"
    stored = _hash(backend)
    assert stored["members"] == "k1,k2,k3" and stored["revision"] == "2"


def test_parks_an_operator_removed_do_not_come_back_after_a_heal(backend: Any) -> None:
    worker = backend.coordinator(cfg("k0,k1,k2")).pool("p")
    worker.acquire()
    worker.park("k2", seconds=3600, reason="old")
    worker.acquire()  # the worker remembers the park
    backend.coordinator(cfg("k0,k1,k2")).pool("p").unpark("k2")
    backend.raw.hset(backend.keys("p")[0], "k0:failures", "1.5")
    other = backend.coordinator(cfg("k0,k1,k2")).pool("p")
    other.acquire()  # heals
    worker.acquire()  # meets the new epoch: nothing merged
    stored = _hash(backend)
    assert "k2:parked_until" not in stored and "healed" in stored
    assert not worker.snapshot().member("k2").parked
    assert "failover" not in event_types(worker)[-2:]


def test_a_heal_keeps_the_last_counted_failure_and_says_exhausted(backend: Any) -> None:
    pool = backend.coordinator(cfg("k0,k1")).pool("p")
    pool.report_failure(pool.acquire(), "transient")
    pool.park("k1", reason="off")
    state_key = backend.keys("p")[0]
    failed_at = _hash(backend)["k0:failed_at"]
    pool.report_failure(pool.acquire(), "rate_limited", retry_after=600)
    backend.raw.hset(state_key, mapping={"k0:failures": "2", "k0:failed_at": failed_at, "rr": "x"})
    backend.coordinator(cfg("k0,k1")).pool("p").acquire()
    stored = _hash(backend)
    assert "healed" in stored and stored["k0:failed_at"] == failed_at and stored["exhausted"] == "1"
    assert event_types(pool)[-2:] == ["healed", "exhausted"]


def test_a_probe_is_granted_only_on_a_member_the_caller_holds(backend: Any) -> None:
    def priority(ids: str, revision: int) -> co.PoolConfig:
        return co.PoolConfig(name="p", members=[co.Member(id=i) for i in ids.split(",")], revision=revision,
                             strategy="priority")

    new = backend.coordinator(priority("k0,k1,k2", 2)).pool("p")
    new.report_failure(new.acquire(), "rate_limited", retry_after=600)
    assert new.acquire().member.id == "k1"
    backend.raw.hset(backend.keys("p")[0], "k0:cooling_until", "1")  # k0's cooldown is over
    old = backend.coordinator(priority("k1,k2", 1)).pool("p")
    sel = old.acquire()
    assert sel.member.id == "k1" and not sel.lease
    assert "probe" not in _hash(backend), "no lease on a member the caller has no secret for"
    probe = new.acquire()
    assert probe.member.id == "k0" and probe.lease
    assert _hash(backend)["probe"].startswith("k0|" + probe.lease)


def test_a_reader_heals_only_under_the_stored_membership(backend: Any) -> None:
    backend.coordinator(cfg("k1,k2,k3", 2)).pool("p").acquire()
    backend.raw.hset(backend.keys("p")[0], "generation", "abc")
    reader = backend.coordinator(cfg("k0,k1", 3)).pool("p")  # even a higher revision: a read is no deploy
    snap = reader.snapshot()
    assert [m.id for m in snap.members] == ["k1", "k2", "k3"] and snap.healed_at is not None
    stored = _hash(backend)
    assert stored["members"] == "k1,k2,k3" and stored["revision"] == "2"


def test_workers_remembering_one_cooldown_merge_it_once_over_an_unreadable_state(backend: Any) -> None:
    workers = [backend.coordinator(cfg("k0,k1,k2")).pool("p") for _ in range(3)]
    workers[0].report_failure(workers[0].acquire(), "quota_exhausted", retry_after=3600)
    for worker in workers:
        assert worker.acquire().member.id == "k1"  # each remembers k0's cooldown
    state_key = backend.keys("p")[0]
    backend.raw.delete(state_key)
    backend.raw.rpush(state_key, "not a hash")
    assert workers[0].acquire().member.id == "k1"  # heals (nothing readable) and merges what it knew
    after_first = _hash(backend)
    assert int(after_first["k0:cooling_until"]) > 0
    for worker in workers[1:]:
        assert worker.acquire().member.id == "k1"
    assert _hash(backend) == after_first, "the later merges added nothing, wrote nothing"

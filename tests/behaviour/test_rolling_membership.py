"""Two configurations of one pool (docs/design.md, "Rolling deploys"), on every backend of the matrix: the
higher revision's membership is the fleet's, an equal one replaces it at most once per hold, and a worker
whose configuration did not win uses only the members both have, sharing one state with the others."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import coordinator as co
from tests.helpers import event_types


def cfg(ids: str, revision: int = 0, strategy: str = "sticky") -> co.PoolConfig:
    return co.PoolConfig(name="p", members=[co.Member(id=i) for i in ids.split(",")], revision=revision,
                         strategy=strategy)


def _stored(backend: Any) -> str:
    return str(backend.raw.hget(backend.keys("p")[0], "members"))


def test_the_higher_revision_wins_and_the_lower_serves_within_it(backend: Any) -> None:
    old = backend.coordinator(cfg("k0,k1,k2", 1)).pool("p")
    new = backend.coordinator(cfg("k1,k2,k3", 2)).pool("p")
    assert old.acquire().member.id == "k0"
    assert new.acquire().member.id == "k1", "k0 is gone: the pointer moved"
    for _ in range(5):
        assert old.acquire().member.id == "k1" and new.acquire().member.id == "k1"
    assert _stored(backend) == "k1,k2,k3"
    assert event_types(new) == ["created", "reconfigured"]
    # The lower revision reports into the one shared state.
    sel = old.acquire()
    result = old.report_failure(sel, "rate_limited", retry_after=60)
    assert result.cooled and result.transitioned and new.acquire().member.id == "k2"
    assert old.acquire().member.id == "k2"
    old.report_failure(old.acquire(), "rate_limited", retry_after=60)
    assert new.acquire().member.id == "k3"
    degraded = old.acquire()
    assert degraded.degraded and degraded.member.id in ("k1", "k2") and degraded.retry_at is not None
    assert _stored(backend) == "k1,k2,k3" and event_types(new).count("reconfigured") == 1


def test_equal_revisions_do_not_rewrite_each_other(backend: Any) -> None:
    a = backend.coordinator(cfg("k0,k1,k2")).pool("p")
    b = backend.coordinator(cfg("k0,k1,k2,k3")).pool("p")
    a.acquire()
    b.acquire()  # the first change of the membership is applied at once
    assert _stored(backend) == "k0,k1,k2,k3"
    for _ in range(10):
        a.acquire()
        b.acquire()
    assert _stored(backend) == "k0,k1,k2,k3"
    assert event_types(a) == ["created", "reconfigured"]
    # A raised revision wins at once, whatever the hold.
    c = backend.coordinator(cfg("k1,k2", 1)).pool("p")
    assert c.acquire().member.id == "k1"
    assert _stored(backend) == "k1,k2" and event_types(a).count("reconfigured") == 2
    assert a.acquire().member.id == "k1" and b.acquire().member.id == "k1"


def test_a_report_on_a_member_the_fleet_dropped_changes_nothing(backend: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coordinator")
    old = backend.coordinator(cfg("k0,k1,k2", 1)).pool("p")
    sel = old.acquire()
    assert sel.member.id == "k0"
    backend.coordinator(cfg("k1,k2,k3", 2)).pool("p").acquire()  # the new deploy drops k0
    before = backend.raw.hgetall(backend.keys("p")[0])
    failure = old.report_failure(sel, "rate_limited", retry_after=60)
    assert failure.stale and not failure.cooled and not failure.transitioned
    assert not old.report_success(sel).transitioned
    assert backend.raw.hgetall(backend.keys("p")[0]) == before
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    assert old.acquire().member.id == "k1"


def test_round_robin_within_another_membership(backend: Any) -> None:
    new = backend.coordinator(cfg("k1,k2,k3", 2, "round_robin")).pool("p")
    old = backend.coordinator(cfg("k0,k1,k2", 1, "round_robin")).pool("p")
    assert {new.acquire().member.id for _ in range(9)} == {"k1", "k2", "k3"}
    assert {old.acquire().member.id for _ in range(9)} <= {"k1", "k2"}


def test_no_shared_member_is_said_plainly(backend: Any) -> None:
    backend.coordinator(cfg("k0,k1", 2)).pool("p").acquire()
    other = backend.coordinator(cfg("z0,z1", 1)).pool("p")
    try:
        other.acquire()
    except co.PoolExhaustedError as exc:
        assert "no member of this worker's" in str(exc)
    else:
        raise AssertionError("acquire served a member the fleet does not have")

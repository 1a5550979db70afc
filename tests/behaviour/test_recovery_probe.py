"""The recovery probe of an exhausted pool, on every backend: one caller fleet-wide gets the member
that is back, the others a degraded ``probing`` selection until its success writes one ``recovered``;
a failed probe cools the member again at once, escalated."""

from __future__ import annotations

from typing import Any

from helpers import event_types, fast_policy, pool_config, wait_until_available


def _exhausted(backend: Any, **policy: Any) -> Any:
    pool = backend.coordinator(pool_config(1, cooldown=fast_policy(**policy))).pool("p")
    pool.report_failure(pool.acquire(), "rate_limited", retry_after=0.05)
    assert pool.snapshot().exhausted
    wait_until_available(pool, "k0")
    return pool


def test_one_probe_then_one_recovered_event(backend: Any) -> None:
    pool = _exhausted(backend)
    probe = pool.acquire(recovery_probe=True)
    assert probe.probe and not probe.degraded and probe.member.id == "k0"
    others = [pool.acquire(recovery_probe=True) for _ in range(3)]
    assert all(sel.degraded and sel.probing and not sel.probe for sel in others)
    assert pool.snapshot().exhausted, "still exhausted while the probe runs"
    result = pool.report_success(probe)
    assert result.transitioned and result.events == ("recovered",) and not result.exhausted
    after = pool.acquire(recovery_probe=True)
    assert not after.degraded and not after.probe and after.member.id == "k0"
    assert event_types(pool) == ["created", "exhausted", "recovered"]


def test_a_failed_probe_cools_at_once_escalated(backend: Any) -> None:
    pool = _exhausted(backend, transient=0.2, transient_threshold=3)
    probe = pool.acquire(recovery_probe=True)
    result = pool.report_failure(probe, "transient")
    assert result.cooled, "the one request the fleet allowed failed: no threshold to wait for"
    snap = pool.snapshot()
    state = snap.member("k0")
    assert state.ejections == 2 and state.cooling_until - snap.now > 0.25, "0.2 s doubled"
    assert snap.probe_member is None and snap.exhausted
    assert event_types(pool) == ["created", "exhausted"]


def test_a_plain_acquire_still_recovers_at_once(backend: Any) -> None:
    pool = _exhausted(backend)
    sel = pool.acquire()
    assert not sel.degraded and not sel.probe and sel.transitioned
    assert event_types(pool) == ["created", "exhausted", "recovered"]

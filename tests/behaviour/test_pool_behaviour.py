"""The pool state machine's behaviour (docs/design.md, "Cooldown length" to "When every member is
unavailable"), run on real Redis and memory://, sync and async."""

from __future__ import annotations

import math

import pytest
from helpers import event_types, fast_policy, pool_config, wait_until_available

import coordinator as co


def test_sticky_holds_the_active_member(backend):
    pool = backend.coordinator(pool_config(3)).pool("p")
    picks = {pool.acquire().member.id for _ in range(20)}
    assert picks == {"k0"}
    sel = pool.acquire()
    assert pool.report_success(sel).active == "k0"
    assert pool.acquire().member.id == "k0"


def test_flap_regression_never_snaps_back(backend):
    """cool A -> B; A lapses -> still B, no event; cool B -> C; cool C -> wraps to A."""
    pool = backend.coordinator(pool_config(3, cooldown=fast_policy())).pool("p")
    a = pool.acquire()
    assert pool.report_failure(a, "quota_exhausted", retry_after=0.05).transitioned
    assert pool.acquire().member.id == "k1"
    events_before = event_types(pool)
    wait_until_available(pool, "k0")
    for _ in range(5):
        assert pool.acquire().member.id == "k1"
    assert event_types(pool) == events_before
    b = pool.acquire()
    pool.report_failure(b, "rate_limited", retry_after=60)
    c = pool.acquire()
    assert c.member.id == "k2"
    pool.report_failure(c, "rate_limited", retry_after=60)
    assert pool.acquire().member.id == "k0"
    assert event_types(pool) == ["created", "failover", "failover", "failover"]


def test_cooldown_is_never_shortened(backend):
    pool = backend.coordinator(pool_config(2)).pool("p")
    sel = pool.acquire()
    first = pool.report_failure(sel, "rate_limited", retry_after=600)
    assert first.cooled and first.cooling_until is not None
    shorter = pool.report_failure(sel, "rate_limited", retry_after=5)
    assert shorter.cooling_until == first.cooling_until
    no_hint = pool.report_failure(sel, "auth")
    assert no_hint.cooling_until == first.cooling_until
    longer = pool.report_failure(sel, "rate_limited", retry_after=1200)
    assert longer.cooling_until > first.cooling_until
    assert not longer.transitioned
    assert pool.snapshot().member("k0").ejections == 1


def test_escalation_doubles_and_success_resets(backend):
    policy = fast_policy(rate_limited=0.02, max=0.1)
    pool = backend.coordinator(pool_config(1, cooldown=policy)).pool("p")
    durations = []
    for _ in range(5):
        wait_until_available(pool, "k0")
        sel = pool.acquire()
        result = pool.report_failure(sel, "rate_limited")
        durations.append(round(result.cooling_until - result.now, 3))
    assert durations == [0.02, 0.04, 0.08, 0.1, 0.1]
    wait_until_available(pool, "k0")
    sel = pool.acquire()
    assert pool.report_success(sel).reset
    assert pool.snapshot().member("k0").ejections == 0
    result = pool.report_failure(pool.acquire(), "rate_limited")
    assert round(result.cooling_until - result.now, 3) == 0.02


def test_provider_hint_is_used_and_clamped(backend):
    policy = fast_policy(min=2, max=100)
    pool = backend.coordinator(pool_config(4, cooldown=policy)).pool("p")
    for hint, expected in [(30, 30.0), (10_000, 100.0), (0.001, 2.0)]:
        r = pool.report_failure(pool.acquire(), "rate_limited", retry_after=hint)
        assert round(r.cooling_until - r.now, 3) == expected
    # A NaN hint is ignored: the base cooldown (clamped to min) applies.
    r = pool.report_failure(pool.acquire(), "rate_limited", retry_after=float("nan"))
    assert round(r.cooling_until - r.now, 3) == 2.0


def test_transient_cools_only_after_threshold(backend):
    pool = backend.coordinator(pool_config(2, cooldown=fast_policy(transient_threshold=3))).pool("p")
    sel = pool.acquire()
    assert [pool.report_failure(sel, "transient").cooled for _ in range(3)] == [False, False, True]
    assert pool.acquire().member.id == "k1"


def test_park_is_never_cleared_by_automatic_logic(backend):
    pool = backend.coordinator(pool_config(3, cooldown=fast_policy())).pool("p")
    parked = pool.park("k1", reason="quota gone for today")
    assert parked.transitioned and parked.parked_until == math.inf and parked.active == "k0"
    sel = pool.acquire()
    pool.report_failure(sel, "rate_limited", retry_after=0.02)
    assert pool.acquire().member.id == "k2", "the parked member is skipped"
    pool.report_success(pool.acquire())
    wait_until_available(pool, "k0")
    state = pool.snapshot().member("k1")
    assert state.parked and state.reason == "quota gone for today"
    unparked = pool.unpark("k1")
    assert unparked.transitioned and unparked.active == "k2", "unpark moves nothing"
    assert not pool.unpark("k1").transitioned, "a second unpark changes nothing"
    assert event_types(pool) == ["created", "parked", "failover", "unparked"]


def test_parking_the_active_member_advances_once(backend):
    pool = backend.coordinator(pool_config(3)).pool("p")
    pool.acquire()
    result = pool.park("k0", seconds=3600, reason="maintenance")
    assert result.active == "k1" and result.events == ("parked",)
    (event,) = [e for e in pool.events() if e.type == "parked"]
    assert (event.from_member, event.to_member, event.member, event.reason) == ("k0", "k1", "k0", "maintenance")
    assert event.until == pytest.approx(result.now + 3600, abs=0.01)


def test_rotate_parks_active_for_a_while_and_advances(backend):
    pool = backend.coordinator(pool_config(3, rotate_for=120)).pool("p")
    pool.acquire()
    result = pool.rotate(reason="manual")
    assert result.transitioned and result.member == "k0" and result.active == "k1"
    assert result.parked_until == pytest.approx(result.now + 120, abs=0.01)
    assert event_types(pool) == ["created", "rotated"]
    assert pool.acquire().member.id == "k1"


def test_exhausted_once_per_episode_and_degraded_choice(backend):
    pool = backend.coordinator(pool_config(3, cooldown=fast_policy())).pool("p")
    pool.park("k2", reason="forever")
    first = pool.report_failure(pool.acquire(), "rate_limited", retry_after=500)
    second = pool.report_failure(pool.acquire(), "rate_limited", retry_after=200)
    assert second.exhausted and second.events == ("exhausted",)
    for _ in range(3):
        sel = pool.acquire()
        assert sel.degraded and sel.member.id == "k1", "k1 recovers soonest; k2 is parked forever"
        assert sel.retry_at == pytest.approx(second.cooling_until)
        pool.report_failure(sel, "rate_limited")
    assert first.cooling_until > second.cooling_until
    assert event_types(pool).count("exhausted") == 1


def test_exhausted_pool_recovers_with_one_event(backend):
    pool = backend.coordinator(pool_config(2, cooldown=fast_policy())).pool("p")
    pool.report_failure(pool.acquire(), "rate_limited", retry_after=0.03)
    pool.report_failure(pool.acquire(), "rate_limited", retry_after=600)
    assert pool.acquire().degraded
    wait_until_available(pool, "k0")
    sel = pool.acquire()
    assert not sel.degraded and sel.member.id == "k0" and sel.transitioned
    assert pool.acquire().member.id == "k0"
    assert event_types(pool) == ["created", "failover", "exhausted", "recovered"]


def test_every_member_parked_forever_raises(backend):
    pool = backend.coordinator(pool_config(2)).pool("p")
    pool.park("k0")
    pool.park("k1")
    with pytest.raises(co.PoolExhaustedError) as info:
        pool.acquire()
    assert info.value.retry_at is None and info.value.pool == "p"


def test_priority_failback_through_exactly_one_probe(backend):
    cfg = pool_config(3, strategy="priority", cooldown=fast_policy(), probe_timeout=60)
    coords = [backend.coordinator(cfg) for _ in range(3)]
    pool = coords[0].pool("p")
    pool.report_failure(pool.acquire(), "rate_limited", retry_after=0.03)
    assert pool.acquire().member.id == "k1"
    wait_until_available(pool, "k0")
    selections = [c.pool("p").acquire() for c in coords for _ in range(10)]
    probes = [s for s in selections if s.probe]
    assert len(probes) == 1 and probes[0].member.id == "k0"
    assert {s.member.id for s in selections if not s.probe} == {"k1"}
    result = coords[1].pool("p").report_success(probes[0])
    assert result.transitioned and result.active == "k0" and result.events == ("failback",)
    assert pool.acquire().member.id == "k0"
    assert event_types(pool) == ["created", "failover", "failback"]


def test_priority_failed_probe_cools_again_escalated(backend):
    cfg = pool_config(2, strategy="priority", cooldown=fast_policy(rate_limited=0.02))
    pool = backend.coordinator(cfg).pool("p")
    pool.report_failure(pool.acquire(), "rate_limited")
    wait_until_available(pool, "k0")
    probe = pool.acquire()
    assert probe.probe and probe.member.id == "k0"
    result = pool.report_failure(probe, "rate_limited")
    assert result.cooled and not result.transitioned and result.active == "k1"
    assert round(result.cooling_until - result.now, 3) == 0.04
    assert event_types(pool) == ["created", "failover"]


def test_priority_failback_waits_failback_after(backend):
    cfg = pool_config(2, strategy="priority", cooldown=fast_policy(), failback_after=3600)
    pool = backend.coordinator(cfg).pool("p")
    pool.report_failure(pool.acquire(), "rate_limited", retry_after=0.01)
    wait_until_available(pool, "k0")
    assert not any(pool.acquire().probe for _ in range(5))


def test_round_robin_spreads_by_weight_and_skips_cooling(backend):
    cfg = co.PoolConfig(
        name="p",
        strategy="round_robin",
        members=[co.Member(id="a"), co.Member(id="b", weight=2), co.Member(id="c")],
    )
    pool = backend.coordinator(cfg).pool("p")
    counts: dict[str, int] = {}
    for _ in range(40):
        sel = pool.acquire()
        counts[sel.member.id] = counts.get(sel.member.id, 0) + 1
    assert counts == {"a": 10, "b": 20, "c": 10}
    sel = next(s for s in iter(pool.acquire, None) if s.member.id == "b")
    result = pool.report_failure(sel, "rate_limited", retry_after=600)
    assert result.transitioned and result.events == ("ejected",) and result.active is None
    assert {pool.acquire().member.id for _ in range(10)} == {"a", "c"}


def test_stale_token_never_moves_pointer_or_cools_active(backend):
    pool = backend.coordinator(pool_config(3)).pool("p")
    old = pool.acquire()
    pool.report_failure(old, "rate_limited", retry_after=600)
    # The pointer wraps back to k0 later; a token from before must not touch it.
    pool.unpark("k0")
    stale_k1 = co.Selection(pool="p", member=pool.acquire().member, epoch=old.epoch, generation=old.generation)
    result = pool.report_failure(stale_k1, "auth")
    assert result.stale and not result.cooled and not result.transitioned
    assert pool.snapshot().member("k1").available
    assert pool.acquire().member.id == "k1"


def test_fifty_reports_of_one_failure_move_the_pointer_once(backend):
    pool = backend.coordinator(pool_config(3)).pool("p")
    sel = pool.acquire()
    results = [pool.report_failure(sel, "rate_limited", retry_after=60) for _ in range(50)]
    assert sum(r.transitioned for r in results) == 1
    assert pool.snapshot().active == "k1"
    assert event_types(pool) == ["created", "failover"]


def test_state_loss_heals_from_what_the_worker_knew(backend, owns_redis):
    pool = backend.coordinator(pool_config(3)).pool("p")
    old = pool.acquire()
    pool.report_failure(old, "rate_limited", retry_after=600)
    current = pool.acquire()
    assert current.member.id == "k1"
    if owns_redis or backend.url.startswith("memory://"):
        backend.raw.flushall()
    else:
        backend.raw.delete(*backend.keys("p"))
    # The first report after the loss, under the token of the lost state: applied, not dropped.
    result = pool.report_failure(current, "rate_limited", retry_after=600)
    assert not result.stale and result.cooled and result.active == "k2" and result.epoch != old.epoch
    snap = pool.snapshot()
    assert snap.member("k0").cooling_until is not None, "k0's cooldown came back from the worker's memory"
    assert pool.acquire().member.id == "k2"


def test_script_flush_is_healed(backend):
    pool = backend.coordinator(pool_config(2)).pool("p")
    sel = pool.acquire()
    backend.raw.script_flush()
    assert pool.report_failure(sel, "rate_limited", retry_after=60).transitioned
    assert pool.acquire().member.id == "k1"


def test_report_success_writes_nothing_when_nothing_to_reset(backend):
    pool = backend.coordinator(pool_config(2)).pool("p")
    sel = pool.acquire()
    before = backend.raw.hgetall(backend.keys("p")[0])
    for _ in range(3):
        assert not pool.report_success(sel).reset
    assert backend.raw.hgetall(backend.keys("p")[0]) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("generation", "abc"), ("version", "nan"), ("k0:cooling_until", "inf"), ("k0:parked_until", "later"),
     ("active", "nobody"), ("strategy", "random")],
)
def test_garbage_fields_are_healed_and_every_action_serves(backend, field, value):
    # docs/design.md, "Corrupt state" (tests/behaviour/test_corrupt_state.py has every shape).
    pool = backend.coordinator(pool_config(2)).pool("p")
    old = pool.acquire().epoch
    key = backend.keys("p")[0]
    backend.raw.hset(key, field, value)
    for action in (pool.acquire, lambda: pool.park("k0"), pool.snapshot, lambda: pool.rotate()):
        action()
    assert backend.raw.hget(key, field) != value
    assert event_types(pool).count("healed") == 1
    snap = pool.snapshot()
    assert snap.epoch != old and field.split(":")[-1] in snap.healed_reason


def test_hand_edit_of_a_member_in_its_default_state_is_seen_by_snapshot(backend):
    # The scripts read only the members the index names (and the active one): a member no script left
    # in another state is in its default state. A hand edit of its fields moves no version, so calls
    # that trust the index do not see it; snapshot reads everything, and heals it.
    pool = backend.coordinator(pool_config(2)).pool("p")
    pool.acquire()
    key = backend.keys("p")[0]
    backend.raw.hset(key, "k1:cooling_until", "inf")
    fresh = backend.coordinator(pool_config(2)).pool("p")
    assert fresh.acquire().member.id == "k0"
    assert backend.raw.hget(key, "k1:cooling_until") == "inf"
    assert "k1:cooling_until" in pool.snapshot().healed_reason
    assert backend.raw.hget(key, "k1:cooling_until") is None


def test_wrong_key_types_are_replaced(backend):
    pool = backend.coordinator(pool_config(2)).pool("p")
    state_key, events_key = backend.keys("p")
    backend.raw.set(state_key, "not a hash")
    assert pool.acquire().member.id == "k0"
    assert backend.raw.type(state_key) == "hash"
    backend.raw.delete(state_key, events_key)
    backend.raw.rpush(events_key, "x")
    assert pool.acquire().member.id == "k0"
    assert backend.raw.type(events_key) == "stream" and event_types(pool) == ["healed"]


def test_unknown_member_changes_nothing(backend):
    pool = backend.coordinator(pool_config(2)).pool("p")
    pool.acquire()
    before = backend.raw.hgetall(backend.keys("p")[0])
    with pytest.raises(co.UnknownMemberError):
        pool.park("nobody")
    with pytest.raises(co.UnknownMemberError):
        pool.unpark("nobody")
    assert backend.raw.hgetall(backend.keys("p")[0]) == before


def test_each_transition_publishes_one_notice(backend):
    pool = backend.coordinator(pool_config(3)).pool("p")
    sel = pool.acquire()
    pubsub = backend.raw.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(co.KeySchema(backend.prefix).channel)
    pubsub.get_message(timeout=1.0)
    pool.report_failure(sel, "rate_limited", retry_after=60)
    pool.report_failure(sel, "rate_limited", retry_after=60)  # stale: no write, no notice
    pool.park("k2")
    notices = []
    while (msg := pubsub.get_message(timeout=0.5)) is not None:
        notices.append(msg["data"])
    pubsub.close()
    snap = pool.snapshot()
    assert [n.split()[:3] for n in notices] == [["p", snap.epoch, "2"], ["p", snap.epoch, "3"]]


def test_events_are_oldest_first_and_limited(backend):
    pool = backend.coordinator(pool_config(3)).pool("p")
    pool.acquire()
    for member in ("k1", "k2", "k1"):
        pool.park(member, seconds=60)
        pool.unpark(member)
    events = pool.events(limit=3)
    assert [e.generation for e in events] == [5, 6, 7]
    assert [e.type for e in events] == ["unparked", "parked", "unparked"]
    assert all(e.epoch == events[0].epoch and e.pool == "p" for e in events)


def test_event_stream_is_capped(backend):
    pool = backend.coordinator(pool_config(2), stream_maxlen=20).pool("p")
    pool.acquire()
    for _ in range(150):
        pool.park("k1", seconds=60)
        pool.unpark("k1")
    assert backend.raw.xlen(backend.keys("p")[1]) <= 120
    assert pool.events(limit=1)[0].generation == 301


def test_membership_change_is_applied_by_new_config(backend):
    pool = backend.coordinator(pool_config(3)).pool("p")
    pool.acquire()
    pool.park("k1", seconds=60, reason="x")
    new_cfg = co.PoolConfig(name="p", members=[co.Member(id="k1"), co.Member(id="k2"), co.Member(id="k9")])
    pool2 = backend.coordinator(new_cfg).pool("p")
    sel = pool2.acquire()
    assert sel.member.id == "k2"
    snap = pool2.snapshot()
    assert [m.id for m in snap.members] == ["k1", "k2", "k9"]
    assert snap.member("k1").parked, "state of members that stay is kept"
    assert event_types(pool2)[-1] == "reconfigured"
    assert "k0:cooling_until" not in backend.raw.hgetall(backend.keys("p")[0])


def test_model_unavailable_skips_the_whole_pool(backend):
    pool = backend.coordinator(pool_config(3)).pool("p")
    result = pool.report_failure(pool.acquire(), "model_unavailable", retry_after=600)
    assert result.transitioned and result.exhausted and result.events == ("exhausted",)
    sel = pool.acquire()
    assert sel.degraded and sel.retry_at == pytest.approx(result.now + 600, abs=0.01)
    assert pool.snapshot().skipped_until is not None

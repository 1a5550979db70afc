"""The local view (docs/design.md, "The local view") as a pure object: what a worker may reuse without
asking Redis, for how long, and what drops it. Time is passed in; nothing here sleeps or connects."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from coordinator.core.config import Member
from coordinator.core.types import Selection
from coordinator.rules.view import DEFAULT_STALENESS, PoolView
from coordinator.store.codec import decode_acquire

MEMBERS = {m: Member(id=m) for m in ("a", "b", "c")}
SERVER_MS = 5_000_000.0  # the reply's server time, milliseconds


def reply(**fields: Any) -> dict[str, Any]:
    base = {"epoch": "e1", "generation": 3, "version": 7, "now": SERVER_MS, "active": "a", "member": "a",
            "valid_until": SERVER_MS + 3_600_000, "degraded": False, "lease": "", "rotation": "", "dirty": ""}
    base.update(fields)
    return base


def learned(staleness: float = 60.0, **fields: Any) -> PoolView:
    view = PoolView("p", MEMBERS, staleness=staleness)
    view.learn_acquire(decode_acquire(reply(**fields)), now=100.0)
    return view


def test_the_default_reuses_a_decision_for_one_second() -> None:
    assert DEFAULT_STALENESS == 1.0
    view = PoolView("p", MEMBERS)
    view.learn_acquire(decode_acquire(reply()), now=100.0)
    assert view.selection(100.99) is not None
    assert view.selection(101.0) is None


def test_a_reused_selection_carries_the_token_and_the_server_clock() -> None:
    view = learned()
    sel = view.selection(102.5)
    assert sel == Selection(pool="p", member=MEMBERS["a"], epoch="e1", generation=3, now=SERVER_MS / 1000 + 2.5)
    assert (view.hits, view.misses) == (1, 0)


def test_counts_hits_and_misses() -> None:
    view = PoolView("p", MEMBERS, staleness=5.0)
    assert view.selection(1.0) is None
    view.learn_acquire(decode_acquire(reply()), now=1.0)
    view.selection(1.5)
    view.selection(2.0)
    assert (view.hits, view.misses) == (2, 1)


@pytest.mark.parametrize("fields", [{"degraded": True}, {"lease": "L1"}, {"valid_until": SERVER_MS},
                                    {"valid_until": SERVER_MS - 1}, {"valid_until": 0}, {"valid_until": None}])
def test_decisions_that_must_not_be_reused(fields: dict[str, Any]) -> None:
    view = learned(**fields)
    assert view.selection(100.0) is None


def test_a_decision_valid_for_one_more_millisecond_is_reused_that_long() -> None:
    view = learned(valid_until=SERVER_MS + 1)
    assert view.selection(100.0) is not None
    assert view.selection(100.001) is None


def test_zero_or_negative_staleness_never_reuses() -> None:
    for staleness in (0, -1.0):
        view = learned(staleness=staleness)
        assert view.selection(100.0) is None
        view.notice("e1", 8, SimpleNamespace(active="b", generation=4, dirty=()), now=100.0)
        assert view.selection(100.0) is None


def test_valid_until_shorter_than_staleness_bounds_the_reuse() -> None:
    view = learned(staleness=10.0, valid_until=SERVER_MS + 2_000)
    assert view.selection(101.999) is not None
    assert view.selection(102.0) is None


def test_a_reply_older_than_an_announced_write_is_not_reused() -> None:
    view = PoolView("p", MEMBERS, staleness=60.0)
    view.notice("e1", 8)
    view.learn_acquire(decode_acquire(reply(version=7)), now=100.0)
    assert view.selection(100.0) is None
    view.learn_acquire(decode_acquire(reply(version=8)), now=100.0)
    assert view.selection(100.0) is not None


def test_a_newer_version_or_another_epoch_drops_the_decision_an_older_one_does_not() -> None:
    view = learned()
    view.notice("e1", 6)
    view.notice("e1", 7)
    assert view.selection(100.1) is not None
    view.notice("e1", 8)
    assert view.selection(100.2) is None
    view = learned()
    view.notice("e9", 1)
    assert view.selection(100.1) is None


def test_any_reply_with_a_newer_version_drops_the_decision() -> None:
    view = learned()
    view.observe({"epoch": "e1", "version": 7})
    assert view.selection(100.1) is not None
    view.observe({"version": 9})  # no epoch: says nothing
    view.observe({"epoch": "e1"})
    assert view.selection(100.1) is not None
    view.observe({"epoch": "e1", "version": 8})
    assert view.selection(100.2) is None


def test_forget_drops_the_decision() -> None:
    view = learned()
    view.forget()
    assert view.selection(100.0) is None


def test_round_robin_rotates_locally_by_weight() -> None:
    view = learned(rotation="a:2,b:1,c")
    picks = [view.selection(100.0 + i / 100) for i in range(8)]
    assert [p.member.id for p in picks if p] == ["a", "a", "b", "c", "a", "a", "b", "c"]


def test_a_one_member_rotation_always_picks_it() -> None:
    view = learned(rotation="b:1")
    assert [view.selection(100.0).member.id for _ in range(3)] == ["b", "b", "b"]  # type: ignore[union-attr]


def test_a_sticky_notice_brings_the_new_decision_without_a_round_trip() -> None:
    view = learned(staleness=2.0)
    view.notice("e1", 8, SimpleNamespace(active="b", generation=4, dirty=("b",)), now=100.5)
    sel = view.selection(101.0)
    assert sel is not None and (sel.member.id, sel.generation, sel.epoch) == ("b", 4, "e1")
    assert sel.now == pytest.approx(SERVER_MS / 1000 + 1.0), "the clock offset of the last reply"
    assert view.success_is_news(sel, 101.0), "b is dirty: its success must be reported"
    assert view.selection(102.49) is not None
    assert view.selection(102.5) is None, "a notice's decision is bounded by staleness too"


def test_a_notice_decision_needs_a_reply_first_a_known_member_and_a_newer_version() -> None:
    view = PoolView("p", MEMBERS, staleness=5.0)
    view.notice("e1", 8, SimpleNamespace(active="b", generation=4, dirty=()), now=100.0)
    assert view.selection(100.0) is None, "no clock offset known before any reply"
    view = learned()
    view.notice("e1", 8, SimpleNamespace(active="zz", generation=4, dirty=()), now=100.0)
    assert view.selection(100.0) is None
    view = learned()
    view.notice("e1", 7, SimpleNamespace(active="b", generation=4, dirty=()), now=100.0)
    sel = view.selection(100.0)
    assert sel is not None and sel.member.id == "a", "an old notice changes nothing"
    view.notice("e1", 9, None, now=100.0)
    assert view.selection(100.0) is None


def test_successes_that_change_nothing_need_no_report() -> None:
    view = learned(dirty="b,c")
    plain = view.selection(100.0)
    assert plain is not None
    assert not view.success_is_news(plain, 100.0)
    for member in ("b", "c"):
        assert view.success_is_news(Selection(pool="p", member=MEMBERS[member], epoch="e1", generation=3), 100.0)
    assert view.success_is_news(Selection(pool="p", member=MEMBERS["a"], epoch="e0", generation=3), 100.0)
    assert view.success_is_news(Selection(pool="p", member=MEMBERS["a"], epoch="e1", generation=3, lease="L"),
                                100.0)
    assert view.success_is_news(plain, 160.0), "after the decision expired: report"
    assert PoolView("p", MEMBERS).success_is_news(plain, 100.0), "no decision: report"


def test_an_empty_dirty_list_marks_nobody() -> None:
    view = learned(dirty="")
    assert not view.success_is_news(Selection(pool="p", member=MEMBERS["a"], epoch="e1", generation=3), 100.0)
    view = learned(dirty=None)
    assert not view.success_is_news(Selection(pool="p", member=MEMBERS["b"], epoch="e1", generation=3), 100.0)


def test_a_quiet_success_answers_like_the_script_would() -> None:
    view = learned(active="a", generation=3)
    sel = view.selection(100.5)
    assert sel is not None
    assert view.quiet_success(sel, 100.5) == {
        "epoch": "e1", "generation": 3, "active": "a", "exhausted": False, "now": pytest.approx(SERVER_MS + 500),
        "reset": False, "transitioned": False}
    assert learned(active="").quiet_success(sel, 100.0)["active"] is None


@pytest.mark.parametrize("fields", [{"lease": "L1"}, {"degraded": True}, {"valid_until": SERVER_MS}])
def test_a_reply_that_must_not_be_reused_also_drops_the_previous_decision(fields: dict[str, Any]) -> None:
    view = learned()
    assert view.selection(100.0) is not None
    view.learn_acquire(decode_acquire(reply(**fields)), now=100.5)  # same version: no notice would drop it
    assert view.selection(100.5) is None


def test_at_the_default_staleness_a_sticky_notice_is_taken_too() -> None:
    view = PoolView("p", MEMBERS)
    view.learn_acquire(decode_acquire(reply()), now=100.0)
    view.notice("e1", 8, SimpleNamespace(active="c", generation=5, dirty=()), now=100.2)
    sel = view.selection(100.3)
    assert sel is not None and sel.member.id == "c"


# -- failure counts and the safety re-read (docs/design.md, "Failure counts", "The local view") ------


def test_a_success_is_remembered_for_the_next_failure_report_only() -> None:
    view = learned()
    assert view.take_served("a") == 0.0
    view.note_success("a", now=101.5)
    assert view.take_served("a") == pytest.approx(SERVER_MS / 1000.0 + 1.5)
    assert view.take_served("a") == 0.0, "the next report starts afresh"


def test_a_success_before_any_reply_is_not_remembered() -> None:
    view = PoolView("p", MEMBERS)
    view.note_success("a", now=1.0)  # no server clock known yet: no estimate to send
    assert view.take_served("a") == 0.0


def healthy(view: PoolView) -> PoolView:
    view.health.ok = True
    return view


def test_the_safety_bound_keeps_the_decision_for_the_re_read_to_extend() -> None:
    from coordinator.rules.view import SAFETY_STALENESS

    view = healthy(learned())
    lapse = 100.0 + SAFETY_STALENESS
    assert not view.due(lapse - SAFETY_STALENESS / 2 - 1, SAFETY_STALENESS / 2)
    assert view.due(lapse - 1, SAFETY_STALENESS / 2)
    assert view.selection(lapse) is None and view.due(lapse, 0.0), "lapsed, but kept for the re-read"
    assert view.confirm("e1", 7, now=lapse)
    assert view.selection(lapse + 1) is not None
    assert view.selection(lapse + SAFETY_STALENESS) is None


def test_a_re_read_that_shows_another_version_drops_the_decision() -> None:
    from coordinator.rules.view import SAFETY_STALENESS

    view = healthy(learned())
    assert not view.confirm("e1", 8, now=100.0 + SAFETY_STALENESS)
    assert view.selection(100.0 + SAFETY_STALENESS) is None and not view.due(100.0 + SAFETY_STALENESS, 0.0)
    other = healthy(learned())
    assert not other.confirm("e2", 7, now=101.0), "a new epoch"


def test_a_re_read_never_extends_past_the_decisions_own_bound() -> None:
    from coordinator.rules.view import SAFETY_STALENESS

    view = healthy(learned(valid_until=SERVER_MS + (SAFETY_STALENESS + 10) * 1000))
    lapse = 100.0 + SAFETY_STALENESS
    assert view.confirm("e1", 7, now=lapse)
    assert view.selection(lapse + 9) is not None
    assert view.selection(lapse + 10) is None and not view.due(lapse + 10, 0.0)


def test_withdrawing_a_broken_streams_success_restores_the_success_before_it() -> None:
    view = learned()
    request, stream = object(), object()
    view.note_success("a", now=101.0, attempt=request)  # a request that succeeded
    view.note_success("a", now=102.0, attempt=stream)  # a stream's hand-over, which later breaks
    assert view.withdraw_success("a", stream)
    assert view.take_served("a") == pytest.approx(SERVER_MS / 1000.0 + 1.0), "the request still served"


def test_a_success_withdrawn_with_nothing_before_it_leaves_none() -> None:
    view = learned()
    stream = object()
    view.note_success("a", now=102.0, attempt=stream)
    assert view.withdraw_success("a", stream)
    assert view.take_served("a") == 0.0


def test_only_the_attempt_that_noted_the_last_success_can_withdraw_it() -> None:
    view = learned()
    stream, later = object(), object()
    view.note_success("a", now=101.0, attempt=stream)
    view.note_success("a", now=102.0, attempt=later)  # served after the stream's hand-over: genuine
    assert not view.withdraw_success("a", stream)
    assert not view.withdraw_success("b", later), "another member's success is its own"
    assert view.take_served("a") == pytest.approx(SERVER_MS / 1000.0 + 2.0)


def test_an_attempt_noted_twice_is_one_success_to_withdraw() -> None:
    view = learned()
    request, stream = object(), object()
    view.note_success("a", now=101.0, attempt=request)
    view.note_success("a", now=102.0, attempt=stream)  # the happy path's note, then the plan's report
    view.note_success("a", now=102.5, attempt=stream)
    assert view.withdraw_success("a", stream)
    assert view.take_served("a") == pytest.approx(SERVER_MS / 1000.0 + 1.0)


def test_a_restored_success_can_still_be_withdrawn_by_its_own_attempt() -> None:
    view = learned()
    first, second = object(), object()
    view.note_success("a", now=101.0, attempt=first)
    view.note_success("a", now=102.0, attempt=second)
    assert view.withdraw_success("a", second)
    assert view.withdraw_success("a", first), "a second stream that broke too"
    assert view.take_served("a") == 0.0

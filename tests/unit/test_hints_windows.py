"""Provider hints, read exactly: every duration and date form, each rate-limit window style, and the
choice between windows that decides how long a member rests (the values a fleet actually waits)."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import pytest

from coordinator.rules.hints import (
    MAX_HINT,
    explicit_retry_after,
    normalize_headers,
    parse_go_duration,
    parse_reset,
    parse_retry_after,
    parse_seconds,
    parse_timestamp,
    preemptive_cooldown,
    rate_limit_buckets,
    rate_limit_hint,
    server_time,
)

REF = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def test_hints_are_capped_at_thirty_days() -> None:
    assert MAX_HINT == 2_592_000.0
    assert parse_seconds("99999999") == MAX_HINT
    assert parse_seconds("2592000") == 2_592_000.0
    assert parse_go_duration("800h") == MAX_HINT


@pytest.mark.parametrize(("value", "seconds"), [
    ("2", 2.0), (" 2 ", 2.0), ("+3", 3.0), (".5", 0.5), ("1.", 1.0), ("0", 0.0), ("-1", None), ("abc", None),
    ("", None), (None, None), ("1e3", None), ("nan", None), ("inf", None),
])
def test_plain_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_seconds(value) == seconds


@pytest.mark.parametrize(("value", "seconds"), [
    ("1ns", 1e-9), ("1us", 1e-6), ("1µs", 1e-6), ("1μs", 1e-6), ("12ms", 0.012), ("1s", 1.0), ("1m", 60.0),
    ("1h", 3600.0), ("1d", 86400.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), (".5s", 0.5), ("1.5", 1.5),
    ("2S", 2.0), (" 7s ", 7.0), ("1s garbage", None), ("x1s", None), ("1s1", None), ("s", None), ("-1s", None),
    ("", None), (None, None), ("1m-1s", None),
])
def test_go_durations_every_unit(value: str | None, seconds: float | None) -> None:
    got = parse_go_duration(value)
    assert got == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize(("value", "stamp"), [
    ("1714564830", 1714564830.0), ("1714564830123", 1714564830.123), ("1000000000", 1e9), ("999999999", None),
    ("1000000000000", 1e9), ("2024-05-01T12:00:30Z", REF + 30), ("2024-05-01T12:00:30", REF + 30),
    ("2024-05-01T14:00:30+02:00", REF + 30), ("Wed, 01 May 2024 12:00:30 GMT", REF + 30), ("soon", None),
    ("", None), (None, None),
])
def test_timestamps_every_form(value: str | None, stamp: float | None) -> None:
    got = parse_timestamp(value)
    assert got == (pytest.approx(stamp) if stamp is not None else None)


def test_server_time_prefers_the_date_header_then_now() -> None:
    assert server_time({"date": formatdate(REF, usegmt=True)}, now=5.0) == REF
    assert server_time({"date": "garbage"}, now=5.0) == 5.0
    assert server_time({}, now=7.0) == 7.0
    assert server_time({}) > 1.7e9


@pytest.mark.parametrize(("value", "seconds"), [
    ("20", 20.0), ("6m0s", 360.0), ("1714564830", 30.0), ("1714564830000", 30.0), ("2024-05-01T12:00:30Z", 30.0),
    ("2024-05-01T11:59:00Z", 0.0), ("1714564700", 0.0), ("Wed, 01 May 2024 12:01:00 GMT", 60.0), ("", None),
    (None, None), ("later", None),
])
def test_reset_values_measured_from_the_server_clock(value: str | None, seconds: float | None) -> None:
    assert parse_reset(value, REF) == seconds


@pytest.mark.parametrize(("value", "seconds"), [
    ("2", 2.0), ("Wed, 01 May 2024 12:00:30 GMT", 30.0), ("Wed, 01 May 2024 11:00:00 GMT", 0.0), ("-5", None),
    ("", None), (None, None), ("whenever", None),
])
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, REF) == seconds


def test_retry_after_ms_is_preferred_and_finer() -> None:
    assert explicit_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert explicit_retry_after({"Retry-After-Ms": "junk", "Retry-After": "9"}) == 9.0
    assert explicit_retry_after({"retry-after-ms": "9999999999"}) == MAX_HINT
    date = formatdate(REF, usegmt=True)
    assert explicit_retry_after({"retry-after": "Wed, 01 May 2024 12:00:45 GMT", "date": date}, now=0) == 45.0
    assert explicit_retry_after({}) is None


def test_every_window_style_is_read_with_its_remaining_count() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s",
        "x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "1m",
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": "2024-05-01T12:00:40Z",
        "ratelimit-remaining": "3", "ratelimit-reset": "5",
        "x-ratelimit-reset-bogus": "never",
    }
    buckets = sorted(rate_limit_buckets(headers, now=REF))
    assert buckets == [("output-tokens", 0.0, 40.0), ("ratelimit", 3.0, 5.0), ("requests", 0.0, 20.0),
                       ("tokens", 100.0, 60.0)]


def test_a_window_without_a_remaining_count() -> None:
    assert rate_limit_buckets({"x-ratelimit-reset": "12"}) == [("x-ratelimit", None, 12.0)]


def test_rate_limit_hint_waits_for_the_last_spent_window() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s",
               "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "90s",
               "x-ratelimit-remaining-day": "5", "x-ratelimit-reset-day": "20h"}
    assert rate_limit_hint(headers) == 90.0


def test_rate_limit_hint_without_a_spent_window_takes_the_soonest_reset() -> None:
    headers = {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "20s",
               "x-ratelimit-reset-tokens": "90s"}
    assert rate_limit_hint(headers) == 20.0
    assert rate_limit_hint({"content-type": "application/json"}) is None


def test_rate_limit_hint_prefers_the_explicit_retry_after() -> None:
    headers = {"retry-after": "3", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}
    assert rate_limit_hint(headers) == 3.0


def test_a_success_that_spends_a_window_rests_until_its_reset() -> None:
    assert preemptive_cooldown({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}) == 20.0


def test_preemptive_cooldown_takes_the_latest_of_the_spent_windows() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s",
               "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "45s",
               "x-ratelimit-remaining-day": "9", "x-ratelimit-reset-day": "20h"}
    assert preemptive_cooldown(headers) == 45.0


def test_plain_x_ratelimit_remaining_zero_cools() -> None:
    assert preemptive_cooldown({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "30"}) == 30.0
    assert preemptive_cooldown({"RateLimit-Remaining": "0", "RateLimit-Reset": "7"}) == 7.0
    assert preemptive_cooldown([(b"X-RateLimit-Remaining", b"0"), (b"X-RateLimit-Reset", b"30")]) == 30.0
    assert preemptive_cooldown({"anthropic-ratelimit-requests-remaining": "0",
                                "anthropic-ratelimit-requests-reset": "2024-05-01T12:00:30Z",
                                "date": "Wed, 01 May 2024 12:00:00 GMT"}) == 30.0


@pytest.mark.parametrize("headers", [
    None, {}, {"x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "20s"},
    {"x-ratelimit-remaining-requests": "0"},  # spent, but no reset to wait for
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0s"},  # resets now
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "5", "x-ratelimit-reset-tokens": "9s"},
])
def test_no_preemptive_cooldown_while_a_window_has_room(headers: Any) -> None:
    assert preemptive_cooldown(headers) is None


def test_odd_header_shapes_get_the_careful_reading() -> None:
    class Exploding:
        def items(self) -> Any:
            raise RuntimeError("no")

    assert preemptive_cooldown(Exploding()) is None
    assert normalize_headers(Exploding()) == {}


def test_normalize_headers_every_shape() -> None:
    assert normalize_headers(None) == {}
    assert normalize_headers({" Retry-After ": " 5 ", "X-N": 3}) == {"retry-after": "5", "x-n": "3"}
    assert normalize_headers([(b"Date", b"x"), ("bad",), ("k", None), (1, "v"), ("f", 1.5)]) == \
        {"date": "x", "f": "1.5"}
    assert normalize_headers("retry-after: 5") == {}
    assert normalize_headers(b"retry-after") == {}
    assert normalize_headers(42) == {}
    assert normalize_headers([("é".encode("latin-1"), "é".encode("latin-1"))]) == {"é": "é"}


def test_a_window_resetting_within_a_second_still_rests_the_member() -> None:
    assert preemptive_cooldown({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "500ms"}) == 0.5

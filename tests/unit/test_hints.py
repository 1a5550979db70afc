"""Provider hints: header parsing tables, garbage included."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.rules.hints import (
    MAX_HINT,
    explicit_retry_after,
    normalize_headers,
    parse_go_duration,
    parse_reset,
    parse_retry_after,
    parse_timestamp,
    preemptive_cooldown,
    rate_limit_buckets,
    rate_limit_hint,
)

# 2024-05-01T12:00:00Z
NOON = 1714564800.0
NOON_HTTP = "Wed, 01 May 2024 12:00:00 GMT"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("2m59.56s", 179.56),
        ("500us", 0.0005),
        ("250µs", 0.00025),
        ("1.5s", 1.5),
        ("20", 20.0),
        ("0.25", 0.25),
        (" 7s ", 7.0),
        ("1D", 86400.0),
        ("9999999h", MAX_HINT),
        # garbage
        ("", None),
        (None, None),
        ("s", None),
        ("abc", None),
        ("-1s", None),
        ("-5", None),
        ("1x", None),
        ("1s2", None),
        ("1s 2m", None),
        ("nan", None),
        ("NaNs", None),
        ("inf", None),
        ("1e3s", None),
        ("1,5s", None),
    ],
)
def test_go_durations(value: str | None, seconds: float | None) -> None:
    result = parse_go_duration(value)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("120", 120.0),
        (NOON_HTTP.replace("12:00:00", "12:00:30"), 30.0),  # HTTP date, measured from the Date header
        (NOON_HTTP.replace("12:00:00", "11:59:00"), 0.0),  # a date in the past means "now"
        ("99999999999", MAX_HINT),
        ("-5", None),
        ("-1.5", None),
        ("soon", None),
        ("", None),
        ("nan", None),
        ("1e309", None),
        ("Wed, 99 Foo 2024 99:99:99 GMT", None),
    ],
)
def test_retry_after_values(value: str, seconds: float | None) -> None:
    result = parse_retry_after(value, NOON)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),  # the finer one wins
        ({"retry-after-ms": "junk", "retry-after": "4"}, 4.0),  # garbage falls back
        ({"retry-after-ms": "-10", "retry-after": "4"}, 4.0),
        ({"retry-after": NOON_HTTP.replace("12:00:00", "12:01:00"), "date": NOON_HTTP}, 60.0),
        ({"retry-after": "junk"}, None),
        ({}, None),
    ],
)
def test_explicit_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    # `now` is far from NOON on purpose: absolute dates must be measured against the Date header.
    result = explicit_retry_after(headers, now=NOON + 5000)
    assert result == (pytest.approx(seconds) if seconds is not None else None)


def test_absolute_dates_use_local_time_without_date_header() -> None:
    assert explicit_retry_after({"retry-after": NOON_HTTP.replace("12:00:00", "12:00:45")}, now=NOON) == 45.0


@pytest.mark.parametrize(
    ("value", "stamp"),
    [
        ("2024-05-01T12:00:30Z", NOON + 30),
        ("2024-05-01T12:00:30.5Z", NOON + 30.5),
        ("2024-05-01T14:00:30+02:00", NOON + 30),
        ("2024-05-01T12:00:30", NOON + 30),  # no offset: UTC
        (NOON_HTTP, NOON),
        ("1714564830", NOON + 30),  # unix seconds
        ("1714564830000", NOON + 30),  # unix milliseconds
        ("30", None),  # a duration, not a timestamp
        ("2024-13-45T99:00:00Z", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_timestamps(value: str, stamp: float | None) -> None:
    assert parse_timestamp(value) == stamp


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0),
        ("2024-05-01T12:00:30Z", 30.0),
        ("2024-05-01T11:00:00Z", 0.0),
        ("1714564890", 90.0),
        ("45", 45.0),
        ("2999-01-01T00:00:00Z", MAX_HINT),
        ("garbage", None),
        ("-3s", None),
    ],
)
def test_reset_values(value: str, seconds: float | None) -> None:
    assert parse_reset(value, NOON) == seconds


OPENAI_SPENT_REQUESTS = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "6m0s",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-tokens": "149000",
    "x-ratelimit-reset-tokens": "12ms",
}
ANTHROPIC_SPENT_TOKENS = {
    "date": NOON_HTTP,
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2024-05-01T12:00:01Z",
    "anthropic-ratelimit-input-tokens-remaining": "0",
    "anthropic-ratelimit-input-tokens-reset": "2024-05-01T12:00:42Z",
}


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        (OPENAI_SPENT_REQUESTS, 360.0),  # the window that ran out, not the soonest
        ({**OPENAI_SPENT_REQUESTS, "x-ratelimit-remaining-tokens": "0"}, 360.0),  # both spent: the later
        ({**OPENAI_SPENT_REQUESTS, "retry-after": "7"}, 7.0),  # an explicit instruction wins
        ({"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "2s"}, 2.0),  # unknown: soonest
        (ANTHROPIC_SPENT_TOKENS, 42.0),
        ({"ratelimit-remaining": "0", "ratelimit-reset": "30"}, 30.0),
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1714564830", "date": NOON_HTTP}, 30.0),
        ({"x-ratelimit-reset-requests": "junk"}, None),
        ({"x-ratelimit-remaining-requests": "0"}, None),  # spent, but no reset to wait for
        ({}, None),
    ],
)
def test_rate_limit_hint_picks_the_right_window(headers: dict[str, str], seconds: float | None) -> None:
    assert rate_limit_hint(headers, now=NOON + 5000) == seconds


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        (OPENAI_SPENT_REQUESTS, 360.0),
        (ANTHROPIC_SPENT_TOKENS, 42.0),
        ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s"}, None),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0s"}, None),  # already reset
        ({"x-ratelimit-remaining-requests": "0"}, None),
        ({"x-ratelimit-remaining-requests": "none", "x-ratelimit-reset-requests": "5s"}, None),
        ({"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "5s"}, None),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"}, None),
        ({"retry-after": "30"}, None),  # a success with retry-after is not a spent window
        ({}, None),
    ],
)
def test_preemptive_cooldown_only_for_a_spent_window(headers: dict[str, str], seconds: float | None) -> None:
    assert preemptive_cooldown(headers, now=NOON + 5000) == seconds


def test_buckets_name_each_window() -> None:
    buckets = sorted(rate_limit_buckets(OPENAI_SPENT_REQUESTS))
    assert buckets == [("requests", 0.0, 360.0), ("tokens", 149000.0, 0.012)]


def test_normalize_headers_accepts_pairs_bytes_and_drops_junk() -> None:
    raw = [(b"Retry-After", b"2"), ("X-Thing", 3), ("bad",), (None, "x"), ("ok", object())]
    assert normalize_headers(raw) == {"retry-after": "2", "x-thing": "3"}
    assert normalize_headers(None) == {}
    assert normalize_headers("retry-after: 2") == {}
    assert normalize_headers(42) == {}


header_names = st.sampled_from(
    [
        "retry-after",
        "retry-after-ms",
        "date",
        "x-ratelimit-reset-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-tokens",
        "x-ratelimit-remaining-tokens",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-unified-reset",
        "ratelimit-reset",
    ]
)
header_values = st.one_of(
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["1h2m", "-0s", "9" * 400, "0x10", "1e999", "Wed, 01 May 2024 12:00:00 GMT", "2024-05-01T12Z"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(header_names, header_values, max_size=8), st.floats(allow_nan=False, min_value=0, max_value=4e9))
def test_garbage_never_crashes_and_stays_in_bounds(headers: dict[str, str], now: float) -> None:
    for result in (
        explicit_retry_after(headers, now),
        rate_limit_hint(headers, now),
        preemptive_cooldown(headers, now),
    ):
        assert result is None or (math.isfinite(result) and 0 <= result <= MAX_HINT)

"""Hostile provider headers: any value, on a real ``httpx.Response``, gives no exception and a hint
that is None or finite within [0, MAX_HINT]."""

from __future__ import annotations

import json
import math

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import json_like as _json_like

import coordinator as co
from coordinator.core.kinds import COOLING_KINDS
from coordinator.rules import hints as _hints

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- provider headers ------------------------------------------------------------------------------------

HINT_HEADERS = [
    "retry-after", "retry-after-ms", "date", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-unified-reset",
    "anthropic-ratelimit-unified-remaining", "anthropic-ratelimit-unified-status", "ratelimit-reset",
    "ratelimit-remaining", "x-ratelimit-reset", "x-ratelimit-remaining", "x-should-retry",
]
NASTY_VALUES = [
    "", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1", "-0", "+5", "0x10",
    "\u0663", "\u0661\u0662\u0663", "\u0967\u0968", "\uff11\uff12",  # Arabic-Indic, Devanagari, fullwidth digits
    "9" * 400, "9" * 5000, "1" * 20, ".", "1.", ".5", "6m0s", "1h2m3.5s", "-6m", "999999999h", "1e400s", "5µs",
    "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
    "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "2024-02-30T00:00:00Z", "2024-01-01T00:00:00",
    "1714564830", "1714564830000", "99999999999999999999", "\x00", "\u202e5", "5\u200b", "1,2", "5;q=1",
]
_header_values = st.one_of(
    st.sampled_from(NASTY_VALUES),
    st.text(max_size=40),
    st.from_regex(r"[0-9.:+\-eEhmsTZ ,]{0,24}", fullmatch=True),
    st.floats().map(repr),
    st.integers().map(str),
    st.binary(max_size=30),  # raw bytes off the wire, not necessarily UTF-8
)
_header_lists = st.lists(
    st.tuples(st.sampled_from(HINT_HEADERS) | st.text(min_size=1, max_size=12), _header_values), max_size=8
)
_bodies = st.one_of(
    st.binary(max_size=100),
    st.sampled_from([b"", b"{}", b"null", b"[]", b'{"error": null}', b'{"error": {"code": 5}}', b"{" * 5000,
                     b'{"error": {"type": "rate_limit_error", "code": "insufficient_quota"}}',
                     b'{"type": "error", "error": {"type": "overloaded_error"}}']),
    _json_like.map(lambda v: json.dumps(v, default=str).encode()),
)
_nows = st.none() | st.floats(min_value=0, max_value=4e9)


def _response(status: int, headers: list[tuple[str, str | bytes]], body: bytes = b"") -> httpx.Response:
    # Bytes, as they come off the wire: httpx decodes them (UTF-8, else Latin-1) itself.
    raw = [(name.encode("utf-8"), value if isinstance(value, bytes) else value.encode("utf-8"))
           for name, value in headers]
    return httpx.Response(status, headers=raw, content=body)


def _assert_hint(value: float | None) -> None:
    assert value is None or (math.isfinite(value) and 0.0 <= value <= _hints.MAX_HINT), value


@FUZZ
@given(_header_lists, _nows)
def test_hints_from_any_headers_are_none_or_finite_and_capped(
    headers: list[tuple[str, str | bytes]], now: float | None
) -> None:
    response = _response(429, headers)
    for source in (response.headers, headers, dict(headers)):
        hint = _hints.rate_limit_hint(source, now)
        explicit = _hints.explicit_retry_after(source, now)
        rest = _hints.preemptive_cooldown(source, now)
        buckets = _hints.rate_limit_buckets(source, now)
        for value in (hint, explicit, rest, *(reset for _, _, reset in buckets)):
            _assert_hint(value)
        resets = [reset for _, _, reset in buckets]
        spent = [reset for _, remaining, reset in buckets if remaining is not None and remaining <= 0]
        # The hint is the server's explicit wait, else the last spent window, else the soonest reset.
        if explicit is not None:
            assert hint == explicit
        else:
            assert hint == (max(spent) if spent else min(resets) if resets else None)
        # After a success: rest until the LAST spent window resets; never when none is spent.
        assert rest == (max(spent) if spent and max(spent) > 0 else None)
    plain = all(isinstance(value, str) and value.isascii() for _, value in headers)
    if plain and len({name.lower() for name, _ in headers}) == len(headers):
        # Header names differ only in case or container: the same reading. (Non-ASCII values are
        # decoded by httpx in its own way, so they may read differently from the raw pairs.)
        readings = {repr((_hints.rate_limit_hint(source, now), _hints.preemptive_cooldown(source, now)))
                    for source in (headers, dict(headers), response.headers)}
        assert len(readings) == 1, readings


@FUZZ
@given(_header_values, st.floats(min_value=0, max_value=4e9))
def test_header_value_parsers_never_raise(value: str | bytes, reference: float) -> None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")  # as httpx decodes what is not UTF-8
    seconds = _hints.parse_seconds(value)
    duration = _hints.parse_go_duration(value)
    reset = _hints.parse_reset(value, reference)
    retry_after = _hints.parse_retry_after(value, reference)
    for hint in (seconds, duration, reset, retry_after):
        _assert_hint(hint)
    stamp = _hints.parse_timestamp(value)
    assert stamp is None or isinstance(stamp, float)
    if seconds is not None:
        # A plain number is seconds for every reader (below the unix-timestamp range for resets).
        assert duration == seconds and retry_after == seconds
        if float(value.strip().lstrip("+")) < 1e9:
            assert reset == seconds
    if duration is not None and seconds is None:
        assert reset == duration, "a Go duration is a relative reset"


@FUZZ
@given(st.sampled_from([400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 529, 599]),
       _header_lists, _bodies, _nows)
def test_classify_any_error_response_never_raises(status: int, headers: list[tuple[str, str | bytes]], body: bytes,
                                                  now: float | None) -> None:
    failure = co.classify(_response(status, headers, body), now=now)
    assert failure.status == status
    _assert_hint(failure.retry_after)
    assert str(failure)
    assert failure.cools == (failure.kind in COOLING_KINDS)
    if failure.kind not in ("rate_limited", "quota_exhausted", "transient", "model_unavailable"):
        assert failure.retry_after is None, "only kinds that rest a member carry a hint"
    error = httpx.HTTPStatusError("boom", request=httpx.Request("GET", "http://x"),
                                  response=_response(status, headers, body))
    wrapped = co.classify(error, now=now)
    # The exception carries the response: the same evidence, the same meaning.
    assert (wrapped.kind, wrapped.status, wrapped.retry_after, wrapped.code) == (
        failure.kind, failure.status, failure.retry_after, failure.code)


def test_hints_feed_the_store_safely() -> None:
    """Whatever a classified hint is, reporting it keeps the state readable (memory:// backend)."""
    pool_cfg = co.PoolConfig(name="h", members=[co.Member(id="a"), co.Member(id="b")])
    with co.Coordinator("memory://hints", [pool_cfg], prefix="hints") as coord:
        pool = coord.pool("h")
        pool.reset()
        for value in NASTY_VALUES:
            failure = co.classify(_response(429, [("retry-after", value), ("x-ratelimit-reset-tokens", value)]))
            sel = pool.acquire()
            pool.report_failure(sel, failure.kind, retry_after=failure.retry_after)
            pool.unpark(sel.member.id)
        snap = pool.snapshot()
        assert all(m.cooling_until is None or m.cooling_until <= snap.now + _hints.MAX_HINT + 1 for m in snap.members)

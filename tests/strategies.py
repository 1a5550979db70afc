"""Hypothesis strategies shared by the hostile-input tests: strings and JSON-like values that break
naive code."""

from __future__ import annotations

from hypothesis import strategies as st

NASTY_STRINGS = [
    "", " ", "90s", "1h30m", "250ms", "-5s", "5x", "nan", "inf", "-inf", "1e400", "0x10", "\u0661\u0662s", "9" * 5000,
    "sticky", "priority", "round_robin", "wait", "fail", "degraded", "memory://", "redis://127.0.0.1:1/0",
    "acct-1", "a\n", "a\nb", "{x}", "a:b", "a b", "\x00", "\u202eevil", "\u0430", "x" * 200,
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, -1, 0, 1001]),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(NASTY_STRINGS),
)
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)

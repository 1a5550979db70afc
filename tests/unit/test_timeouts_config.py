"""The pool's time limits and recovery settings in Python and in TOML; the timeouts they become."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import coordinator as co
from coordinator.transport import limits


def test_defaults_never_break_real_use() -> None:
    t = co.Timeouts()
    assert (t.connect, t.first_byte, t.first_byte_unary, t.first_token, t.idle, t.deadline) == \
        (5.0, 30.0, None, None, 30.0, None)
    policy = co.CooldownPolicy()
    assert (policy.transient, policy.transient_max, policy.multiplier, policy.overloaded) == (5.0, 60.0, 2.0, 2.0)
    assert policy.max_for("transient") == 60.0 and policy.max_for("rate_limited") == policy.max
    assert co.PoolConfig(name="p", members=[co.Member(id="a")]).wait_for_recovery == 3.0


def test_toml_sets_timeouts_with_none_for_no_limit(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text('''
[pools.openai]
members = [{ id = "a" }]
wait_for_recovery = "1500ms"
timeouts = { first_token = "10s", idle = "20s", first_byte = "none", deadline = "2m" }
cooldown = { transient = "2s", transient_max = "30s" }
''')
    pool = co.load_config(path).pools["openai"]
    assert (pool.timeouts.first_token, pool.timeouts.idle, pool.timeouts.first_byte, pool.timeouts.deadline) == \
        (10.0, 20.0, None, 120.0)
    assert pool.wait_for_recovery == 1.5 and pool.cooldown.max_for("transient") == 30.0


def test_bad_timeouts_are_named() -> None:
    with pytest.raises(ValidationError, match="idle"):
        co.Timeouts(idle="soon")
    with pytest.raises(ValidationError, match="connect"):
        co.Timeouts(connect=-1)


def test_the_sdk_timeout_and_the_deadline_only_ever_shorten_the_pool_limits() -> None:
    sdk = {"connect": 5.0, "read": 600.0, "write": 600.0, "pool": 600.0}
    t = co.Timeouts(connect=2, first_byte=30, idle=10, first_token=3)
    assert limits.header_phase(sdk, t, streaming=True, remaining=None) == \
        {"connect": 2.0, "read": 30.0, "write": 600.0, "pool": 600.0}
    assert limits.header_phase(sdk, t, streaming=False, remaining=None)["read"] == 600.0, "no unary limit"
    assert limits.header_phase({"read": 1.0}, t, streaming=True, remaining=None)["read"] == 1.0, "the SDK's wins"
    assert limits.header_phase(sdk, t, streaming=True, remaining=0.5)["connect"] == 0.5, "the deadline's wins"
    assert limits.body_phase(sdk, t, True, None, timers=True)["read"] == 10.0
    assert limits.body_phase(sdk, t, True, None, timers=False)["read"] == 3.0, "sync: first_token bounds reads"
    assert limits.body_phase(None, co.Timeouts(), False, None, timers=False)["read"] is None

"""Hostile config and ids.

- Config: any value given to ``Config.model_validate``, any file given to ``load_config``, ends in a
  config or in pydantic's ``ValidationError`` / ``co.ConfigError``, never in another exception.
- Ids: whatever could break a Redis key, a hash field, a hash tag, a change notice, a log line or a
  CLI table is rejected with a message that says what is allowed.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
import tomllib
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from redis.crc import key_slot
from strategies import json_like as _json_like
from strategies import scalars as _scalars

import coordinator as co
from coordinator.core.config import ID_PATTERN

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- config fuzzing ----------------------------------------------------------------------------------

_valid_ids = st.from_regex(ID_PATTERN, fullmatch=True)
_members = st.fixed_dictionaries(
    {"id": st.one_of(_scalars, _valid_ids)},
    optional={
        "api_key_env": _scalars, "api_key": _scalars, "model": _scalars, "base_url": _scalars,
        "headers": _json_like, "weight": _scalars, "unknown": _scalars,
    },
)
_cooldowns = st.dictionaries(
    st.sampled_from(["rate_limited", "quota_exhausted", "auth", "transient", "model_unavailable", "min", "max",
                     "multiplier", "transient_threshold", "bogus"]),
    _scalars,
    max_size=5,
)
_pools = st.fixed_dictionaries(
    {},
    optional={
        "members": st.lists(_members, max_size=3) | _json_like,
        "strategy": _scalars,
        "cooldown": _cooldowns | _json_like,
        **{name: _scalars for name in ("name", "failback_after", "probe_timeout", "rotate_for", "auth_header",
                                       "attempts_per_member", "backoff_base", "backoff_cap", "on_exhausted",
                                       "max_wait")},
    },
)
_configs = st.fixed_dictionaries(
    {},
    optional={
        "redis": st.fixed_dictionaries({}, optional={"url": _scalars, "prefix": _scalars}) | _json_like,
        "pools": st.dictionaries(st.text(max_size=8) | st.sampled_from(["openai", "a b", "{x}"]),
                                 _pools | _json_like, max_size=3),
        "extra": _json_like,
    },
)


@FUZZ
@given(st.one_of(_configs, _json_like))
def test_config_validation_raises_only_validation_errors(data: Any) -> None:
    try:
        config = co.Config.model_validate(data)
    except ValidationError as exc:
        assert exc.errors() and all(error["loc"] is not None for error in exc.errors())
        return
    _assert_usable(config)


def _assert_usable(config: co.Config) -> None:
    """What every accepted config guarantees the rest of the library, whatever it was built from."""
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", config.redis.prefix)
    for name, pool in config.pools.items():
        assert name == pool.name and re.fullmatch(ID_PATTERN, name)
        assert pool.members, "a pool has at least one member"
        ids = [member.id for member in pool.members]
        assert len(set(ids)) == len(ids)
        assert all(re.fullmatch(ID_PATTERN, member_id) for member_id in ids)
        assert all(1 <= member.weight <= 1000 for member in pool.members)
        assert pool.strategy in ("sticky", "priority", "round_robin")
        assert pool.on_exhausted in ("wait", "fail", "degraded")
        assert 1 <= pool.attempts_per_member <= 100
        cooldown = pool.cooldown
        durations = [pool.failback_after, pool.probe_timeout, pool.rotate_for, pool.backoff_base, pool.backoff_cap,
                     pool.max_wait, cooldown.min, cooldown.max, *(cooldown.base_for(kind) for kind in (
                         "rate_limited", "quota_exhausted", "auth", "transient", "model_unavailable"))]
        assert all(isinstance(d, float) and math.isfinite(d) and d >= 0 for d in durations), durations
        assert cooldown.min <= cooldown.max
        assert 1.0 <= cooldown.multiplier <= 16.0
    # Accepted once, accepted again unchanged: what a worker validated is what it runs with.
    assert co.Config.model_validate(config.model_dump()) == config


def _toml_value(value: Any) -> str:
    """TOML for a JSON-like value (inline tables only), so structured garbage reaches load_config."""
    if value is None:
        return '""'  # TOML has no null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    pairs = (f"{json.dumps(str(k), ensure_ascii=False)} = {_toml_value(v)}" for k, v in value.items())
    return "{" + ", ".join(pairs) + "}"


def _toml_document(data: Any) -> str:
    if not isinstance(data, dict):
        return f"value = {_toml_value(data)}\n"
    return "".join(f"{json.dumps(str(k), ensure_ascii=False)} = {_toml_value(v)}\n" for k, v in data.items())


_TOML_PIECES = ["[redis]\n", "[pools.p]\n", "[pools.p.cooldown]\n", "[[pools.p.members]]\n", 'url = "', 'prefix = "',
                'members = [{id = "', '"}]\n', 'strategy = "', '"\n', "rate_limited = ", "9" * 5000, "[" * 3000,
                "{a=" * 2000, "= ", "\x00", "\ufeff", "\r\n", '"""', "'''", "inf", "nan", "1979-05-27T07:32:00Z"]
_toml_texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(_TOML_PIECES) | st.text(max_size=10), max_size=12).map("".join),
    _configs.map(_toml_document),
    _json_like.map(_toml_document),
)


def _load_only_config_errors(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    with mock.patch.dict(os.environ):
        os.environ.pop("COORDINATOR_REDIS_URL", None)
        try:
            config = co.load_config(path)
        except co.ConfigError as exc:
            assert str(path) in str(exc)
            return
    # Loaded: exactly what the file says, and usable.
    assert config == co.Config.model_validate(tomllib.loads(content.decode("utf-8")))
    _assert_usable(config)


@FUZZ
@given(st.one_of(_toml_texts.map(lambda t: t.encode("utf-8")), st.binary(max_size=300)))
@example(b"x = " + b"[" * 100_000 + b"]" * 100_000)  # deeper than Python's recursion limit
@example(b"x = " + b"{a=" * 5000 + b"1" + b"}" * 5000)
@example(b"[pools.p]\nmembers = [{id = 'a'}]\nfailback_after = " + b"9" * 5000)  # beyond int() digit limit
@example(b"[pools.p]\nmembers = [{id = 'a'}]\nfailback_after = " + b"9" * 400)  # beyond float range
@example(b"\xff\xfe[redis]")
@example(b"\r")  # a lone CR is not TOML; universal newlines once read it as an empty file
def test_load_config_raises_only_config_errors(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    _load_only_config_errors(tmp_path_factory.getbasetemp() / "fuzz.toml", content)


def test_load_config_of_a_directory_or_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(co.ConfigError, match="cannot read"):
        co.load_config(tmp_path)
    with pytest.raises(co.ConfigError, match="not found"):
        co.load_config(tmp_path / "absent.toml")


# -- ids -------------------------------------------------------------------------------------------------

HOSTILE_IDS = [
    "", "a{b", "a}b", "{a}", "a:b", "a,b", "a|b", "a b", " a", "a ", "a\n", "a\nb", "\na", "a\r", "a\t", "a\x00",
    "a\x7f", "a\u0085", "a\u2028", "a\u200b", "\u200ba", "a\u200d", "a\ufeff", "a\u202e", "\u2066a\u2069",
    # homoglyphs and look-alikes: Cyrillic a, Greek Alpha, fullwidth a, Arabic-Indic one, a combining accent
    "\u0430", "\u0430cct-1", "acct-\u0391", "\uff41", "\u0661", "k\u0301",
    "-a", ".a", "_a", "@a", "+a", "a*", "a?", "a[b]", "a/b", "a\\b", 'a"b', "a'b", "a%b", "a#b", "x" * 129,
]


@pytest.mark.parametrize("bad", HOSTILE_IDS, ids=ascii)
def test_hostile_ids_are_rejected_with_a_clear_error(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"invalid member id .*use 1-128 characters"):
        co.Member(id=bad)
    with pytest.raises(ValidationError, match="invalid pool name"):
        co.PoolConfig(name=bad, members=[co.Member(id="a")])
    path = tmp_path / "coordinator.toml"
    path.write_text(f"[pools.p]\nmembers = [{{ id = {json.dumps(bad)} }}]\n", encoding="utf-8")
    with mock.patch.dict(os.environ):
        os.environ.pop("COORDINATOR_REDIS_URL", None)
        with pytest.raises(co.ConfigError, match=r"pools\.p\.members\.0\.id: .*invalid member id"):
            co.load_config(path)


@pytest.mark.parametrize("bad", ["", "co{rd", "co}rd", "a b", "a\n", "a,b", "a|b", "\u200ba", "-a", "x" * 65],
                         ids=ascii)
def test_hostile_prefixes_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError, match="invalid prefix"):
        co.RedisConfig(prefix=bad)
    with pytest.raises(ValidationError, match="invalid prefix"):
        co.Coordinator("memory://", [], prefix=bad)


_SEPARATORS = set("{}:,| \t\r\n\x00")


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=140), _valid_ids, st.text(alphabet=string.printable, max_size=12)))
def test_an_accepted_id_is_safe_in_every_key_field_and_notice(candidate: str) -> None:
    try:
        member = co.Member(id=candidate)
    except ValidationError:
        return
    member_id = member.id
    assert member_id == candidate
    assert 1 <= len(member_id) <= 128 and member_id.isascii() and member_id.isprintable()
    assert not _SEPARATORS & set(member_id)
    keys = co.KeySchema("coord")
    state, events = keys.pool_keys(member_id)  # a pool named like the id
    # The hash tag is exactly the name: both keys land in the slot of the name alone.
    assert state[state.index("{") + 1 : state.index("}")] == member_id
    assert key_slot(state.encode()) == key_slot(events.encode()) == key_slot(member_id.encode())
    # Fields "<id>:<suffix>" split back unambiguously; a members list "a,b" too; a notice has 4 words.
    assert f"{member_id}:cooling_until".split(":") == [member_id, "cooling_until"]
    assert ",".join([member_id, "other"]).split(",") == [member_id, "other"]
    assert len(f"{member_id} epoch 1 2".split(" ")) == 4


@settings(max_examples=6, deadline=None)
@given(st.lists(_valid_ids, min_size=3, max_size=5, unique=True))
@example(["0", "x" * 128, "a.b_c@d+e-f"])
@example(["Z", "9-", "A+B@C.D_E"])
def test_any_accepted_ids_work_end_to_end(ids: list[str]) -> None:
    pool_cfg = co.PoolConfig(name=ids[0], members=[co.Member(id=i) for i in ids])
    with co.Coordinator("memory://ids", [pool_cfg], prefix="ids", staleness=0) as coord:
        pool = coord.pool(ids[0])
        pool.reset(reason="fresh")
        sel = pool.acquire()
        assert sel.member.id == ids[0]
        assert pool.report_failure(sel, "rate_limited", retry_after=60).active == ids[1]
        pool.park(ids[-1], reason="x")
        assert [m.id for m in pool.snapshot().members] == ids
        assert [e.type for e in pool.events()] == ["reset", "failover", "parked"]



"""Config models and the TOML loader: sensible defaults, clear errors naming the field."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import ValidationError

import coordinator as co


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), (1.5, 1.5), ("90s", 90.0), ("5m", 300.0), ("2h", 7200.0), ("1h30m", 5400.0), ("250ms", 0.25),
     ("1d", 86400.0), (" 10 ", 10.0), ("0", 0.0), ("1.5h", 5400.0)],
)
def test_durations(text, seconds):
    assert co.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "-5s", "-1", "inf", "nan", "1h-5m", "m5", True, None, [1]])
def test_bad_durations_are_rejected(text):
    with pytest.raises(ValueError, match="duration"):
        co.parse_duration(text)


def test_policy_accepts_duration_strings():
    policy = co.CooldownPolicy(rate_limited="90s", auth="10m", max="6h")
    assert (policy.rate_limited, policy.auth, policy.max) == (90.0, 600.0, 21600.0)


def test_policy_min_above_max_is_rejected():
    with pytest.raises(ValidationError, match="larger than max"):
        co.CooldownPolicy(min="2h", max="1h")


@pytest.mark.parametrize("bad", ["", "a b", "a:b", "a,b", "{a}", "a|b", "ä", "a\nb", "-a", "x" * 129, "a\u200bb"])
def test_member_ids_are_validated(bad):
    with pytest.raises(ValidationError, match="member id"):
        co.Member(id=bad)


def test_duplicate_member_ids_are_rejected():
    with pytest.raises(ValidationError, match="appears twice"):
        co.PoolConfig(name="p", members=[co.Member(id="a"), co.Member(id="a")])


def test_pool_needs_members_and_a_known_strategy():
    with pytest.raises(ValidationError, match="members"):
        co.PoolConfig(name="p", members=[])
    with pytest.raises(ValidationError, match="strategy"):
        co.PoolConfig(name="p", members=[co.Member(id="a")], strategy="random")


def test_secret_never_shows_in_repr(monkeypatch):
    monkeypatch.setenv("KEY_ENV", "sk-env-secret")
    member = co.Member(id="a", api_key="sk-inline-secret")
    assert "sk-inline-secret" not in repr(member) and "sk-inline-secret" not in str(member.model_dump())
    assert member.secret() == "sk-inline-secret"
    assert co.Member(id="b", api_key_env="KEY_ENV").secret() == "sk-env-secret"


def write(tmp_path, text):
    path = tmp_path / "coordinator.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_load_config_reads_the_design_example(tmp_path, monkeypatch):
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)
    path = write(
        tmp_path,
        """
        [redis]
        url = "redis://127.0.0.1:6379/0"
        prefix = "coord"

        [pools.openai]
        strategy = "sticky"
        members = [
          { id = "acct-1", api_key_env = "OPENAI_KEY_1" },
          { id = "acct-2", api_key_env = "OPENAI_KEY_2" },
        ]
        cooldown = { rate_limited = "60s", auth = "10m", max = "6h" }
        """,
    )
    cfg = co.load_config(path)
    assert cfg.redis.url == "redis://127.0.0.1:6379/0"
    pool = cfg.pools["openai"]
    assert pool.name == "openai" and [m.id for m in pool.members] == ["acct-1", "acct-2"]
    assert pool.cooldown.auth == 600.0 and pool.cooldown.max == 21600.0


def test_env_overrides_redis_url(tmp_path, monkeypatch):
    path = write(tmp_path, '[redis]\nurl = "redis://x:1/0"\n[pools.p]\nmembers = [{ id = "a" }]\n')
    monkeypatch.setenv("COORDINATOR_REDIS_URL", "memory://env")
    assert co.load_config(path).redis.url == "memory://env"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[pools.p]\nmembers = [{ id = "a b" }]\n', "pools.p.members.0.id"),
        ('[pools.p]\nmembers = [{ id = "a" }]\ncooldown = { auth = "ten minutes" }\n', "pools.p.cooldown.auth"),
        ('[pools.p]\nmembers = [{ id = "a" }]\nstrategy = "best"\n', "pools.p.strategy"),
        ('[pools.p]\nmembers = [{ id = "a", colour = "red" }]\n', "pools.p.members.0.colour"),
        ('[redis]\nprefix = "a b"\n', "redis.prefix"),
        ("[pools.p]\nmembers = [\n", "not valid TOML"),
    ],
)
def test_bad_file_gets_an_error_naming_the_field(tmp_path, text, named):
    with pytest.raises(co.ConfigError, match=named.replace(".", r"\.")) as info:
        co.load_config(write(tmp_path, text))
    assert str(tmp_path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(co.ConfigError, match="not found"):
        co.load_config(tmp_path / "nope.toml")


def test_coordinator_from_config_and_unknown_pool(tmp_path, monkeypatch):
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)
    path = write(tmp_path, '[redis]\nurl = "memory://fromcfg"\n[pools.p]\nmembers = [{ id = "a" }]\n')
    with co.Coordinator.from_config(path) as coord:
        assert coord.pool("p").acquire().member.id == "a"
        with pytest.raises(co.UnknownPoolError, match="unknown pool 'q'"):
            coord.pool("q")


def test_unsupported_url_scheme_is_a_config_error():
    with pytest.raises(co.ConfigError, match="unsupported Redis URL scheme 'http'"):
        co.Coordinator("http://user:pw@127.0.0.1:6379", [])

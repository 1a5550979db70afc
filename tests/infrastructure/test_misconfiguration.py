"""Deterministic misconfiguration is not an outage (docs/security.md, "When Redis misbehaves"): a
wrong or missing password, an unknown user, TLS to a plain port, a missing grant. Redis answers but
refuses, so the coordinator refuses to start with one error naming the problem; ``check()`` says the
same for an ``AsyncCoordinator``; credentials that break later are logged at ERROR (once a minute)
while calls are served locally; ``coordinator status`` exits 2 for a user that cannot run the scripts."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import RedisServer

import coordinator as co
from coordinator.cli.main import main as cli_main

PASSWORD = "pw-" + uuid.uuid4().hex
#: The documented worker user (docs/security.md).
GRANTS = ["~coord:{*", "&coord:changes", "&coord:changes:{*", "+evalsha", "+script|load", "+type", "+time", "+hgetall",
          "+hmget", "+hstrlen", "+hset", "+hdel", "+xadd", "+xtrim", "+publish", "+del", "+xrevrange", "+xread",
          "+subscribe"]


def cfg() -> co.PoolConfig:
    return co.PoolConfig(name="p", members=[co.Member(id=f"k{i}") for i in range(3)])


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer("--requirepass", PASSWORD) as srv:
        yield srv


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client(password=PASSWORD)
    yield client
    client.close()


def user(admin: redis.Redis, name: str, *, without: str = "") -> str:
    admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}",
                          *[g for g in GRANTS if g != without])
    return name


def url(server: RedisServer, userinfo: str = "", scheme: str = "redis") -> str:
    return f"{scheme}://{userinfo}127.0.0.1:{server.port}/0"


def refused(target: str, match: str) -> float:
    """Seconds until the coordinator refused to start with StoreMisconfiguredError matching ``match``."""
    started = time.monotonic()
    with pytest.raises(co.StoreMisconfiguredError, match=match) as info:
        co.Coordinator(target, [cfg()])
    took = time.monotonic() - started
    assert PASSWORD not in str(info.value)
    return took


def test_credentials_refused_stop_the_coordinator_from_starting(server: RedisServer, admin: redis.Redis) -> None:
    user(admin, "coord")
    assert refused(url(server), "requires a password") < 1.0
    assert refused(url(server, ":wrong@"), "refused the credentials") < 1.0
    assert refused(url(server, f"nobody:{PASSWORD}@"), "refused the credentials") < 1.0
    assert refused(url(server, "coord:wrong@"), "refused the credentials") < 1.0
    took = refused(url(server, f"coord:{PASSWORD}@", scheme="rediss"), r"asks for TLS \(rediss://\) but the port")
    assert took < 1.5, f"TLS to a plain port took {took:.1f}s to be told"
    with co.Coordinator(url(server, f"coord:{PASSWORD}@"), [cfg()]) as coord:  # the right ones: it starts
        assert coord.pool("p").acquire().member.id == "k0"


@pytest.mark.parametrize("grant", ["+publish", "+evalsha", "+script|load", "+hset", "+subscribe", "+del",
                                   "&coord:changes"])
def test_a_missing_grant_is_named(server: RedisServer, admin: redis.Redis, grant: str) -> None:
    name = user(admin, f"u{uuid.uuid4().hex[:6]}", without=grant)
    word = grant.lstrip("+&").split("|")[0]
    if grant.startswith("&"):
        word = "PUBLISH"
    refused(url(server, f"{name}:{PASSWORD}@"), f"(?i){word.replace('|', '.')}")

    async def lazily() -> None:
        acoord = co.AsyncCoordinator(url(server, f"{name}:{PASSWORD}@"), [cfg()], staleness=0)
        with pytest.raises(co.StoreMisconfiguredError, match=f"(?i){word}"):
            await acoord.check()
        # Calls are still served (locally): the coordinator is never the reason a call fails.
        assert await acoord.call("p", lambda m: m.id) == "k0"
        await acoord.aclose()

    asyncio.run(lazily())


def test_an_outage_is_not_a_misconfiguration() -> None:
    started = time.monotonic()
    with co.Coordinator("redis://127.0.0.1:1/0", [cfg()]) as coord:  # nothing listens there
        assert coord.call("p", lambda m: m.id) == "k0"
        with pytest.raises(co.StoreUnavailableError):
            coord.check()
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    with co.Coordinator("memory://", [cfg()]) as coord:
        coord.check()
    assert time.monotonic() - started < 0.5, "memory:// stays instant"


def test_credentials_that_break_later_are_logged_at_error_and_calls_go_on(
    server: RedisServer, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator")
    name = user(admin, f"u{uuid.uuid4().hex[:6]}")
    coord = co.Coordinator(url(server, f"{name}:{PASSWORD}@"), [cfg()], staleness=0, probe_interval=0.05,
                           prefix="coord")
    assert coord.call("p", lambda m: m.id) == "k0"
    admin.execute_command("ACL", "SETUSER", name, "resetpass", ">rotated")  # the password changes
    admin.execute_command("CLIENT", "KILL", "USER", name)
    deadline = time.monotonic() + 1.5  # about 30 probes meet the refusal
    calls = 0
    while time.monotonic() < deadline:
        assert coord.call("p", lambda m: m.id) == "k0"
        calls += 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert calls > 5 and len(errors) == 1, [r.getMessage() for r in errors]
    assert "refused the credentials" in errors[0].getMessage() and "docs/security.md" in errors[0].getMessage()
    with pytest.raises(co.StoreMisconfiguredError, match=r"refused the credentials.*park was not applied"):
        coord.pool("p").park("k1")
    coord.close()


def test_cli_status_exits_2_for_a_user_that_cannot_run_the_scripts(
    server: RedisServer, admin: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)
    config = tmp_path / "coordinator.toml"
    config.write_text('[redis]\nurl = "memory://"\nprefix = "coord"\n\n[pools.p]\nmembers = [{ id = "k0" }]\n')
    name = user(admin, f"u{uuid.uuid4().hex[:6]}", without="+evalsha")
    for target, told in ((url(server, f"{name}:{PASSWORD}@"), "evalsha"),
                         (url(server, f"{name}:{PASSWORD}@", scheme="rediss"), "speaks plain Redis")):
        capsys.readouterr()
        started = time.monotonic()
        code = cli_main(["--config", str(config), "--redis", target, "status"])
        took = time.monotonic() - started
        _, err = capsys.readouterr()
        assert code == 2 and told in err and len(err.strip().splitlines()) == 1, err
        assert PASSWORD not in err and took < 2.0, (took, err)

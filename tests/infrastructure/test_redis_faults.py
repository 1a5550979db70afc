"""Redis misbehaving in every way that is not the caller's fault (docs/security.md, "When Redis
misbehaves"): calls never fail, the log says it once per episode, operator actions are refused with
the reason, and what the worker learned meanwhile reaches Redis afterwards. Each test makes its own
redis-server misbehave: maxmemory, a replica of nothing, DEBUG SLEEP, CLIENT PAUSE, a busy script."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from conftest import RedisServer, free_port

import coordinator as co

CALLS = 300


def cfg() -> co.PoolConfig:
    return co.PoolConfig(name="p", members=[co.Member(id=f"k{i}") for i in range(3)])


def serve(coord: co.Coordinator, n: int = CALLS, exhausted: str = "k0") -> tuple[int, dict[str, int]]:
    """``n`` calls whose member ``exhausted`` answers 429; the caller errors, and who served how often."""
    errors, served = 0, {}  # type: tuple[int, dict[str, int]]
    for _ in range(n):
        try:
            member = coord.call("p", lambda m: httpx.Response(429 if m.id == exhausted else 200,
                                                              request=httpx.Request("GET", f"http://x/{m.id}")))
            key = member.request.url.path.strip("/")
            served[key] = served.get(key, 0) + 1
        except Exception:
            errors += 1
    return errors, served


def said(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.WARNING) -> int:
    return sum(text in r.getMessage() and r.levelno >= level for r in caplog.records)


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def cooling_in_redis(raw: redis.Redis, prefix: str, member: str) -> bool:
    until = raw.hget(co.KeySchema(prefix).pool("p"), f"{member}:cooling_until")
    now_ms = raw.time()[0] * 1000
    return until is not None and int(until) > now_ms


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def fill(raw: redis.Redis) -> None:
    """Writes until Redis refuses, then halves maxmemory: well over the limit, Redis refuses every
    write, scripts' included (just at the limit, freed buffers let some through)."""
    for i in range(100_000):
        try:
            raw.set(f"fill:{i}", "x" * 2000)
        except redis.exceptions.OutOfMemoryError:
            raw.config_set("maxmemory", "1mb")
            return
    raise AssertionError("maxmemory was never reached")


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru"])
def test_redis_out_of_memory_fails_no_call_and_heals(policy: str, prefix: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coordinator")
    with RedisServer("--maxmemory", "2mb", "--maxmemory-policy", policy) as server:
        raw = server.client()
        fill(raw)
        # A pool Redis never saw: creating its state is a write, which Redis refuses from now on. (A
        # script whose first write is an HDEL may go on writing: Redis lets a script finish what it began.)
        coord = co.Coordinator(server.url, [cfg()], prefix=prefix, staleness=0, probe_interval=0.2)
        errors, served = serve(coord)
        assert errors == 0 and served == {"k1": CALLS}, "every call served, by k1: k0 cooled locally"
        with pytest.raises(co.StoreUnavailableError, match=r"out of memory.*park was not applied"):
            coord.pool("p").park("k2")
        assert said(caplog, "out of memory") == 1, "one line per episode"
        assert not cooling_in_redis(raw, prefix, "k0"), "Redis refused every write"
        raw.config_set("maxmemory", "0")  # the operator lifts the limit
        wait_for(lambda: serve(coord, 1, exhausted="")[1] != {} and not coord._store.breaker.open)
        assert cooling_in_redis(raw, prefix, "k0"), "the cooldown learned meanwhile was merged into Redis"
        assert said(caplog, "is back") == 1
        coord.close()


def test_a_read_only_replica_and_a_replica_without_master(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coordinator")
    with RedisServer() as server:
        raw = server.client()
        coord = co.Coordinator(server.url, [cfg()], prefix=prefix, staleness=0, probe_interval=0.2)
        assert serve(coord, 3, exhausted="")[0] == 0
        raw.replicaof("127.0.0.1", str(free_port()))  # a master that does not exist: read-only, stale data
        errors, served = serve(coord)
        assert errors == 0 and served == {"k1": CALLS}
        assert said(caplog, "read-only replica") == 1
        raw.config_set("replica-serve-stale-data", "no")  # now even reads answer MASTERDOWN
        coord2 = co.Coordinator(server.url, [cfg()], prefix=prefix, staleness=0, probe_interval=0.2)
        assert serve(coord2, 50)[0] == 0
        assert said(caplog, "link to its master is down") == 1
        raw.replicaof("NO", "ONE")
        wait_for(lambda: serve(coord, 1, exhausted="") == (0, {"k1": 1}) and not coord._store.breaker.open)
        assert cooling_in_redis(raw, prefix, "k0")
        coord.close()
        coord2.close()


def _in_thread(fn: Any) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("stall", ["DEBUG SLEEP", "CLIENT PAUSE", "BUSY script"])
def test_a_stalled_redis_costs_one_timeout_not_a_call(stall: str, prefix: str) -> None:
    with RedisServer("--enable-debug-command", "yes", "--busy-reply-threshold", "100") as server:
        admin = server.client()
        coord = co.Coordinator(server.url, [cfg()], prefix=prefix, staleness=0, probe_interval=0.2, timeout=0.1)
        assert serve(coord, 3, exhausted="")[0] == 0
        if stall == "DEBUG SLEEP":
            thread = _in_thread(lambda: server.client().execute_command("DEBUG", "SLEEP", "1.5"))
        elif stall == "CLIENT PAUSE":
            admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
            thread = _in_thread(lambda: None)
        else:
            def busy() -> None:
                with pytest.raises(redis.ResponseError):  # killed below
                    server.client().eval("while true do end", 0)
            thread = _in_thread(busy)
        time.sleep(0.2)  # let the stall begin: the calls below must meet it
        slowest, errors, served = 0.0, 0, {}  # type: float, int, dict[str, int]
        for _ in range(50):
            started = time.monotonic()
            more, by = serve(coord, 1)
            slowest = max(slowest, time.monotonic() - started)
            errors += more
            served = {k: served.get(k, 0) + by.get(k, 0) for k in {*served, *by}}
        assert errors == 0 and served == {"k1": 50}
        assert slowest < 1.0, f"a call took {slowest:.2f}s: a stalled Redis costs one timeout (0.1 s), not the stall"
        if stall == "BUSY script":
            wait_for(lambda: _kill_script(server))
        thread.join(timeout=10)
        wait_for(lambda: serve(coord, 1, exhausted="") == (0, {"k1": 1}) and not coord._store.breaker.open)
        assert cooling_in_redis(admin, prefix, "k0")
        coord.close()


def _kill_script(server: RedisServer) -> bool:
    try:
        server.client().script_kill()
    except redis.ResponseError:
        return False
    return True


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv

"""Lifecycles that must be safe (docs/design.md, "When Redis is away"): closing within a bounded time,
``asyncio.run()`` with a coordinator left open, a cancelled call's probe lease, one event loop per
async coordinator, forked children (pre-fork servers), and a listener Redis refuses to subscribe."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
import uuid
from typing import Any

import pytest
import redis

import coordinator as co
from tests.helpers import members

FORK = multiprocessing.get_context("fork")


def cfg(**kwargs: Any) -> co.PoolConfig:
    return co.PoolConfig(name="p", members=members(3), **kwargs)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_aclose_is_bounded_and_asyncio_run_never_hangs(redis_url: str, prefix: str) -> None:
    timeout = 0.25
    slowest = 0.0

    async def open_and_close() -> float:
        acoord = co.AsyncCoordinator(redis_url, [cfg()], prefix=prefix, timeout=timeout)
        await acoord.pool("p").acquire()  # starts the listener
        listener = acoord._listener
        assert listener is not None
        for _ in range(500):
            if listener.state.subscribed.is_set():
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await acoord.aclose()
        return time.monotonic() - started

    for _ in range(24):
        slowest = max(slowest, asyncio.run(open_and_close()))
    assert slowest < timeout + 1.0, f"aclose took {slowest:.2f}s"

    async def left_open() -> None:
        acoord = co.AsyncCoordinator(redis_url, [cfg()], prefix=prefix, timeout=timeout)
        await acoord.pool("p").acquire()
        await asyncio.sleep(0.05)  # the listener is waiting for a message when the loop shuts down

    for _ in range(10):
        thread = threading.Thread(target=lambda: asyncio.run(left_open()), daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive(), "asyncio.run() hung on a coordinator left open"


@pytest.mark.parametrize("where", ["redis", "memory"])
def test_close_ends_the_listener_at_once_not_after_its_read(redis_url: str, prefix: str, where: str) -> None:
    # The listener thread waits up to POLL (0.5 s) for a notice; close() cuts that read short, so a
    # worker, a CLI command or a test that closes its coordinator does not wait for it.
    from coordinator.store.notices import POLL

    url = redis_url if where == "redis" else f"memory://{uuid.uuid4().hex}"
    for _ in range(5):
        coord = co.Coordinator(url, [cfg()], prefix=prefix)
        coord.pool("p").acquire()  # starts the listener
        listener = coord._listener
        assert listener is not None
        wait_for(listener.state.subscribed.is_set)
        thread = listener._thread
        assert thread is not None and thread.is_alive()
        started = time.monotonic()
        coord.close()
        took = time.monotonic() - started
        assert not thread.is_alive(), "the listener thread outlived close()"
        assert took < POLL, f"close() took {took:.3f}s: it waited for the listener's read"


def test_a_cancelled_probe_gives_its_lease_back(redis_url: str, prefix: str) -> None:
    policy = co.CooldownPolicy(rate_limited=0.05, min=0.001)

    async def main() -> None:
        acoord = co.AsyncCoordinator(redis_url, [cfg(strategy="priority", cooldown=policy)], prefix=prefix,
                                     staleness=0)
        pool = acoord.pool("p")
        await pool.report_failure(await pool.acquire(), "rate_limited", retry_after=0.05)
        for _ in range(500):  # k0 recovers on server time; the next call probes it
            if (await pool.snapshot()).member("k0").available:
                break
            await asyncio.sleep(0.01)
        started = asyncio.Event()

        async def hang(member: co.Member) -> str:
            if member.id == "k0":
                started.set()
                await asyncio.sleep(3600)
            return member.id

        task = asyncio.create_task(acoord.call("p", hang))
        await asyncio.wait_for(started.wait(), 5)
        assert (await pool.snapshot()).probe_member == "k0", "the call holds the probe lease"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if (await pool.snapshot()).probe_member is None:
                break
            await asyncio.sleep(0.01)
        assert (await pool.snapshot()).probe_member is None, "the lease came back, not after probe_timeout (30 s)"
        assert await acoord.call("p", lambda m: m.id) == "k0", "the next call probes at once"
        await acoord.aclose()

    asyncio.run(main())


def test_one_async_coordinator_belongs_to_one_running_loop(redis_url: str, prefix: str) -> None:
    acoord = co.AsyncCoordinator(redis_url, [cfg()], prefix=prefix)
    # One loop after another (each closed when done): the coordinator follows, with fresh connections.
    assert asyncio.run(acoord.call("p", lambda m: m.id)) == "k0"
    assert asyncio.run(acoord.call("p", lambda m: m.id)) == "k0"
    # Two loops at once: the second is told clearly.
    other = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(target=lambda: (other.call_soon(ready.set), other.run_forever()), daemon=True)
    thread.start()
    ready.wait(5)
    assert asyncio.run_coroutine_threadsafe(acoord.call("p", lambda m: m.id), other).result(5) == "k0"
    with pytest.raises(co.CoordinatorError, match=r"bound to the event loop .* one AsyncCoordinator per event loop"):
        asyncio.run(acoord.call("p", lambda m: m.id))
    asyncio.run_coroutine_threadsafe(acoord.aclose(), other).result(5)
    other.call_soon_threadsafe(other.stop)
    thread.join(5)
    other.close()


def _child_learns_of_a_failover(coord: co.Coordinator, ready: Any, done: Any) -> None:
    pool = coord.pool("p")
    assert pool.acquire().member.id == "k0"  # starts the child's own listener
    listener = coord._listener
    assert listener is not None and listener.state.subscribed.wait(5)
    ready.set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if pool.acquire().member.id == "k1":
            done.put("k1")
            return
        time.sleep(0.01)
    done.put("still k0")


def test_a_forked_child_gets_its_own_listener_and_connections(redis_url: str, prefix: str) -> None:
    coord = co.Coordinator(redis_url, [cfg()], prefix=prefix, staleness=10)
    pool = coord.pool("p")
    assert pool.acquire().member.id == "k0"  # the parent's listener runs
    ready, done = FORK.Event(), FORK.Queue()
    child = FORK.Process(target=_child_learns_of_a_failover, args=(coord, ready, done))
    child.start()
    assert ready.wait(10)
    with co.Coordinator(redis_url, [cfg()], prefix=prefix, staleness=0) as other:
        other.pool("p").report_failure(other.pool("p").acquire(), "quota_exhausted")
    assert done.get(timeout=10) == "k1", "the child learned of the failover from its own listener"
    child.join(10)
    assert child.exitcode == 0
    coord.close()


def _one_call(coord: co.Coordinator, out: Any) -> None:
    out.put(coord.call("p", lambda m: m.id))


def test_forking_while_threads_use_the_client_never_hangs_a_child(redis_url: str, prefix: str) -> None:
    coord = co.Coordinator(redis_url, [cfg()], prefix=prefix, staleness=0)
    stop = threading.Event()

    def busy() -> None:
        pool = coord.pool("p")
        while not stop.is_set():
            pool.report_success(pool.acquire())

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    out = FORK.Queue()
    try:
        for _ in range(20):
            child = FORK.Process(target=_one_call, args=(coord, out))
            child.start()
            child.join(10)
            assert child.exitcode == 0, "a child hung or failed"
            assert out.get(timeout=5) == "k0"
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    coord.close()


def _async_in_child(acoord: co.AsyncCoordinator, out: Any) -> None:
    out.put(asyncio.run(acoord.call("p", lambda m: m.id)))


def test_an_async_coordinator_works_in_a_forked_child(redis_url: str, prefix: str) -> None:
    acoord = co.AsyncCoordinator(redis_url, [cfg()], prefix=prefix)
    assert asyncio.run(acoord.call("p", lambda m: m.id)) == "k0"
    out = FORK.Queue()
    child = FORK.Process(target=_async_in_child, args=(acoord, out))
    child.start()
    child.join(10)
    assert child.exitcode == 0 and out.get(timeout=5) == "k0"


def test_a_user_without_subscribe_costs_one_log_line(redis_url: str, prefix: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coordinator")
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    name, password = f"u{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    grants = [f"~{prefix}:{{*", f"&{prefix}:changes", f"&{prefix}:changes:{{*", "+evalsha", "+script|load", "+time",
              "+hgetall", "+hmget", "+hstrlen", "+hset", "+hdel", "+del", "+xadd", "+xtrim", "+publish", "+xrevrange",
              "+subscribe", "+type"]
    admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *grants)
    host = redis_url.split("://", 1)[1]
    coord = co.Coordinator(f"redis://{name}:{password}@{host}", [cfg()], prefix=prefix, staleness=1)
    pool = coord.pool("p")
    pool.acquire()
    listener = coord._listener
    assert listener is not None and listener.state.subscribed.wait(5)
    drops = []
    real_forget = coord._codecs["p"].view.forget
    coord._codecs["p"].view.forget = lambda: (drops.append(1), real_forget())[1]  # type: ignore[method-assign]
    try:
        admin.execute_command("ACL", "SETUSER", name, "-subscribe")
        admin.execute_command("CLIENT", "KILL", "USER", name)  # the subscription must be made again: refused
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert pool.acquire().member.id == "k0"
            time.sleep(0.01)
        lost = [r for r in caplog.records if "change notices" in r.getMessage()]
        assert len(lost) == 1 and lost[0].levelno == logging.WARNING, [r.getMessage() for r in lost]
        assert len(drops) <= 1, f"local views were dropped {len(drops)} times"
    finally:
        coord.close()
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()

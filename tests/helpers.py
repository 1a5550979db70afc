"""Small builders shared by the tests."""

from __future__ import annotations

import time
from typing import Any

import coordinator as co


def members(n: int, prefix: str = "k") -> list[co.Member]:
    return [co.Member(id=f"{prefix}{i}") for i in range(n)]


def pool_config(n: int = 3, name: str = "p", **kwargs: Any) -> co.PoolConfig:
    return co.PoolConfig(name=name, members=members(n), **kwargs)


def fast_policy(**kwargs: Any) -> co.CooldownPolicy:
    """Cooldowns short enough to lapse within a test (tens of milliseconds)."""
    values: dict[str, Any] = {
        "rate_limited": 0.05,
        "quota_exhausted": 0.05,
        "auth": 0.05,
        "transient": 0.05,
        "model_unavailable": 0.05,
        "min": 0.001,
        "max": 3600,
    }
    values.update(kwargs)
    return co.CooldownPolicy(**values)


def wait_until_available(pool: Any, member_id: str, timeout: float = 5.0) -> None:
    """Waits (bounded) until server time has passed the member's cooldown; a cooldown is time."""
    deadline = time.monotonic() + timeout
    while True:
        state = pool.snapshot().member(member_id)
        if state.available:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{member_id} still unavailable after {timeout}s: {state}")
        ready = state.ready_at or 0
        time.sleep(min(0.05, max(0.001, ready - pool.snapshot().now)))


def event_types(pool: Any) -> list[str]:
    return [e.type for e in pool.events(limit=1000)]


def wait_for(condition: Any, message: str = "condition not met in time", timeout: float = 10.0) -> None:
    """Polls ``condition`` until it is true; fails with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.005)


def join_or_kill(procs: list[Any], timeout: float = 10.0) -> None:
    """Joins each worker process of a multi-process test; one that hangs is killed, not waited on."""
    for p in procs:
        p.join(timeout=timeout)
        if p.is_alive():
            p.kill()

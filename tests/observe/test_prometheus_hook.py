"""``co.PrometheusHook`` on real Redis: what a worker's metrics say about its calls, read back through
prometheus_client's own exposition and parser (and its multiprocess mode, in real processes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from helpers import fast_policy, members
from pydantic import SecretStr

import coordinator as co

from .metrics_text import parse, value

SECRET = "sk-prom-SECRET-0042"
ROOT = Path(__file__).resolve().parents[2]


def answer(status: int) -> httpx.Response:
    headers = {"retry-after": "30"} if status == 429 else {}
    return httpx.Response(status, headers=headers, request=httpx.Request("POST", "http://upstream"))


def pools() -> list[co.PoolConfig]:
    return [
        co.PoolConfig(name="gpt", members=[co.Member(id="k0", api_key=SecretStr(SECRET)), *members(2, "m")],
                      cooldown=fast_policy(rate_limited=30)),
        co.PoolConfig(name="mini", members=members(2, "n"), cooldown=fast_policy(rate_limited=30)),
    ]


def scrape(registry: prometheus_client.CollectorRegistry) -> str:
    return prometheus_client.generate_latest(registry).decode()


def test_attempts_transitions_fallbacks_and_latency(redis_url: str) -> None:
    registry = prometheus_client.CollectorRegistry()
    hook = co.PrometheusHook(registry=registry)
    with co.Coordinator(redis_url, pools(), prefix=f"t{uuid.uuid4().hex[:10]}", staleness=0, hooks=[hook]) as coord:
        # k0 answers 429: it cools, the pool fails over to m0, which serves.
        assert coord.call("gpt", lambda m: answer(429) if m.id == "k0" else "ok") == "ok"
        # m0 is parked, then m1 too: the gpt pool has nothing left and the chain moves on to mini.
        coord.pool("gpt").park("m0")
        coord.pool("gpt").park("m1")
        assert coord.call(["gpt", "mini"], lambda m: "ok") == "ok"
        # A 500 three times on n0, then n1 serves: transient retries are attempts too.
        assert coord.call("mini", lambda m: answer(500) if m.id == "n0" else "ok", sleep=lambda s: None) == "ok"
        failovers = [e for e in coord.pool("gpt").events(limit=100) if e.type == "failover"]

    text = scrape(registry)
    samples = parse(text)
    assert value(samples, "coordinator_attempts_total", pool="gpt", member="k0", outcome="error",
                 kind="rate_limited") == 1
    assert value(samples, "coordinator_attempts_total", pool="gpt", member="m0", outcome="ok", kind="none") == 1
    assert value(samples, "coordinator_attempts_total", pool="mini", member="n0", kind="transient") == 3
    assert value(samples, "coordinator_attempts_total", pool="mini", outcome="ok") == 2
    # The worker counts the failover its own report made: exactly the stream's one entry.
    assert value(samples, "coordinator_transitions_total", pool="gpt", type="failover") == len(failovers) == 1
    assert value(samples, "coordinator_fallbacks_total", from_pool="gpt", pool="mini") == 1
    assert value(samples, "coordinator_call_duration_seconds_count", pool="gpt", outcome="ok") == 2
    assert value(samples, "coordinator_call_duration_seconds_count", pool="mini", outcome="ok") == 1
    assert value(samples, "coordinator_attempt_duration_seconds_count", pool="mini", member="n0") == 4  # 1 ok + 3
    assert SECRET not in text


def test_failed_calls_are_counted_as_errors(redis_url: str) -> None:
    registry = prometheus_client.CollectorRegistry()
    with co.Coordinator(redis_url, pools(), prefix=f"t{uuid.uuid4().hex[:10]}", staleness=0,
                        hooks=[co.PrometheusHook(registry=registry)]) as coord:
        with pytest.raises(co.AllMembersFailedError):
            coord.call("mini", lambda m: answer(429))
        # A 400 is the caller's own mistake, handed back untouched: an error, and no member cools.
        assert coord.call("gpt", lambda m: answer(400)).status_code == 400
    samples = parse(scrape(registry))
    assert value(samples, "coordinator_call_duration_seconds_count", pool="mini", outcome="error") == 1
    assert value(samples, "coordinator_call_duration_seconds_count", pool="gpt", outcome="error") == 1
    assert value(samples, "coordinator_attempts_total", pool="gpt", kind="request") == 1


def test_two_hooks_on_one_registry_share_the_series(redis_url: str) -> None:
    registry = prometheus_client.CollectorRegistry()
    first, second = co.PrometheusHook(registry=registry), co.PrometheusHook(registry=registry)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    for hook in (first, second):
        with co.Coordinator(redis_url, pools(), prefix=prefix, staleness=0, hooks=[hook]) as coord:
            coord.call("mini", lambda m: "ok")
    assert value(parse(scrape(registry)), "coordinator_attempts_total", pool="mini") == 2


def test_fleet_sums_of_transitions_are_exact(redis_url: str) -> None:
    """Four workers (each with its own registry, as separate processes would be) hit the same 429 at
    once: the stream gets one failover and the fleet's counters add up to exactly one."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    registries = [prometheus_client.CollectorRegistry() for _ in range(4)]
    barrier = threading.Barrier(4, timeout=10)

    def fn(member: co.Member) -> Any:
        if member.id == "k0":
            barrier.wait()  # every worker holds k0 before any reports it
            return answer(429)
        return "ok"

    def worker(registry: prometheus_client.CollectorRegistry) -> None:
        with co.Coordinator(redis_url, pools(), prefix=prefix, staleness=0,
                            hooks=[co.PrometheusHook(registry=registry)]) as coord:
            coord.call("gpt", fn)

    threads = [threading.Thread(target=worker, args=(r,)) for r in registries]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    with co.Coordinator(redis_url, pools(), prefix=prefix) as coord:
        stream = [e.type for e in coord.pool("gpt").events(limit=100)]
    fleet = sum(value(parse(scrape(r)), "coordinator_transitions_total", pool="gpt", type="failover")
                for r in registries)
    assert stream.count("failover") == 1
    assert fleet == 1
    assert sum(value(parse(scrape(r)), "coordinator_attempts_total", member="k0") for r in registries) == 4


WORKER = textwrap.dedent("""
    import sys, httpx, prometheus_client
    import coordinator as co
    pool = co.PoolConfig(name="gpt", members=[co.Member(id="k0"), co.Member(id="k1")])
    hook = co.PrometheusHook(registry=prometheus_client.CollectorRegistry())
    with co.Coordinator(sys.argv[1], [pool], prefix=sys.argv[2], staleness=0, hooks=[hook]) as coord:
        for _ in range(int(sys.argv[3])):
            coord.call("gpt", lambda m: "ok")
""")


def test_multiprocess_mode_adds_up_the_workers(redis_url: str, tmp_path: Path) -> None:
    """The README's multiprocess recipe: workers write to PROMETHEUS_MULTIPROC_DIR, one collector reads all."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    for calls in (3, 4):
        subprocess.run([sys.executable, "-c", WORKER, redis_url, prefix, str(calls)], env=env, check=True,
                       timeout=60, capture_output=True)
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    samples = parse(scrape(registry))
    assert value(samples, "coordinator_attempts_total", pool="gpt", outcome="ok") == 7
    assert value(samples, "coordinator_call_duration_seconds_count", pool="gpt") == 7

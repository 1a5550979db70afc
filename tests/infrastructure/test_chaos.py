"""Chaos (docs/design.md, "When Redis is away"): worker processes call a fake upstream through the
transport while Redis is
killed and restarted empty, loses its script cache, drops every client and is paused past the
timeouts. No caller may see an error while a healthy member exists; afterwards every pool has one
active member, every epoch's events step one generation at a time, and no acknowledged park made
after the last state-losing crash is lost. Bounded: about 20 s."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from typing import Any

import httpx
import pytest
import redis
from conftest import RedisServer

import coordinator as co
from coordinator.testing import FakeUpstream

WORKERS = 8
KEYS = ["sk-chaos-1", "sk-chaos-2", "sk-chaos-3", "sk-chaos-4"]
# (seconds after start, action); windows in which Redis is unusable are derived from it.
SCHEDULE: list[tuple[float, str]] = [
    (2.0, "kill"), (3.0, "start"),
    (5.0, "kill"), (5.5, "start"),
    (7.0, "script_flush"),
    (8.0, "park"),
    (9.0, "client_kill"),
    (11.0, "stop"), (12.0, "cont"),
    (14.0, "rotate"),
    (15.0, "client_kill"), (15.2, "script_flush"),
    (17.0, "stop"), (17.8, "cont"),
]
DURATION = 20.0
OUTAGES = [(2.0, 3.0), (5.0, 5.5), (11.0, 12.0), (17.0, 17.8)]


def pool_config() -> co.PoolConfig:
    return co.PoolConfig(name="chaos", members=[co.Member(id=f"acct-{i + 1}", api_key=k) for i, k in enumerate(KEYS)])


def _worker(url: str, prefix: str, upstream: str, start_wall: float, out: Any) -> None:
    coord = co.Coordinator(url, [pool_config()], prefix=prefix, probe_interval=0.2)
    report = {"requests": 0, "errors": 0, "during_outage": 0, "samples": []}
    with httpx.Client(transport=coord.transport("chaos"), base_url=upstream, timeout=10) as client:
        while (now := time.time() - start_wall) < DURATION:
            try:
                response = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
                failed = response.status_code != 200
                detail = f"HTTP {response.status_code} {response.text[:120]}"
            except Exception as exc:
                failed, detail = True, f"{type(exc).__name__}: {exc}"
            report["requests"] += 1
            if any(a <= now < b for a, b in OUTAGES):
                report["during_outage"] += 1
            if failed:
                report["errors"] += 1
                if len(report["samples"]) < 3:
                    report["samples"].append(f"t={now:.1f}s {detail}")
    out.put(report)


def _acknowledged(action) -> Any:
    """An operator retries until Redis acknowledges (it never queues while Redis is away)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return action()
        except co.StoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.slow
def test_chaos_no_caller_error_and_consistent_state_after():
    server = RedisServer()
    prefix = f"chaos{uuid.uuid4().hex[:6]}"
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    with FakeUpstream({KEYS[0]: "quota", KEYS[1]: "ok", KEYS[2]: "ok", KEYS[3]: "ok"}) as upstream:
        operator = co.Coordinator(server.url, [pool_config()], prefix=prefix, staleness=0, local_fallback=False)
        pool = operator.pool("chaos")
        start = time.time() + 1.0
        procs = [ctx.Process(target=_worker, args=(server.url, prefix, upstream.url, start, out))
                 for _ in range(WORKERS)]
        for p in procs:
            p.start()
        parked: dict[str, str] = {}
        try:
            for at, action in SCHEDULE:
                time.sleep(max(0.0, start + at - time.time()))
                raw = redis.Redis(port=server.port, socket_timeout=2)
                if action == "kill":
                    os.kill(server.proc.pid, signal.SIGKILL)
                    server.proc.wait()
                elif action == "start":
                    server.start()
                elif action == "script_flush":
                    raw.script_flush()
                elif action == "client_kill":
                    raw.client_kill_filter(_type="normal", skipme=True)
                elif action == "stop":
                    os.kill(server.proc.pid, signal.SIGSTOP)
                elif action == "cont":
                    os.kill(server.proc.pid, signal.SIGCONT)
                elif action == "park":
                    _acknowledged(lambda: pool.park("acct-4", seconds=3600, reason="chaos park"))
                    parked["acct-4"] = "chaos park"
                elif action == "rotate":
                    result = _acknowledged(lambda: pool.rotate(reason="chaos rotate", seconds=3600))
                    parked[result.member] = "chaos rotate"
                raw.close()
            reports = [out.get(timeout=60) for _ in procs]
        finally:
            if server.proc is not None and server.proc.poll() is None:
                os.kill(server.proc.pid, signal.SIGCONT)
            for p in procs:
                p.join(timeout=30)
        total = sum(r["requests"] for r in reports)
        during = sum(r["during_outage"] for r in reports)
        errors = sum(r["errors"] for r in reports)
        print(f"\nchaos: {total} calls, {during} during outages, {errors} errors; "
              f"upstream saw {dict(upstream.stats.requests)}")
        assert errors == 0, [s for r in reports for s in r["samples"]]
        assert during > 0 and total > 100

        snap = _acknowledged(pool.snapshot)
        assert snap.active in {"acct-1", "acct-2", "acct-3", "acct-4"}
        active_state = snap.member(snap.active)
        assert snap.exhausted or active_state.available, "the one active member can serve"
        for member, reason in parked.items():
            state = snap.member(member)
            assert state.parked and state.reason == reason, f"acknowledged park of {member} was lost"
        by_epoch: dict[str, list[int]] = {}
        for event in pool.events(limit=10_000):
            by_epoch.setdefault(event.epoch, []).append(event.generation)
        for epoch, generations in by_epoch.items():
            assert generations == list(range(generations[0], generations[0] + len(generations))), epoch
        operator.close()
    server.close()

"""``coordinator demo``: a fleet of workers failing over through the transport, against the fake
upstream, with a live view and a summary. Uses only the public API and the fake upstream.

The scenario: account 1 is out of quota (429, reset an hour away), account 2 serves until a third of
the run has passed and then answers 429, account 3 is healthy. A good coordinator moves the whole
fleet 1 -> 2 -> 3 with one event per move, no caller ever sees an error, and hardly any request
reaches a member after the fleet learned it is cooling.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from coordinator import Coordinator, Member, PoolConfig, TransitionEvent
from coordinator.testing import FakeUpstream

DEMO_POOL = "openai"
DEMO_KEYS = ("sk-fake-acct-1", "sk-fake-acct-2", "sk-fake-acct-3")
#: How long account 2 asks to be left alone once it starts answering 429.
SECOND_ACCOUNT_RETRY_AFTER = 30.0


def demo_pool() -> PoolConfig:
    """The demo's pool: three accounts whose fake keys only the fake upstream knows."""
    return PoolConfig(
        name=DEMO_POOL,
        members=[Member(id=f"acct-{i + 1}", api_key=SecretStr(key)) for i, key in enumerate(DEMO_KEYS)],
        attempts_per_member=2,
        backoff_base=0.01,
        backoff_cap=0.1,
    )


def scenario_accounts() -> dict[str, str]:
    return {DEMO_KEYS[0]: "quota", DEMO_KEYS[1]: "ok", DEMO_KEYS[2]: "ok"}


def start_scenario(upstream: FakeUpstream, switch_after: float) -> threading.Timer:
    """Makes account 2 start answering 429 after ``switch_after`` seconds."""
    timer = threading.Timer(
        switch_after, upstream.set, args=(DEMO_KEYS[1], "rate_limited"),
        kwargs={"retry_after": SECOND_ACCOUNT_RETRY_AFTER},
    )
    timer.daemon = True
    timer.start()
    return timer


@dataclass
class WorkerReport:
    requests: int = 0
    errors: int = 0
    #: Seconds from this worker's first request to its last.
    active_seconds: float = 0.0
    transitions: int = 0
    transition_events: int = 0
    error_samples: list[str] = field(default_factory=list)


class _Counter:
    """Counts this worker's transitions: the hook fires only for transitions this worker won."""

    def __init__(self) -> None:
        self.transitions = 0
        self.events = 0
        self._lock = threading.Lock()

    def __call__(self, event: object) -> None:
        if isinstance(event, TransitionEvent):
            with self._lock:
                self.transitions += 1
                self.events += len(event.events)


def run_worker(
    coord: Coordinator,
    pool: str,
    upstream_url: str,
    stop_at: float,
    progress: Any = None,
    slot: int = 0,
) -> WorkerReport:
    """One worker: requests through the transport until ``stop_at`` (monotonic seconds)."""
    report = WorkerReport()
    body = {"model": "gpt-demo", "messages": [{"role": "user", "content": "hello"}]}
    first = time.monotonic()
    with httpx.Client(transport=coord.transport(pool), base_url=upstream_url, timeout=10.0) as client:
        while time.monotonic() < stop_at:
            report.requests += 1
            try:
                response = client.post("/v1/chat/completions", json=body)
                if response.status_code != 200:
                    report.errors += 1
                    if len(report.error_samples) < 5:
                        report.error_samples.append(f"HTTP {response.status_code}: {response.text[:200]}")
            except Exception as exc:  # a caller-visible error is exactly what the demo counts
                report.errors += 1
                if len(report.error_samples) < 5:
                    report.error_samples.append(f"{type(exc).__name__}: {exc}")
            if progress is not None:
                progress[slot * 2] = report.requests
                progress[slot * 2 + 1] = report.errors
    report.active_seconds = time.monotonic() - first
    return report


def _process_worker(url: str, prefix: str, upstream_url: str, stop_at_wall: float, progress: Any, slot: int,
                    out: Any) -> None:
    counter = _Counter()
    coord = Coordinator(url, [demo_pool()], prefix=prefix, hooks=[counter])
    # Each process has its own monotonic clock origin; the parent hands over wall-clock time.
    stop_at = time.monotonic() + (stop_at_wall - time.time())
    report = run_worker(coord, DEMO_POOL, upstream_url, stop_at, progress, slot)
    report.transitions, report.transition_events = counter.transitions, counter.events
    coord.close()
    out.put(asdict(report))


@dataclass
class DemoResult:
    store: str
    workers: int
    duration: float
    requests: int
    errors: int
    transitions: int
    transition_events: int
    events: int
    event_types: list[str]
    requests_to_cooling_member: int
    active: str | None
    requests_per_second: float
    upstream_requests: dict[str, int]
    error_samples: list[str]

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.transition_events == self.events


def run_demo(
    *,
    url: str | None,
    workers: int,
    duration: float,
    on_tick: Callable[[dict[str, Any]], None] | None = None,
) -> DemoResult:
    """Runs the demo: threads on ``memory://`` when ``url`` is None, else one OS process per worker."""
    prefix = f"demo{uuid.uuid4().hex[:8]}"
    store = url or f"memory://demo-{uuid.uuid4().hex[:8]}"
    with FakeUpstream(scenario_accounts()) as upstream:
        counter = _Counter()
        coord = Coordinator(store, [demo_pool()], prefix=prefix, hooks=[counter])
        ctx = multiprocessing.get_context("spawn")
        progress = ctx.Array("q", workers * 2, lock=False)
        reports: list[dict[str, Any]] = []
        started = time.monotonic()
        if url is None:
            stop_at = started + duration
            results: list[WorkerReport] = []
            threads = [
                threading.Thread(target=lambda i=i: results.append(
                    run_worker(coord, DEMO_POOL, upstream.url, stop_at, progress, i)), daemon=True)
                for i in range(workers)
            ]
            start_scenario(upstream, duration / 3)
            for t in threads:
                t.start()
            _watch(coord, progress, workers, started, duration, on_tick, lambda: any(t.is_alive() for t in threads))
            for t in threads:
                t.join()
            # The threads share one coordinator, so its counter holds all their transitions.
            reports = [asdict(r) for r in results]
            reports.append(asdict(WorkerReport(transitions=counter.transitions, transition_events=counter.events)))
        else:
            out = ctx.Queue()
            stop_wall = time.time() + duration + 3.0  # spawning takes a moment; all stop together
            procs = [ctx.Process(target=_process_worker,
                                 args=(url, prefix, upstream.url, stop_wall, progress, i, out), daemon=True)
                     for i in range(workers)]
            for p in procs:
                p.start()
            start_scenario(upstream, 3.0 + duration / 3)
            started = time.monotonic()
            _watch(coord, progress, workers, started, duration + 3.0, on_tick,
                   lambda: any(p.is_alive() for p in procs) and len(reports) < workers, out, reports)
            while len(reports) < workers:
                reports.append(out.get(timeout=30))
            for p in procs:
                p.join(timeout=10)
        elapsed = max(r["active_seconds"] for r in reports)
        pool = coord.pool(DEMO_POOL)
        events = [e for e in pool.events(limit=10_000) if e.type != "created"]
        snap = pool.snapshot()
        coord.close()
        total = sum(r["requests"] for r in reports)
        return DemoResult(
            store="memory (threads)" if url is None else "redis (processes)",
            workers=workers,
            duration=round(elapsed, 2),
            requests=total,
            errors=sum(r["errors"] for r in reports),
            transitions=sum(r["transitions"] for r in reports),
            transition_events=sum(r["transition_events"] for r in reports),
            events=len(events),
            event_types=[e.type for e in events],
            requests_to_cooling_member=upstream.stats.hit_while_cooling,
            active=snap.active,
            requests_per_second=round(total / elapsed, 1) if elapsed > 0 else 0.0,
            upstream_requests={f"acct-{DEMO_KEYS.index(k) + 1}": v for k, v in upstream.stats.requests.items()
                               if k in DEMO_KEYS},
            error_samples=[s for r in reports for s in r["error_samples"]][:5],
        )


def _watch(
    coord: Coordinator,
    progress: Any,
    workers: int,
    started: float,
    duration: float,
    on_tick: Callable[[dict[str, Any]], None] | None,
    running: Callable[[], bool],
    out: Any = None,
    reports: list[dict[str, Any]] | None = None,
) -> None:
    """Feeds the live view four times a second while the workers run."""
    while running():
        if out is not None and reports is not None:
            with contextlib.suppress(Exception):
                while True:
                    reports.append(out.get_nowait())
        if on_tick is not None:
            snap = coord.pool(DEMO_POOL).snapshot()
            requests = sum(progress[i * 2] for i in range(workers))
            errors = sum(progress[i * 2 + 1] for i in range(workers))
            elapsed = max(1e-9, time.monotonic() - started)
            on_tick({
                "elapsed": elapsed,
                "duration": duration,
                "requests": requests,
                "errors": errors,
                "rps": requests / elapsed,
                "active": snap.active,
                "generation": snap.generation,
                "members": [(m.id, m.cooling_until, m.parked, m.cooling_kind) for m in snap.members],
                "now": snap.now,
            })
        time.sleep(0.25)


def run_worker_forever(config_pools: list[PoolConfig], url: str, prefix: str, upstream_url: str,
                       duration: float | None, report: Callable[[str], None]) -> int:
    """``demo --worker``: one worker of a compose fleet, on the config's first pool, printing a line
    every few seconds."""
    counter = _Counter()
    with Coordinator(url, config_pools, prefix=prefix, hooks=[counter]) as coord:
        pool = config_pools[0].name
        end = time.monotonic() + duration if duration else float("inf")
        total = WorkerReport()
        while time.monotonic() < end:
            chunk = run_worker(coord, pool, upstream_url, min(end, time.monotonic() + 5.0))
            total.requests += chunk.requests
            total.errors += chunk.errors
            snap = coord.pool(pool).snapshot()
            report(f"requests={total.requests} errors={total.errors} transitions={counter.transitions} "
                   f"active={snap.active} generation={snap.generation}")
    return 0 if total.errors == 0 else 1


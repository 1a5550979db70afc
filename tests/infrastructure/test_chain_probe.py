"""Chain recovery through one fleet-wide probe: 8 worker processes call a chain [primary, fallback]
while the primary's only member answers 503 for a while, then recovers. During the outage the whole
fleet sends the primary at most one request per cooldown lapse (the probe); every other request is
served by the fallback; after recovery one probe succeeds, one ``recovered`` event is written and
every process is back on the primary within 15 s (cooldowns here: 2, 4, 8 s)."""

from __future__ import annotations

import itertools
import multiprocessing
import time
import uuid
from typing import Any

import httpx

import coordinator as co
from coordinator.testing.upstream import FakeUpstream

PROCESSES = 8
PRIMARY, FALLBACK = "sk-primary-1111", "sk-fallback-2222"
OUTAGE = 8.0
AFTER = 8.0
BASE = 2.0


def _pools() -> list[co.PoolConfig]:
    cooldown = co.CooldownPolicy(transient=BASE, transient_max=16, min=0.001)
    fast = {"backoff_base": 0.01, "backoff_cap": 0.02, "timeouts": co.Timeouts(first_byte_unary=2)}
    return [co.PoolConfig(name="primary", members=[co.Member(id="p1", api_key=PRIMARY)], cooldown=cooldown, **fast),
            co.PoolConfig(name="fallback", members=[co.Member(id="f1", api_key=FALLBACK)], **fast)]


def _worker(redis_url: str, prefix: str, upstream: str, until: float, out: Any) -> None:
    coord = co.Coordinator(redis_url, _pools(), prefix=prefix)
    rows, errors = [], 0
    with httpx.Client(transport=coord.transport(["primary", "fallback"]), base_url=upstream) as client:
        while time.time() < until:
            response = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
            if response.status_code == 200:
                rows.append((time.time(), response.extensions["coordinator"]["pool"]))
            else:
                errors += 1
            time.sleep(0.1)
    out.put((rows, errors))


def test_eight_processes_recover_the_primary_through_one_probe(redis_url):
    prefix = f"probe{uuid.uuid4().hex[:8]}"
    with FakeUpstream({PRIMARY: "unavailable", FALLBACK: "ok"}) as upstream:
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        start = time.time()
        recovery = start + OUTAGE
        procs = [ctx.Process(target=_worker, args=(redis_url, prefix, upstream.url, recovery + AFTER, out))
                 for _ in range(PROCESSES)]
        for p in procs:
            p.start()
        mono_offset = time.time() - time.monotonic()
        while time.time() < recovery:
            time.sleep(0.02)
        upstream.set(PRIMARY, "ok")
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        arrivals = [t + mono_offset for t in upstream.times(PRIMARY)]

    assert sum(errors for _, errors in results) == 0, "the fallback served every request of the outage"
    during = [t for t in arrivals if t < recovery]
    burst_end = during[0] + 1.0  # requests in flight when the first failures cooled the primary
    probes = [t for t in during if t > burst_end]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    print(f"\nprimary requests during the {OUTAGE:g}s outage: {len(during)} ({len(during) - len(probes)} in the "
          f"first 1s, then probes at +{', +'.join(f'{t - start:.2f}' for t in probes)}s)")
    assert len(probes) <= 3, "cooldown lapses at about 2 and 6 s: one probe each"
    assert all(gap >= 0.8 * BASE for gap in gaps), f"at most one primary request per probe interval: {gaps}"

    backs = []
    for rows, _ in results:
        after = [(t, pool) for t, pool in rows if t >= recovery]
        assert after and after[-1][1] == "primary"
        last_fallback = max((t for t, pool in after if pool == "fallback"), default=recovery)
        backs.append(last_fallback - recovery)
    print(f"every process back on the primary {max(backs):.2f}s after its recovery (median "
          f"{sorted(backs)[len(backs) // 2]:.2f}s)")
    assert max(backs) < 15.0

    coord = co.Coordinator(redis_url, _pools(), prefix=prefix)
    types = [e.type for e in coord.pool("primary").events(limit=100)]
    assert types.count("recovered") == 1, types
    assert types.count("exhausted") == 1, types

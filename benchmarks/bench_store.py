"""Figures b and d: an acquire on a cold view against a GET, and script time against pool size."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import coordinator as co

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    PREFIX,
    Section,
    Sizes,
    Table,
    Target,
    bench_pool,
    commandstats,
    interleave,
    log,
    ratio,
    timed,
    us,
)
from _support import (  # noqa: E402
    median,
    percentile,
)

# -- b. acquire on a cold view vs GET ----------------------------------------------------------------


def bench_b(url: str, admin: Any, sizes: Sizes) -> Section:
    section = Section("b", "b. acquire with a cold view (staleness=0: the acquire script) vs a bare GET")
    cfg = bench_pool("bench-b")
    cold = co.Coordinator(url, [cfg], prefix=PREFIX, staleness=0)
    warm = co.Coordinator(url, [cfg], prefix=PREFIX)
    try:
        cold_pool, warm_pool = cold.pool(cfg.name), warm.pool(cfg.name)
        cold_pool.acquire()
        warm_pool.acquire()
        key = f"{PREFIX}:bench-b:plain"
        client = cold.client  # the coordinator's own client: sequential calls reuse one connection
        client.set(key, "x" * 16)
        trivial = client.register_script("return 1")
        variants = {
            "GET (redis-py, same client)": timed(lambda: client.get(key), sizes.b_per_round),
            "EVALSHA of 'return 1' (same client)": timed(lambda: trivial(), sizes.b_per_round),
            "acquire, cold view (staleness=0)": timed(cold_pool.acquire, sizes.b_per_round),
            "acquire, warm view (default staleness)": timed(warm_pool.acquire, sizes.b_per_round),
        }
        for variant in variants.values():
            variant([])
        log("b: interleaved rounds")
        samples = interleave(variants, sizes.b_rounds)

        # Redis' own view of the same calls.
        server: dict[str, float] = {}
        n = sizes.b_per_round * 2
        for name, fn, command in (("GET", lambda: client.get(key), "get"), ("return 1", trivial, "evalsha"),
                                  ("acquire", cold_pool.acquire, "evalsha")):
            admin.config_resetstat()
            for _ in range(n):
                fn()
            server[name] = float(commandstats(admin)[command]["usec_per_call"])
    finally:
        cold.close()
        warm.close()

    get, cold_s, warm_s, trivial_s = (samples["GET (redis-py, same client)"],
                                      samples["acquire, cold view (staleness=0)"],
                                      samples["acquire, warm view (default staleness)"],
                                      samples["EVALSHA of 'return 1' (same client)"])
    base = median(get)
    rows = [[name, str(len(v)), us(median(v)), us(percentile(v, 99)), ratio(median(v) / base)]
            for name, v in samples.items()]
    section.tables.append(Table("Client-side latency per call (ratio = p50 / GET p50)",
                                ["call", "samples", "p50", "p99", "ratio p50"], rows))
    script_us = server["acquire"] - server["return 1"]
    outside_us = (median(cold_s) - median(trivial_s)) / 1000 - script_us
    section.tables.append(Table("Where the cold acquire's time goes (Redis INFO commandstats, usec_per_call)", [
        "part", "time"], [
        ["GET inside Redis", f"{server['GET']:.1f} µs"],
        ["EVALSHA 'return 1' inside Redis (fixed cost of any script call)", f"{server['return 1']:.1f} µs"],
        ["acquire script inside Redis", f"{server['acquire']:.1f} µs"],
        ["acquire, beyond a minimal script call: work inside Redis", f"{script_us:.1f} µs"],
        ["acquire, beyond a minimal script call: outside Redis (client Python, argument and reply bytes)",
         f"{outside_us:.1f} µs"],
    ]))
    section.figures.append(
        f"b. cold acquire {us(median(cold_s))} p50 vs GET {us(base)}: the acquire script works "
        f"{script_us:.0f} µs inside Redis, and the client side adds {outside_us:.0f} µs beyond a minimal "
        f"EVALSHA; warm-view acquire {us(median(warm_s))} ({ratio(median(warm_s) / base)} x GET).")
    r = median(cold_s) / base
    section.targets.append(Target("b. acquire (cold view) / GET, median", ratio(r), "<= 1.5", r <= 1.5))
    section.notes += [
        f"Warm view for contrast: {us(median(warm_s))} p50, {ratio(median(warm_s) / base)} x GET (no round trip).",
        "All calls go through one redis-py client whose connection pool hands the one connection back each time.",
    ]
    return section


# -- d. script time vs pool size -----------------------------------------------------------------------


def _d_one_size(url: str, admin: Any, n: int, calls: int) -> dict[str, tuple[float, float, float]]:
    """Per script: (EVALSHA usec_per_call inside Redis, client-side p50 ns, request bytes per call)."""
    name = f"bench-d-{n}"
    cfg = co.PoolConfig(name=name, members=[co.Member(id=f"m{i:04d}") for i in range(n)],
                        cooldown=co.CooldownPolicy(auth="1h", max="6h"))
    coord = co.Coordinator(url, [cfg], prefix=PREFIX, staleness=0)
    pool = coord.pool(name)
    state_key = coord.keys.pool(name)
    raw = coord.client
    clock = time.perf_counter_ns
    out: dict[str, tuple[float, float, float]] = {}

    def measure(script: str, body: Callable[[], None]) -> None:
        times: list[int] = []
        for _ in range(3):
            body()  # loads the script (the first EVALSHA of a script meets NOSCRIPT) and warms up
        admin.config_resetstat()
        before = int(admin.info("stats")["total_net_input_bytes"])
        for _ in range(calls):
            t = clock()
            body()
            times.append(clock() - t)
        net = int(admin.info("stats")["total_net_input_bytes"]) - before
        stats = commandstats(admin)
        if int(stats["evalsha"]["calls"]) != calls:
            raise RuntimeError(f"{script}: {stats['evalsha']['calls']} script calls, expected {calls}")
        out[script] = (float(stats["evalsha"]["usec_per_call"]), median(times), net / calls)

    try:
        state = {"sel": pool.acquire()}

        # acquire: the read path (sticky, nothing to change).
        measure("acquire", pool.acquire)

        # report_failure: every call cools the active member and moves the pointer (one event); the
        # member's cooldown is then erased by hand (plain HDEL, not a script) so the pool never runs dry.
        def fail() -> None:
            current = state["sel"]
            result = pool.report_failure(current, "auth")
            if not result.transitioned or result.active is None:
                raise RuntimeError(f"report_failure made no transition: {result}")
            gone = current.member.id
            raw.hdel(state_key, f"{gone}:cooling_until", f"{gone}:cooling_kind", f"{gone}:ejections")
            member = cfg.member(result.active)
            assert member is not None
            state["sel"] = co.Selection(pool=name, member=member, epoch=result.epoch, generation=result.generation)

        measure("report_failure", fail)

        # report_success: every call has a failure count to reset (set by a plain HSET beforehand).
        def succeed() -> None:
            current = state["sel"]
            raw.hset(state_key, f"{current.member.id}:failures", 1)
            if not pool.report_success(current).reset:
                raise RuntimeError("report_success reset nothing")

        measure("report_success", succeed)

        # park: an operator parks a member that is not active (one event); unparked by plain HDEL.
        other = next(m.id for m in cfg.members if m.id != state["sel"].member.id)

        def park() -> None:
            pool.park(other, seconds=3600, reason="benchmark")
            raw.hdel(state_key, f"{other}:parked_until", f"{other}:park_reason")

        measure("park", park)
    finally:
        coord.close()
    return out


def bench_d(url: str, admin: Any, sizes: Sizes) -> Section:
    section = Section("d", "d. Script time inside Redis vs pool size (INFO commandstats, EVALSHA usec_per_call)")
    table: dict[str, dict[int, float]] = {s: {} for s in ("acquire", "report_failure", "report_success", "park")}
    client_p50: dict[str, dict[int, float]] = {s: {} for s in table}
    request_bytes: dict[int, float] = {}
    for n, calls in sizes.d_calls.items():
        log(f"d: {n} members, {calls} calls per script")
        for script, (server_us, client_ns, net) in _d_one_size(url, admin, n, calls).items():
            table[script][n] = server_us
            client_p50[script][n] = client_ns
            if script == "acquire":
                request_bytes[n] = net
    sizes_list = list(sizes.d_calls)
    rows = []
    for script, by_size in table.items():
        row = [script] + [f"{by_size[n]:.1f} µs" for n in sizes_list]
        small, large = by_size[sizes_list[0]], by_size[sizes_list[-1]]
        slope = (large - small) / (sizes_list[-1] - sizes_list[0])
        growth = large / small
        row += [f"{slope:.3f} µs", f"{growth:.1f}x for {sizes_list[-1] // sizes_list[0]}x members"]
        rows.append(row)
    section.tables.append(Table("Time inside Redis per script call",
                                ["script"] + [f"{n} members" for n in sizes_list] + ["per added member",
                                                                                    "growth"], rows))
    crow = [[script] + [us(client_p50[script][n]) for n in sizes_list] for script in table]
    crow.append(["request bytes per acquire (INFO total_net_input_bytes)"] +
                [f"{request_bytes[n]:.0f} B" for n in sizes_list])
    section.tables.append(Table("For reference: client-side p50 per call (includes the HSET/HDEL of the setup)",
                                ["script"] + [f"{n} members" for n in sizes_list], crow))
    slopes = [(by[sizes_list[-1]] - by[sizes_list[0]]) / (sizes_list[-1] - sizes_list[0]) for by in table.values()]
    per_script = "; ".join(f"{script} " + " / ".join(f"{by[n]:,.0f}" for n in sizes_list) + " µs"
                           for script, by in table.items())
    section.figures.append(
        f"d. script time inside Redis at {' / '.join(str(n) for n in sizes_list)} members: {per_script} "
        f"({min(slopes):.1f}-{max(slopes):.1f} µs per added member); the acquire request is "
        + " / ".join(f"{request_bytes[n]:.0f}" for n in sizes_list) + " bytes whatever the pool size.")
    linear = all(by[sizes_list[-1]] <= by[sizes_list[0]] * (sizes_list[-1] / sizes_list[0]) for by in table.values())
    worst = max(by[sizes_list[-1]] / by[sizes_list[0]] for by in table.values())
    section.targets.append(Target(f"d. script time growth {sizes_list[0]} -> {sizes_list[-1]} members",
                                  f"at most {worst:.1f}x for {sizes_list[-1] // sizes_list[0]}x members",
                                  "at most linear", linear))
    section.notes += [
        "Each script type runs on its own after CONFIG RESETSTAT; the setup between calls uses plain "
        "HSET/HDEL, which INFO commandstats counts apart from EVALSHA.",
        "report_failure: every call is a real failover (cools the active member, moves the pointer, appends "
        "an event, publishes a notice). report_success: every call resets a failure count. park: every call "
        "parks a member that is not active (one event).",
        "The acquire request size does not depend on the pool size: workers send a membership digest, "
        "not the member list.",
    ]
    return section



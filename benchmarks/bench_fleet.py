"""Figures c and e: fleet convergence after a failover, and throughput and memory."""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import coordinator as co

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _fleet  # noqa: E402
from _common import (  # noqa: E402
    FLEET_WORKERS,
    FULL,
    PREFIX,
    Section,
    Sizes,
    Table,
    Target,
    bench_pool,
    commandstats,
    log,
    ms,
)
from _support import (  # noqa: E402
    RedisServer,
    median,
    percentile,
)

# -- c. fleet convergence ------------------------------------------------------------------------------


def bench_c(url: str, admin: Any, sizes: Sizes, pause: float) -> Section:
    from multiprocessing.connection import wait

    section = Section("c", f"c. Fleet convergence: {FLEET_WORKERS} worker processes looping on acquire")
    ctx = multiprocessing.get_context("spawn")
    transitions = sizes.c_transitions
    members = 2 * transitions + 8
    name = "bench-c"
    raw_channel, raw_key = f"{PREFIX}:raw-notices", f"{PREFIX}:raw-key"
    cfg = _fleet.pool_config(name, members)
    phase = ctx.RawValue("i", _fleet.IDLE)
    deadline = time.time() + 600
    pipes = [ctx.Pipe(duplex=False) for _ in range(2 * FLEET_WORKERS)]
    procs = [ctx.Process(target=_fleet.worker, name=f"fleet-{i}", daemon=True,
                         args=(i, url, PREFIX, name, members, pause, phase, pipes[i][1], deadline))
             for i in range(FLEET_WORKERS)]
    procs += [ctx.Process(target=_fleet.raw_worker, name=f"raw-{i}", daemon=True,
                          args=(i, url, raw_channel, raw_key, pipes[FLEET_WORKERS + i][1], deadline))
              for i in range(FLEET_WORKERS)]
    fleet_in = [r for r, _ in pipes[:FLEET_WORKERS]]
    raw_in = [r for r, _ in pipes[FLEET_WORKERS:]]
    control = co.Coordinator(url, [cfg], prefix=PREFIX, staleness=0)
    pool = control.pool(name)
    channel = control.keys.channel
    loads = {"idle": _fleet.IDLE, "busy": _fleet.BUSY, "paced": _fleet.PACED}
    load_text = {"idle": f"idle (an acquire every {_fleet.IDLE_PAUSE * 1000:g} ms)",
                 "busy": "busy loop (acquire back to back)",
                 "paced": f"paced loop ({pause * 1000:g} ms sleep between acquires)"}
    # One measured variant: (fleet load, who is measured); the coordinator fleet is only measured while
    # it loops, the raw subscribers under every load.
    variants = [("idle", "raw"), ("busy", "raw"), ("busy", "coordinator"), ("paced", "raw"),
                ("paced", "coordinator")]
    # (load, what) -> seconds per transition
    results: dict[tuple[str, str], list[float]] = {}
    misses = 0

    def collect(conns: list[Any], expect: str, timeout: float) -> dict[int, tuple[float, float]]:
        """Per worker: (time it acted, time it received the notice; the same for coordinator workers)."""
        seen: dict[int, tuple[float, float]] = {}
        end = time.monotonic() + timeout
        while len(seen) < len(conns):
            left = end - time.monotonic()
            if left <= 0:
                break
            for ready in wait(conns, timeout=left):
                index, what, at, *received = ready.recv()
                if what == expect:
                    seen[index] = (at, received[0] if received else at)
        return seen

    def record(load: str, what: str, seconds: float) -> None:
        results.setdefault((load, what), []).append(seconds)

    admin.set(raw_key, "x")
    try:
        first = pool.acquire().member.id
        log(f"c: starting {FLEET_WORKERS} coordinator workers and {FLEET_WORKERS} raw subscribers")
        for proc in procs:
            proc.start()
        for _, send in pipes:
            send.close()
        started = len(collect(fleet_in, first, 120)) + len(collect(raw_in, "subscribed", 120))
        if started < 2 * FLEET_WORKERS:
            raise RuntimeError("not every fleet worker started")
        end = time.monotonic() + 30
        while int(dict(admin.pubsub_numsub(channel)).get(channel, 0)) < FLEET_WORKERS:
            if time.monotonic() > end:
                raise RuntimeError("fleet workers did not subscribe to change notices")
            time.sleep(0.01)
        block = 5
        order = list(variants)
        for b in range(0, transitions, block):
            for load, who in order:
                phase.value = loads[load]
                time.sleep(0.3)
                for k in range(min(block, transitions - b)):
                    if who == "raw":
                        payload = f"n{b + k}"
                        t0 = time.time()
                        admin.publish(raw_channel, payload)
                        seen = collect(raw_in, payload, 5.0)
                    else:
                        sel = pool.acquire()
                        t0 = time.time()
                        result = pool.report_failure(sel, "auth")
                        if not result.transitioned or result.active is None:
                            raise RuntimeError(f"expected a transition, got {result}")
                        seen = collect(fleet_in, result.active, 5.0)
                    if len(seen) < FLEET_WORKERS:
                        misses += 1
                        record(load, who, 5.0)
                        if who == "raw":
                            record(load, "raw-receipt", 5.0)
                    else:
                        record(load, who, max(at for at, _ in seen.values()) - t0)
                        if who == "raw":
                            record(load, "raw-receipt", max(got for _, got in seen.values()) - t0)
                    time.sleep(random.uniform(0.02, 0.05))
            order = order[1:] + order[:1]
            log(f"c: {min(b + block, transitions)}/{transitions} transitions per variant")
    finally:
        phase.value = _fleet.STOP
        admin.publish(raw_channel, "stop")
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in fleet_in + raw_in:
            conn.close()
        control.close()

    what_text = {"raw-receipt": "floor: raw subscribers received the PUBLISH",
                 "raw": "floor: raw subscribers received it and made one GET",
                 "coordinator": "coordinator workers: acquire returned the new member"}
    rows = []
    for load in loads:
        for what in ("raw-receipt", "raw", "coordinator"):
            values = results.get((load, what))
            if not values:
                continue
            p99 = percentile(values, 99)
            rows.append([what_text[what], load_text[load], str(len(values)), ms(median(values)), ms(p99),
                         ms(max(values))])
            if what == "coordinator":
                section.targets.append(Target(f"c. fleet convergence p99, {load_text[load]}", ms(p99), "<= 10 ms",
                                              p99 <= 0.010))
    section.tables.append(Table(f"Time from the transition until the last of {FLEET_WORKERS} processes got it",
                                ["what", "fleet load", "transitions", "p50", "p99", "max"], rows))

    def floor(load: str, what: str) -> str:
        values = results[(load, what)]
        return f"{ms(median(values))} / {ms(percentile(values, 99))}"

    section.figures.append(
        f"c. floor on this machine, p50 / p99 (plain redis-py subscribers, no coordinator, under the same "
        f"load): PUBLISH received + one GET {floor('busy', 'raw')} with the fleet in the busy loop, "
        f"{floor('paced', 'raw')} in the paced loop, {floor('idle', 'raw')} idle; PUBLISH received alone "
        f"{floor('paced', 'raw-receipt')} in the paced loop.")
    section.notes += [
        f"{FLEET_WORKERS} spawned OS processes, each with its own Coordinator (default staleness, change "
        "notices on), loop on pool.acquire(); the parent cools the active member (report_failure 'auth') "
        "and takes time.time() just before the call; each worker takes time.time() when its acquire first "
        "returns the new member; convergence = latest worker - transition time.",
        f"Floor: {FLEET_WORKERS} more processes, plain redis-py subscribers blocked on a channel; the parent "
        "PUBLISHes, each notes the time of receipt, makes one GET (as a notify-and-refetch design must) and "
        "notes the time again. They are measured under the same fleet load as the coordinator rows "
        "(the coordinator workers kept looping meanwhile), so the gap between the rows is the coordinator's.",
        "The variants run in rotating blocks of 5 transitions, so machine noise spreads over all of them. "
        "Percentiles are nearest-rank: with 30 transitions, p99 is the slowest one.",
        f"A transition not converged within 5 s is recorded as 5 s; there were {misses}.",
        f"The machine has {os.cpu_count()} cores: the busy loop keeps {FLEET_WORKERS} CPU-bound processes "
        "runnable besides Redis and the parent, so every step (Redis, each listener thread, each refetch) waits "
        "for a core; the paced loop is a worker that mostly waits, as workers waiting on LLM calls do.",
    ]
    return section


# -- e. throughput and memory --------------------------------------------------------------------------


def _cpu(admin: Any) -> float:
    info = admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def bench_e_throughput(url: str, admin: Any, sizes: Sizes) -> Section:
    section = Section("e", "e. Throughput of acquire + report_success, and Redis memory")
    cfg = bench_pool("bench-e")
    warm = co.Coordinator(url, [cfg], prefix=PREFIX)
    cold = co.Coordinator(url, [cfg], prefix=PREFIX, staleness=0)
    pools = {"warm view (default staleness)": warm.pool(cfg.name), "cold view (staleness=0)": cold.pool(cfg.name)}
    totals = {name: {"ops": 0.0, "wall": 0.0, "cpu": 0.0, "redis": 0.0} for name in pools}
    try:
        for pool in pools.values():
            pool.report_success(pool.acquire())
        log("e: throughput, interleaved rounds")
        admin.config_resetstat()
        names = list(pools)
        for r in range(sizes.e_rounds):
            for name in names if r % 2 == 0 else reversed(names):
                pool = pools[name]
                gc.collect()
                redis_before = _cpu(admin)
                cpu0, wall0 = time.process_time(), time.perf_counter()
                end = wall0 + sizes.e_seconds
                ops = 0
                while True:
                    for _ in range(50):
                        pool.report_success(pool.acquire())
                    ops += 50
                    if time.perf_counter() >= end:
                        break
                totals[name]["wall"] += time.perf_counter() - wall0
                totals[name]["cpu"] += time.process_time() - cpu0
                totals[name]["redis"] += _cpu(admin) - redis_before
                totals[name]["ops"] += ops
        scripts = commandstats(admin).get("evalsha", {})
    finally:
        warm.close()
        cold.close()
    cold_ops = totals["cold view (staleness=0)"]["ops"]
    section.notes.append(
        f"Inside Redis (INFO commandstats) the cold pairs made {float(scripts.get('calls', 0)) / cold_ops:.2f} "
        f"script calls per pair, {float(scripts.get('usec', 0)) / cold_ops:.1f} µs of script time per pair; "
        "the rest of Redis' CPU per pair is socket and event-loop work.")
    rows = []
    for name, t in totals.items():
        rows.append([name, f"{t['ops'] / t['wall']:,.0f}", f"{t['ops'] / t['cpu']:,.0f}",
                     f"{t['redis'] / t['ops'] * 1e6:.1f} µs"])
        section.figures.append(f"e. acquire + report_success, {name}: {t['ops'] / t['wall']:,.0f} pairs/s on one "
                               f"thread ({t['ops'] / t['cpu']:,.0f} per client CPU-second), "
                               f"{t['redis'] / t['ops'] * 1e6:.1f} µs of Redis CPU per pair.")
    section.tables.append(Table("acquire + report_success, one thread of one process",
                                ["view", "per second (wall)", "per client CPU-second (one core)",
                                 "Redis CPU per pair"], rows))
    section.notes.append("One thread; 'per client CPU-second' divides by the process's own CPU time, i.e. what "
                         "one fully used core sustains. A cold pair is two script calls (acquire, report_success).")
    return section


def bench_e_memory(sizes: Sizes, section: Section) -> None:
    n_pools, n_members = sizes.e_pools, sizes.e_members
    log(f"e: memory, {n_pools:,} pools of {n_members} members (fresh redis-server)")
    with RedisServer() as server:
        admin = server.client()
        build = time.perf_counter()
        cfgs = [co.PoolConfig(name=f"p{i:05d}", members=[co.Member(id=f"member-{j:02d}") for j in range(n_members)])
                for i in range(n_pools)]
        wide_cfgs = [co.PoolConfig(name=f"w{i:03d}", members=[co.Member(id=f"member-{j:02d}")
                                                              for j in range(2 * n_members)]) for i in range(50)]
        worn_cfgs = [co.PoolConfig(name=f"x{i:03d}", members=[co.Member(id=f"member-{j:02d}")
                                                              for j in range(n_members)]) for i in range(20)]
        coord = co.Coordinator(server.url, cfgs + wide_cfgs + worn_cfgs, prefix=PREFIX, staleness=0)
        keys = coord.keys
        try:
            gc.collect()
            before = int(admin.info("memory")["used_memory"])
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=4) as pool_exec:
                list(pool_exec.map(lambda c: coord.pool(c.name).acquire(), cfgs, chunksize=64))
            fill = time.perf_counter() - started
            after = int(admin.info("memory")["used_memory"])
            dbsize = int(admin.dbsize())
            sample = random.Random(6).sample(cfgs, min(200, len(cfgs)))

            def usage(key: str) -> int:
                return int(admin.memory_usage(key, samples=0) or 0)

            hash_usage = [usage(keys.pool(c.name)) for c in sample]
            stream_usage = [usage(keys.events(c.name)) for c in sample]
            encoding = admin.object("encoding", keys.pool(sample[0].name))
            fields = int(admin.hlen(keys.pool(sample[0].name)))
            for c in wide_cfgs:
                coord.pool(c.name).acquire()
            wide_usage = [usage(keys.pool(c.name)) for c in wide_cfgs]
            # Pools after a busy day: every member but the last failed over once (19 events).
            for c in worn_cfgs:
                p = coord.pool(c.name)
                for _ in range(n_members - 1):
                    p.report_failure(p.acquire(), "auth")
            worn_hash = [usage(keys.pool(c.name)) for c in worn_cfgs]
            worn_stream = [usage(keys.events(c.name)) for c in worn_cfgs]
            worn_encoding = admin.object("encoding", keys.pool(worn_cfgs[0].name))
        finally:
            coord.close()
            admin.close()
    build_s = started - build
    per_pool = (after - before) / n_pools
    per_member_marginal = (median(wide_usage) - median(hash_usage)) / n_members
    rows = [
        ["pools created (one acquire each)", f"{n_pools:,} ({dbsize:,} keys) in {fill:.1f} s, 4 threads"],
        ["INFO used_memory delta / pools", f"{per_pool:,.0f} B per pool = {per_pool / n_members:,.0f} B per member"],
        ["MEMORY USAGE pool hash (fresh, median of sample)",
         f"{median(hash_usage):,.0f} B ({fields} fields, encoding {encoding})"],
        ["MEMORY USAGE event stream (fresh: the 'created' event)", f"{median(stream_usage):,.0f} B"],
        [f"marginal bytes per member (hash of {2 * n_members} vs {n_members} members)",
         f"{per_member_marginal:,.0f} B"],
        [f"after {n_members - 1} failovers: pool hash / event stream",
         f"{median(worn_hash):,.0f} B (encoding {worn_encoding}) / {median(worn_stream):,.0f} B"],
    ]
    if n_pools != FULL.e_pools:
        rows.append([f"extrapolated to {FULL.e_pools:,} pools (linear)",
                     f"{per_pool * FULL.e_pools / 2 ** 20:,.1f} MiB"])
    else:
        rows.append([f"total for {n_pools:,} pools", f"{(after - before) / 2 ** 20:,.1f} MiB"])
    section.tables.append(Table(f"Redis memory, {n_pools:,} pools of {n_members} members", ["what", "value"], rows))
    scale = "" if n_pools == FULL.e_pools else f" (measured on {n_pools:,} pools, extrapolated linearly)"
    section.figures.append(
        f"e. Redis memory for {FULL.e_pools:,} pools of {n_members} members: "
        f"{per_pool * FULL.e_pools / 2 ** 20:,.1f} MiB{scale}, {per_pool:,.0f} B per pool = "
        f"{per_pool / n_members:,.0f} B per member (INFO used_memory); MEMORY USAGE of a fresh pool: hash "
        f"{median(hash_usage):,.0f} B + event stream {median(stream_usage):,.0f} B; each further member "
        f"adds {per_member_marginal:,.0f} B to a fresh hash.")
    section.notes.append(f"Building the {n_pools:,} PoolConfig objects took {build_s:.1f} s (not Redis).")



"""Figure f: how large a fleet one Redis core carries, from the real scripts at modelled fleet rates.

    python benchmarks/capacity.py            # single server and a 3-master Cluster, about two minutes
    python benchmarks/capacity.py --quick    # fewer calls
    python benchmarks/capacity.py --no-cluster
    python benchmarks/capacity.py --packaging  # also EVALSHA vs a Redis Function library, same calls

The fleet model (docs/design.md, "The local view", "Failure counts"): W workers, each using P pools
and sending R requests per second, a fraction F of which fail (transient, none two in a row on one
worker but with probability F); each pool is shared by S workers (its notice subscribers). A healthy
worker sends Redis nothing for a request that succeeds on the view's decision. Per failure it sends
one ``report_failure``, which only counts (the worker served there since its last report, so the count
restarts): no notice, no version, its view stays, no acquire after it and no success report later.
A failure cools the member only when the count reaches the threshold N (3): with the retry failing
too, F^(N-1) of failures; each such cooldown is a failover (report_failure: event, notice to S
workers, whose notices carry the new decision), the reporter's cold acquire, and later one
``report_success`` that decays the ejection count (notice to S). Besides, every worker re-reads its
pools once per ``SAFETY_STALENESS`` (5 minutes): one pipelined ``HMGET epoch version`` per pool in
one round trip, and an acquire for each pool whose version moved meanwhile.

Each cost is measured inside Redis (``INFO cpu`` of the server process before and after N calls of
one kind, issued one per round trip like workers do), so the driver's own speed does not matter:
script costs with no subscriber, and the cost of one notice delivery with real subscriber
connections. The largest W below 50% of one core follows from the rates; then the whole mix is driven
at a known rate for a few seconds and the measured CPU is compared with the prediction. On Cluster
the same costs are measured on 3 masters (pools spread over the slots, sharded notices), and a
fleet's load is split over the masters as its pools are.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

import coordinator as co
from coordinator.rules.view import SAFETY_STALENESS
from coordinator.store.scripts import script_source
from coordinator.testing import RedisServer

PREFIX = "cap"
MEMBERS = 5
#: Every call measured must be Redis': a slow reply raises instead of being served by the local
#: stand-in (which would hide its cost), and a loaded machine gets a long timeout.
HONEST: dict[str, Any] = {"timeout": 5.0, "local_fallback": False}


@dataclass(frozen=True)
class Model:
    pools_per_worker: int = 100
    requests_per_second: float = 50.0
    failure_rate: float = 0.01
    workers_per_pool: int = 10
    threshold: int = 3

    def rates(self, workers: int) -> dict[str, float]:
        failures = workers * self.requests_per_second * self.failure_rate
        cooldowns = failures * self.failure_rate ** (self.threshold - 1)
        pools_total = workers * self.pools_per_worker / self.workers_per_pool
        # A pool whose version moved since the last re-read (two decisive writes per cooldown).
        changed = min(1.0, 2 * cooldowns / pools_total * SAFETY_STALENESS) if pools_total else 0.0
        rereads = workers / SAFETY_STALENESS
        return {
            "report_failure": failures - cooldowns,
            "cooldown": cooldowns,
            "reread": rereads,
            "acquire": rereads * self.pools_per_worker * changed,
            "delivery": 2 * cooldowns * self.workers_per_pool,
        }

    def cpu(self, workers: int, costs: dict[str, float]) -> float:
        """Seconds of Redis CPU per second."""
        return sum(rate * costs[kind] for kind, rate in self.rates(workers).items())

    def largest(self, costs: dict[str, float], budget: float = 0.5) -> int:
        low, high = 0, 10_000_000
        while low < high:
            mid = (low + high + 1) // 2
            if self.cpu(mid, costs) <= budget:
                low = mid
            else:
                high = mid - 1
        return low


def cpu_seconds(nodes: list[redis.Redis]) -> float:
    total = 0.0
    for node in nodes:
        info = node.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def pools(count: int, fast_cooldowns: bool = False) -> list[co.PoolConfig]:
    # The default threshold (3). fast_cooldowns: an auth failure cools for 1 ms, so the pointer comes
    # round again and a cooldown can be measured over and over on the same pools.
    policy = co.CooldownPolicy(auth=0.001, min=0.001) if fast_cooldowns else co.CooldownPolicy()
    return [co.PoolConfig(name=f"pool{i}", members=[co.Member(id=f"m{j}") for j in range(MEMBERS)],
                          cooldown=policy) for i in range(count)]


def measure(nodes: list[redis.Redis], fn: Callable[[int], None], n: int) -> float:
    """Redis CPU seconds per call of ``fn(i)``, the median of three runs of n calls."""
    results = []
    for _ in range(3):
        before = cpu_seconds(nodes)
        for i in range(n):
            fn(i)
        results.append((cpu_seconds(nodes) - before) / n)
    return sorted(results)[1]


def _subscriber(port: int, channel: str, count: int, ready: Any, stop: Any) -> None:
    """``count`` raw subscriber connections that read (and drop) everything until told to stop."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"*2\r\n$9\r\nSUBSCRIBE\r\n${len(channel)}\r\n{channel}\r\n".encode())
        socks.append(s)
    for s in socks:
        s.recv(4096)
    ready.set()
    import selectors

    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.1):
            with contextlib.suppress(BlockingIOError):
                key.fileobj.recv(65536)  # type: ignore[union-attr]


def delivery_cost(port: int, node: redis.Redis, subscribers: int, n: int) -> float:
    """Redis CPU seconds per delivered notice: PUBLISH to ``subscribers`` connections, minus PUBLISH
    to none."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_subscriber, args=(port, "cap:fanout", subscribers, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("subscribers did not connect")
        notice = "pool0 0123456789abcdef 12 34 m1 m0"
        with_subs = measure([node], lambda i: node.publish("cap:fanout", notice), n)
        without = measure([node], lambda i: node.publish("cap:nobody", notice), n)
    finally:
        stop.set()
        proc.join(10)
    return max(0.0, with_subs - without) / subscribers


def script_costs(url: str, nodes: list[redis.Redis], n: int, pool_count: int,
                 pools_per_worker: int) -> dict[str, float]:
    """Redis CPU seconds per unit of each kind the fleet model sends."""
    configs = pools(pool_count)
    with co.Coordinator(url, configs, prefix=PREFIX, staleness=0, legacy_notices=False, **HONEST) as coord:
        handles = [coord.pool(cfg.name) for cfg in configs]
        selections = [pool.acquire() for pool in handles]  # creates and stamps every pool

        def count_only(i: int) -> None:
            # What a worker sends for a failure: it served there since its last report (noted locally,
            # no round trip), so the count restarts; below the threshold, no notice, no version.
            pool, sel = handles[i % pool_count], selections[i % pool_count]
            pool.quiet_success(sel)
            result = pool.report_failure(sel, "transient")
            assert not result.cooled and result.failures == 1

        costs = {
            "acquire": measure(nodes, lambda i: handles[i % pool_count].acquire(), n),
            "report_failure": measure(nodes, count_only, n),
        }
        keys = [co.KeySchema(PREFIX).pool(cfg.name) for cfg in configs]

        def reread(i: int) -> None:
            # One worker's safety re-read: an HMGET per pool it uses, pipelined in one round trip.
            pipe = coord.client.pipeline(transaction=False)
            for k in range(pools_per_worker):
                pipe.hmget(keys[(i + k) % pool_count], "epoch", "version")
            pipe.execute()

        costs["reread"] = measure(nodes, reread, max(20, n // 20))
    fast = pools(pool_count, fast_cooldowns=True)
    with co.Coordinator(url, fast, prefix=PREFIX + "f", staleness=0, legacy_notices=False, **HONEST) as coord:
        handles = [coord.pool(cfg.name) for cfg in fast]
        for pool in handles:
            pool.acquire()

        def cooldown(i: int) -> None:
            # A failure that reaches the threshold: the failover (event, notice), the reporter's cold
            # acquire, and the success that later decays the cooled member's ejection count (notice).
            pool = handles[i % pool_count]
            sel = pool.acquire()
            result = pool.report_failure(sel, "auth")
            assert result.transitioned
            pool.report_success(sel)

        time.sleep(0.01)
        costs["cooldown"] = measure(nodes, cooldown, max(50, n // 4))
    return costs


def drive(url: str, nodes: list[redis.Redis], model: Model, costs: dict[str, float], seconds: float,
          pool_count: int) -> tuple[float, float, float]:
    """Drives the model's mix (count-only failure reports and re-reads, in the model's proportion) as
    fast as one client goes for ``seconds``; returns the calls per second reached, the measured Redis
    CPU share and the one predicted from the per-unit costs."""
    configs = pools(pool_count)
    weights = model.rates(1000)
    per_reread = max(1, round(weights["report_failure"] / weights["reread"]))
    with co.Coordinator(url, configs, prefix=PREFIX + "d", staleness=0, legacy_notices=False, **HONEST) as coord:
        handles = [coord.pool(cfg.name) for cfg in configs]
        selections = [pool.acquire() for pool in handles]
        keys = [co.KeySchema(PREFIX).pool(cfg.name) for cfg in configs]
        calls = {"report_failure": 0, "reread": 0}
        before, started = cpu_seconds(nodes), time.perf_counter()
        i = 0
        while time.perf_counter() - started < seconds:
            pool, sel = handles[i % pool_count], selections[i % pool_count]
            pool.quiet_success(sel)
            pool.report_failure(sel, "transient")
            calls["report_failure"] += 1
            if i % per_reread == 0:
                pipe = coord.client.pipeline(transaction=False)
                for k in range(model.pools_per_worker):
                    pipe.hmget(keys[(i + k) % pool_count], "epoch", "version")
                pipe.execute()
                calls["reread"] += 1
            i += 1
            if i % 1000 == 0:
                time.sleep(0.01)  # let the driver's own process breathe: Redis shares the two cores
        elapsed = time.perf_counter() - started
        used = (cpu_seconds(nodes) - before) / elapsed
    predicted = sum(calls[k] * costs[k] for k in calls) / elapsed
    return sum(calls.values()) / elapsed, used, predicted


@contextlib.contextmanager
def cluster() -> Iterator[tuple[str, list[RedisServer]]]:
    nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--cluster-node-timeout", "2000") for _ in range(3)]
    try:
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while redis.Redis(port=nodes[0].port, decode_responses=True).cluster("info").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not become ok")
            time.sleep(0.05)
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes), nodes
    finally:
        for node in nodes:
            node.close()


def run(quick: bool, with_cluster: bool, model: Model) -> list[str]:
    n = 600 if quick else 2000
    pool_count = 100
    lines = [f"model: P={model.pools_per_worker} pools per worker, R={model.requests_per_second:g} requests/s per "
             f"worker, F={model.failure_rate:.0%} failures, S={model.workers_per_pool} workers per pool, "
             f"safety refresh every {SAFETY_STALENESS:g} s"]
    with RedisServer() as server:
        node = redis.Redis(port=server.port, decode_responses=True)
        costs = script_costs(server.url, [node], n, pool_count, model.pools_per_worker)
        costs["delivery"] = delivery_cost(server.port, node, 200, n)
        best = model.largest(costs)
        rate, used, predicted = drive(server.url, [node], model, costs, 3.0 if quick else 6.0, pool_count)
        node.close()
    lines.append("single redis-server, Redis CPU per call: " + ", ".join(
        f"{k} {v * 1e6:.1f} µs" for k, v in costs.items() if True))
    lines.append(f"single: largest fleet below 50% of one core: W = {best:,} workers "
                 f"({best * model.pools_per_worker:,} worker-pools); at W = 10,000: "
                 f"{model.cpu(10_000, costs):.0%} of a core")
    for kind, r in model.rates(best).items():
        lines.append(f"  at W = {best:,}: {kind} {r:,.0f}/s = {r * costs[kind]:.1%} of a core")
    lines.append(f"single, driven mix: {rate:,.0f} calls/s from one client: Redis CPU {used:.1%} measured, "
                 f"{predicted:.1%} predicted from the per-call costs")
    if with_cluster:
        with cluster() as (url, servers):
            nodes = [redis.Redis(port=s.port, decode_responses=True) for s in servers]
            ccosts = script_costs(url, nodes, n, pool_count, model.pools_per_worker)
            ccosts["delivery"] = costs["delivery"]  # a sharded delivery costs its one shard the same
            # The pools spread over three masters: each master carries a third of the fleet's load.
            per_master = {k: v / 3 for k, v in ccosts.items()}
            cbest = model.largest(per_master)
            for c in nodes:
                c.close()
        lines.append("3-master Cluster, Redis CPU per call (all masters): " + ", ".join(
            f"{k} {v * 1e6:.1f} µs" for k, v in ccosts.items() if k != "delivery"))
        lines.append(f"cluster: largest fleet with every master below 50% of one core: W = {cbest:,} workers "
                     "(pools spread evenly over the slots; sharded notices stay on their shard); at W = 10,000: "
                     f"{model.cpu(10_000, per_master):.0%} of each master")
    return lines


def growth(quick: bool, sizes: tuple[int, ...] = (3, 20, 200, 1000)) -> list[str]:
    """Script time inside Redis (INFO commandstats usec_per_call of EVALSHA) by pool size, the sizes
    interleaved in rounds (order rotating) so machine drift hits all alike; medians over rounds."""
    rounds, per_round = (5, 100) if quick else (15, 200)
    lines = []
    with RedisServer() as server:
        node = redis.Redis(port=server.port, decode_responses=True)
        configs = [co.PoolConfig(name=f"g{n}", members=[co.Member(id=f"member-{j:04d}") for j in range(n)])
                   for n in sizes]
        with co.Coordinator(server.url, configs, prefix="grow", staleness=0, **HONEST) as coord:
            handles = {n: coord.pool(f"g{n}") for n in sizes}
            selections = {}
            for n, pool in handles.items():
                # A little history, as pools have: the first member cooled, the pointer on the second.
                pool.report_failure(pool.acquire(), "rate_limited", retry_after=3600)
                selections[n] = pool.acquire()
            kinds: dict[str, Callable[[int], None]] = {
                "acquire": lambda n: handles[n].acquire(),
                "report_failure (stale token)": lambda n: handles[n].report_failure(
                    co.Selection(pool=f"g{n}", member=selections[n].member, epoch="old", generation=1), "auth"),
                "report_success (nothing to reset)": lambda n: handles[n].report_success(selections[n]),
            }
            samples: dict[tuple[str, int], list[float]] = {(k, n): [] for k in kinds for n in sizes}
            # Client side: a cold acquire against a bare GET on the same client and connection.
            client_ns: dict[str, list[int]] = {"GET": [], **{f"acquire {n}": [] for n in sizes}}
            coord.client.set("grow-get", "x")
            for r in range(rounds):
                for label in list(client_ns)[r % len(client_ns):] + list(client_ns)[:r % len(client_ns)]:
                    n = int(label.split()[1]) if label != "GET" else 0
                    for _ in range(per_round):
                        t0 = time.perf_counter_ns()
                        if n:
                            handles[n].acquire()
                        else:
                            coord.client.get("grow-get")
                        client_ns[label].append(time.perf_counter_ns() - t0)
            for r in range(rounds):
                order = list(sizes[r % len(sizes):] + sizes[:r % len(sizes)])
                for kind, fn in kinds.items():
                    for n in order:
                        node.config_resetstat()
                        for _ in range(per_round):
                            fn(n)
                        stat = node.info("commandstats").get("cmdstat_evalsha", {})
                        samples[(kind, n)].append(float(stat.get("usec_per_call", 0.0)))
        node.close()
    for kind in kinds:
        medians = {n: sorted(samples[(kind, n)])[len(samples[(kind, n)]) // 2] for n in sizes}
        cells = ", ".join(f"{n} members {medians[n]:.1f} µs" for n in sizes)
        lines.append(f"{kind}: {cells}; {sizes[-1]} / {sizes[0]} = {medians[sizes[-1]] / medians[sizes[0]]:.2f}x")
    get = sorted(client_ns["GET"])[len(client_ns["GET"]) // 2]
    cells = ", ".join(f"{n} members {sorted(client_ns[f'acquire {n}'])[len(client_ns[f'acquire {n}']) // 2] / get:.2f}x"
                      for n in sizes)
    lines.append(f"cold acquire p50 / GET p50 (client side, GET {get / 1000:.0f} µs): {cells}")
    return lines


def function_library(tag: str) -> str:
    """Every script of lua/ as one Redis Function library (an experiment, not what workers send): the
    shared library once, each script's own file as a function whose KEYS and ARGV are upvalues."""
    from coordinator.store.scripts import SCRIPT_NAMES, _parts

    shared = "\n".join(text.rstrip("\n") for _, text in _parts("acquire")[:-1])
    out = [f"#!lua name={tag}", "local KEYS, ARGV", shared]
    for name in SCRIPT_NAMES:
        out += [f"redis.register_function('{tag}_{name}', function(keys, args) KEYS, ARGV = keys, args",
                _parts(name)[-1][1], "end)"]
    return "\n".join(out)


def packaging(model: Model, quick: bool) -> list[str]:
    """The same calls (same KEYS and ARGV) as EVALSHA of the script text workers send and as FCALL of a
    Function library, interleaved in rounds: Redis CPU per call (INFO cpu, so the Lua garbage the
    library's definitions leave on every EVALSHA counts too) and the fleet each would carry."""
    rounds, per_round = (5, 300) if quick else (9, 500)
    with RedisServer() as server:
        node = redis.Redis(port=server.port, decode_responses=True)
        node.function_load(function_library("capx"), replace=True)
        cfg = pools(1)[0]
        with co.Coordinator(server.url, [cfg], prefix=PREFIX + "p", staleness=0, legacy_notices=False,
                            **HONEST) as coord:
            pool = coord.pool(cfg.name)
            sel = pool.acquire()
            codec = coord._codec(cfg.name)
            acquire_op = codec.acquire()
            keys = acquire_op.keys
            scripts = {name: node.register_script(script_source(name)) for name in ("acquire", "report_failure")}

            def args(name: str) -> list[str]:
                if name == "acquire":
                    return codec.argv(acquire_op, False)
                pool.quiet_success(sel)  # served since its last report: the count restarts, as in the fleet
                return codec.argv(codec.report_failure(sel, "transient", None), False)

            calls: dict[str, Callable[[str, list[str]], Any]] = {
                "EVALSHA": lambda name, a: scripts[name](keys=keys, args=a),
                "FCALL": lambda name, a: node.fcall(f"capx_{name}", len(keys), *keys, *a),
            }
            samples: dict[tuple[str, str], list[float]] = {(v, n): [] for v in calls for n in scripts}
            for r in range(rounds):
                order = list(calls) if r % 2 == 0 else list(reversed(calls))
                for variant in order:
                    for name in scripts:
                        before = cpu_seconds([node])
                        for _ in range(per_round):
                            calls[variant](name, args(name))
                        samples[(variant, name)].append((cpu_seconds([node]) - before) / per_round)
        node.close()
    med = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
    lines = []
    for variant in calls:
        costs = {"report_failure": med[(variant, "report_failure")], "acquire": med[(variant, "acquire")],
                 "reread": 0.0, "cooldown": 0.0, "delivery": 0.0}
        lines.append(f"packaging {variant}: Redis CPU per call: acquire {costs['acquire'] * 1e6:.1f} µs, counting "
                     f"report_failure {costs['report_failure'] * 1e6:.1f} µs; failures alone would allow "
                     f"W = {model.largest(costs):,}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-cluster", action="store_true")
    parser.add_argument("--workers-per-pool", type=int, default=10)
    parser.add_argument("--growth-only", action="store_true", help="only the script time by pool size")
    parser.add_argument("--packaging", action="store_true",
                        help="also compare EVALSHA with a Redis Function library (an experiment)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    for line in growth(args.quick):
        print(line, flush=True)
    if args.growth_only:
        return 0
    model = Model(workers_per_pool=args.workers_per_pool)
    for line in run(args.quick, not args.no_cluster, model):
        print(line, flush=True)
    if args.packaging:
        for line in packaging(model, args.quick):
            print(line, flush=True)
    print(f"load {load:.2f} before, {os.getloadavg()[0]:.2f} after; {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Brings the real compose.yaml up and checks it the way a user would.

Skipped unless COORDINATOR_COMPOSE=1. `scripts/compose-test` prepares a machine without an image
registry (podman, a base image made with debootstrap, a wheelhouse) and runs this file; with Docker,
`COORDINATOR_COMPOSE=1 COORDINATOR_COMPOSE_CMD="docker compose" pytest tests/infrastructure` does.

Everything goes through the compose command, the container engine's `ps`/`inspect`/`logs` and the
CLI inside the containers (`compose run cli ...`); nothing here imports the package. The only file
added to compose.yaml is compose.no-egress.yaml, which gives the cluster's network no route out.

What it checks, in order (one test, because each step builds on the state the previous one left):
1. every service `up` starts is running: Redis, the fake upstream, four workers (and any service added
   later, e.g. an alerts consumer or a metrics exporter);
2. the fleet fails over exactly once per real transition: the upstream's first account is out of
   quota and its second starts answering 429 after COORDINATOR_SWITCH_AFTER, so the events are
   `created`, `failover` acct-1 -> acct-2, `failover` acct-2 -> acct-3, each won by one worker;
3. Redis killed and started again (empty: no persistence) costs the workers zero caller errors; each
   logs the outage once and its end once, and the new state holds one `failover` (the merged cooldowns)
   and lands on acct-3 again;
4. `status`, `park` and `unpark` work against the restarted Redis, and the fleet stays on acct-3 after
   acct-2's cooldown runs out (sticky: no flapping, no extra event); the two alerts replicas post each
   operator event to the sink exactly once (no key ever twice), and the exporter serves the state;
5. `compose stop` ends every container by its stop signal within the grace period (no SIGKILL), and
   `down` leaves no container and no network behind.

The observations (calls, events, errors) are printed at the end and, with COORDINATOR_COMPOSE_REPORT
set, written there as JSON.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.skipif(
    os.environ.get("COORDINATOR_COMPOSE") != "1",
    reason="starts containers: set COORDINATOR_COMPOSE=1 (scripts/compose-test does)",
)

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "compose.yaml").is_file())
HERE = Path(__file__).resolve().parent
COMPOSE_CMD = shlex.split(os.environ.get("COORDINATOR_COMPOSE_CMD", "docker compose"))
ENGINE = os.environ.get("COORDINATOR_CONTAINER_ENGINE") or (
    "podman" if "podman" in " ".join(COMPOSE_CMD) else "docker"
)
PROJECT = os.environ.get("COORDINATOR_COMPOSE_PROJECT", "coordinator-compose-test")
FILES = ["-f", str(ROOT / "compose.yaml"), "-f", str(HERE / "compose.no-egress.yaml")]
#: When the upstream's second account starts answering 429, counted from the upstream's start.
SWITCH_AFTER = 15.0
#: How long Redis stays dead. Redis must be back before acct-2's 30 s cooldown (Retry-After) ends,
#: so that the merged state has exactly one reason to fail over.
OUTAGE = 8.0
#: The workers print a status line every 5 s.
LINE_EVERY = 5.0
#: A stop signal that works ends a container within this; `stop` sends SIGKILL after 10 s.
STOP_GRACE = 10.0
POOL = "openai"
MEMBERS = ("acct-1", "acct-2", "acct-3")

STATUS_LINE = re.compile(
    r"requests=(?P<requests>\d+) errors=(?P<errors>\d+) transitions=(?P<transitions>\d+) "
    r"active=(?P<active>\S+) generation=(?P<generation>\d+)"
)
#: `logs -t` stamps; podman 4.3 glues a line written in two parts to the next stamp, so split on them.
#: A stamp is always followed by a space; an ISO time inside a logged JSON body ("time_iso": "...Z")
#: is quoted, so it is not taken for one.
STAMP = re.compile(r"(?<!\")(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) ")
#: The one line a worker logs when Redis stops answering, and the one when it answers again.
#: A worker's one line when Redis stops serving it (whatever the trouble), and its one line when it is back.
OUTAGE_START = re.compile(r"serving (calls )?from local state")
OUTAGE_END = re.compile(r"Redis at \S+ is back")


def env() -> dict[str, str]:
    return {**os.environ, "COORDINATOR_SWITCH_AFTER": f"{SWITCH_AFTER:g}s"}


def run(argv: list[str], *, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env(), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{shlex.join(argv)}` did not finish within {timeout:.0f}s; output: {exc.output!r}")
    if check and done.returncode != 0:
        pytest.fail(f"`{shlex.join(argv)}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def compose(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([*COMPOSE_CMD, "-p", PROJECT, *FILES, *args], timeout=timeout, check=check)


def engine(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([ENGINE, *args], timeout=timeout, check=check)


def cli(*args: str, deps: bool = False) -> Any:
    """`compose run --rm cli ARGS --json`, parsed. Redis is up whenever this runs, so after the first call
    `--no-deps` saves the compose command's pass over the dependencies (a few seconds each)."""
    extra = [] if deps else ["--no-deps"]
    out = compose("--profile", "cli", "run", "--rm", "-T", *extra, "cli", *args, "--json", timeout=90).stdout
    docs = [line for line in out.splitlines() if line.startswith("{") or line.startswith("[")]
    if args[0] == "events":
        return [json.loads(line) for line in docs]
    start = out.find("{")
    assert start >= 0, f"`cli {shlex.join(args)}` printed no JSON: {out!r}"
    return json.loads(out[start:])


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def parse_stamp(text: str) -> float:
    text = text.replace("Z", "+00:00")
    if "." in text:  # Python takes at most microseconds
        head, tail = text.split(".", 1)
        digits = re.match(r"\d+", tail)
        assert digits is not None
        text = f"{head}.{digits.group()[:6]}{tail[digits.end():]}"
    return datetime.fromisoformat(text).timestamp()


@dataclass
class Line:
    time: float
    text: str


@dataclass
class Container:
    name: str
    service: str
    status: str
    exit_code: int


def containers() -> list[Container]:
    ids = engine("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
    if not ids:
        return []
    found = []
    for item in json.loads(engine("inspect", *ids).stdout):
        labels = item["Config"]["Labels"] or {}
        found.append(Container(name=item["Name"].lstrip("/"), service=labels.get("com.docker.compose.service", "?"),
                               status=item["State"]["Status"], exit_code=int(item["State"]["ExitCode"])))
    return sorted(found, key=lambda c: c.name)


def logs(name: str) -> list[Line]:
    done = subprocess.run([ENGINE, "logs", "-t", name], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    parts = STAMP.split(done.stdout)
    lines = []
    for stamp, text in zip(parts[1::2], parts[2::2], strict=True):
        text = text.strip()
        if text:
            lines.append(Line(parse_stamp(stamp), text))
    return lines


def sink_keys() -> dict[str, int]:
    """How often the alert sink received each Idempotency-Key (it prints one "KEY {json}" line per POST)."""
    counts: dict[str, int] = {}
    for container in containers():
        if container.service == "alert-sink":
            for line in logs(container.name):
                key, _, body = line.text.partition(" ")
                if body.startswith("{"):
                    counts[key] = counts.get(key, 0) + 1
    return counts


def status_lines(name: str) -> list[tuple[float, dict[str, Any]]]:
    found = []
    for line in logs(name):
        match = STATUS_LINE.search(line.text)
        if match:
            values: dict[str, Any] = {k: int(v) if v.isdigit() else v for k, v in match.groupdict().items()}
            found.append((line.time, values))
    return found


@dataclass
class Observed:
    """What the run saw; printed at the end."""

    phases: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def report(self) -> str:
        return json.dumps({"seconds": {k: round(v, 1) for k, v in self.phases.items()}, **self.data}, indent=2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Observed]:
    observed = Observed()
    started = time.monotonic()
    compose("down", "--timeout", "5", check=False)  # leftovers of an interrupted run
    try:
        # One build for the image every coordinator service runs (the services share `image:`).
        compose("build", "upstream", timeout=900)
        observed.phases["build"] = time.monotonic() - started
        # podman 4.3 cannot wait for `condition: service_healthy` (its health checks need systemd), so
        # Redis goes first and answers before anything that depends on it starts.
        compose("up", "-d", "redis", timeout=120)
        wait_until("redis to answer PING", redis_answers, timeout=60)
        compose("up", "-d", timeout=180)
        observed.phases["up"] = time.monotonic() - started - observed.phases["build"]
        yield observed
    finally:
        try:
            keep_logs()
        finally:
            compose("down", "--timeout", str(int(STOP_GRACE)), timeout=180, check=False)
        observed.phases["total"] = time.monotonic() - started
        text = observed.report()
        print(f"\ncompose cluster test observed:\n{text}")
        if os.environ.get("COORDINATOR_COMPOSE_REPORT"):
            Path(os.environ["COORDINATOR_COMPOSE_REPORT"]).write_text(text + "\n")


def keep_logs() -> None:
    """Saves every container's log (with COORDINATOR_COMPOSE_LOGS set, in that folder) before `down`."""
    folder = os.environ.get("COORDINATOR_COMPOSE_LOGS")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    for old in Path(folder).glob("*.log"):
        old.unlink()
    for container in containers():
        text = "\n".join(f"{line.time:.3f} {line.text}" for line in logs(container.name))
        Path(folder, f"{container.name}.log").write_text(text + "\n")


def redis_answers() -> bool:
    done = compose("exec", "-T", "redis", "redis-cli", "ping", timeout=30, check=False)
    return done.returncode == 0 and "PONG" in done.stdout


def expected_services() -> dict[str, int]:
    """The services `up` starts (no profile) and how many containers each runs."""
    spec = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    return {name: int((svc.get("deploy") or {}).get("replicas", 1)) for name, svc in spec.items()
            if not svc.get("profiles")}


def last_status(names: list[str]) -> dict[str, dict[str, Any]]:
    result = {}
    for name in names:
        lines = status_lines(name)
        if lines:
            result[name] = {"time": lines[-1][0], **lines[-1][1]}
    return result


def fresh_status(names: list[str], after: float, timeout: float = LINE_EVERY * 3) -> dict[str, dict[str, Any]]:
    """Each worker's first status line stamped after ``after`` (unix seconds); fails if one stays silent."""

    def check() -> dict[str, dict[str, Any]] | None:
        now = last_status(names)
        return now if len(now) == len(names) and all(s["time"] > after for s in now.values()) else None

    result: dict[str, dict[str, Any]] = wait_until(f"a status line from every worker after {after:.1f}", check,
                                                   timeout)
    return result


def stop_dumping_stragglers() -> list[str]:
    """Runs `compose stop`. A coordinator container still running shortly before the grace period can
    have ended gets SIGABRT: the image sets PYTHONFAULTHANDLER, so its log shows where each thread was
    (Python as PID 1 then goes on; a slow one still exits on its own, a hung one gets SIGKILL). Returns
    those containers' names."""
    argv = [*COMPOSE_CMD, "-p", PROJECT, *FILES, "stop"]
    stop = subprocess.Popen(argv, cwd=ROOT, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stragglers: list[str] = []
    try:
        stop.wait(timeout=STOP_GRACE - 1.5)  # podman's own timer starts after this one
    except subprocess.TimeoutExpired:
        stragglers = [c.name for c in containers() if c.status == "running" and c.service != "redis"]
        for name in stragglers:
            engine("kill", "--signal", "ABRT", name, check=False)
    try:
        out, _ = stop.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        stop.kill()
        pytest.fail("`compose stop` did not finish within 120s")
    assert stop.returncode == 0, f"`{shlex.join(argv)}` exited {stop.returncode}: {out[-3000:]}"
    return stragglers


def requests_at(statuses: list[tuple[float, dict[str, Any]]], when: float) -> float:
    """A worker's request counter at ``when``, interpolated between the status lines around it."""
    points = [(t, s["requests"]) for t, s in statuses]
    for (t1, r1), (t2, r2) in itertools.pairwise(points):
        if t1 <= when <= t2:
            return float(r1 + (r2 - r1) * (when - t1) / (t2 - t1)) if t2 > t1 else float(r2)
    return float(points[-1][1] if when > points[-1][0] else points[0][1])


def failovers(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["from"], e["to"]) for e in events if e["type"] == "failover"]


@pytest.mark.timeout(1200)
def test_the_cluster_runs_fails_over_once_survives_a_redis_restart_and_stops_cleanly(cluster: Observed) -> None:
    seen = cluster.data
    t0 = time.monotonic()

    # 1. Every service up and running, four workers among them.
    expected = expected_services()
    assert expected.get("worker") == 4 and {"redis", "upstream"} <= expected.keys(), expected
    running = containers()
    by_service = {name: [c for c in running if c.service == name and c.status == "running"] for name in expected}
    assert {name: len(found) for name, found in by_service.items()} == expected, running
    names = [c.name for c in by_service["worker"]]
    seen["containers"] = {name: len(found) for name, found in by_service.items()}

    # The CLI the way the README shows it (the first call also brings up its dependencies).
    first = cli("status", deps=True)
    (pool,) = first["pools"]
    assert pool["pool"] == POOL and pool["initialized"] and pool["matches_config"], pool

    # 2. The upstream moves the fleet acct-1 -> acct-2 -> acct-3; every worker ends up on acct-3.
    # A status line is printed after the requests it counts, so the first one that shows acct-3 also
    # counts the transition its worker won.
    def on_acct_3() -> dict[str, dict[str, Any]] | None:
        now = last_status(names)
        return now if len(now) == len(names) and all(s["active"] == "acct-3" for s in now.values()) else None

    settled: dict[str, dict[str, Any]] = wait_until("every worker on acct-3", on_acct_3, timeout=SWITCH_AFTER + 60)
    events = cli("events")
    assert [e["type"] for e in events] == ["created", "failover", "failover"], events
    assert failovers(events) == [("acct-1", "acct-2"), ("acct-2", "acct-3")], events
    assert [e["kind"] for e in events[1:]] == ["quota_exhausted", "rate_limited"], events
    assert len({e["epoch"] for e in events}) == 1, events
    # Each transition was won by exactly one worker (its hook fired once, in that worker only).
    assert sum(s["transitions"] for s in settled.values()) == 2, settled
    assert all(s["errors"] == 0 and s["requests"] > 0 for s in settled.values()), settled
    acct_2_until = events[2]["until"]  # Redis server time; the containers share this host's clock
    seen["before_outage"] = {
        "events": [f"{e['type']} {e['from'] or ''}->{e['to'] or ''}".strip() for e in events],
        "requests": sum(s["requests"] for s in settled.values()),
        "caller_errors": sum(s["errors"] for s in settled.values()),
        "transitions_won": {name: s["transitions"] for name, s in settled.items()},
    }
    cluster.phases["failover"] = time.monotonic() - t0

    # 3. Redis killed, dead for OUTAGE seconds, started again empty.
    before = last_status(names)
    killed_at = time.time()
    compose("kill", "redis", timeout=60)
    time.sleep(OUTAGE)
    compose("start", "redis", timeout=60)
    wait_until("redis to answer PING again", redis_answers, timeout=60)
    back_at = time.time()

    def all_back() -> bool:
        return all(any(OUTAGE_END.search(line.text) and line.time >= killed_at for line in logs(n)) for n in names)

    wait_until("every worker to log that Redis is back", all_back, timeout=90)
    after = fresh_status(names, after=time.time())
    outage: dict[str, Any] = {"redis_down_s": round(back_at - killed_at, 1), "workers": {}}
    for name in names:
        lines = [line for line in logs(name) if line.time >= killed_at]
        starts = [line for line in lines if OUTAGE_START.search(line.text)]
        ends = [line for line in lines if OUTAGE_END.search(line.text)]
        assert len(starts) == 1 and len(ends) == 1, (name, [line.text for line in lines])
        statuses = status_lines(name)
        prior = [(t, s) for t, s in statuses if t <= killed_at][-1]
        later = next((t, s) for t, s in statuses if t >= ends[0].time)
        outage["workers"][name] = {
            "calls_in_window": later[1]["requests"] - prior[1]["requests"],
            "window_s": round(later[0] - prior[0], 1),
            "caller_errors_in_window": later[1]["errors"] - prior[1]["errors"],
            "unreachable_for_s": round(ends[0].time - starts[0].time, 1),
            # The counter between its 5 s status lines, read at the kill and when Redis answered again.
            "calls_while_down_estimate": round(requests_at(statuses, back_at) - requests_at(statuses, killed_at)),
        }
    assert all(s["errors"] == 0 for s in after.values()), after
    assert all(after[n]["requests"] > before[n]["requests"] for n in names), (before, after)
    outage["calls_in_windows"] = sum(w["calls_in_window"] for w in outage["workers"].values())
    outage["calls_while_redis_down_estimate"] = sum(w["calls_while_down_estimate"] for w in outage["workers"].values())
    outage["caller_errors"] = sum(w["caller_errors_in_window"] for w in outage["workers"].values())
    seen["redis_restart"] = outage

    # Redis came back empty: a new epoch, seeded by the first worker whose probe got through with every
    # cooldown it knew. acct-1 is cooling, so that merge moves the pool off it: one failover with no
    # failure kind. Where it lands depends on acct-2's cooldown at that moment: still cooling, straight
    # to acct-3; already over (a slow restart), to acct-2, whose next 429 is one more real failover.
    events = cli("events")
    assert len({e["epoch"] for e in events}) == 1, "only the new epoch's events"
    created, *moves = events
    assert created["type"] == "created" and all(e["type"] == "failover" for e in moves), events
    assert moves and moves[0]["from"] == "acct-1" and moves[0]["kind"] is None, events
    if created["time"] < acct_2_until - 0.5:
        assert failovers(moves) == [("acct-1", "acct-3")], events
    elif created["time"] > acct_2_until + 0.5:
        assert failovers(moves) == [("acct-1", "acct-2"), ("acct-2", "acct-3")], events
        assert moves[1]["kind"] == "rate_limited", events
    else:  # within the clocks' resolution of the deadline: either is right, nothing else
        assert failovers(moves) in ([("acct-1", "acct-3")], [("acct-1", "acct-2"), ("acct-2", "acct-3")]), events
    # The merge is no worker's call failing; a later failover is won by one worker.
    won = sum(s["transitions"] for s in after.values()) - sum(s["transitions"] for s in settled.values())
    assert won == len(moves) - 1, (won, events)
    status = cli("status")
    (pool,) = status["pools"]
    assert pool["active"] == "acct-3" and not pool["exhausted"], pool
    states = {m["id"]: m for m in pool["members"]}
    assert states["acct-1"]["state"] == "cooling" and states["acct-1"]["cooling"]["kind"] == "quota_exhausted"
    seen["after_restart"] = {
        "merged_before_acct_2_cooldown_ended_s": round(acct_2_until - created["time"], 1),
        "events": [f"{e['type']} {e['from'] or ''}->{e['to'] or ''}".strip() for e in events],
        "active": pool["active"],
        "transitions_won": {name: s["transitions"] for name, s in after.items()},
    }
    cluster.phases["redis_restart"] = time.monotonic() - t0 - cluster.phases["failover"]

    # 4. The operator: park and unpark a member, and see it in status and events.
    parked = cli("park", POOL, "acct-1", "--for", "10m", "--reason", "compose test")
    assert parked["changed"] and parked["events"] == ["parked"] and parked["active"] == "acct-3", parked
    (pool,) = cli("status", POOL)["pools"]
    states = {m["id"]: m for m in pool["members"]}
    assert states["acct-1"]["state"] == "parked" and states["acct-1"]["parked"]["reason"] == "compose test", pool
    unparked = cli("unpark", POOL, "acct-1")
    assert unparked["changed"] and unparked["events"] == ["unparked"] and unparked["active"] == "acct-3", unparked
    # acct-2's cooldown runs out; a sticky pool stays on acct-3, so no further failover.
    cooling = states["acct-2"]["cooling"]
    if cooling is not None:
        time.sleep(min(max(0.0, cooling["left_s"]) + 1.0, 130.0))
    final = fresh_status(names, after=time.time())
    later = cli("events")
    assert later[: len(events)] == events, "the events before the park are unchanged"
    assert [e["type"] for e in later[len(events):]] == ["parked", "unparked"], later
    assert all(s["active"] == "acct-3" and s["errors"] == 0 for s in final.values()), final
    seen["operator"] = {"events": [e["type"] for e in later[len(events):]],
                        "waited_for_acct_2_cooldown_s": round(cooling["left_s"], 1) if cooling else 0}
    seen["calls"] = sum(s["requests"] for s in final.values())
    seen["caller_errors"] = sum(s["errors"] for s in final.values())

    # 4b. Alerts and metrics. The operator's events were written long after every alerts replica was
    # consuming the new epoch's stream: each reached the sink exactly once, whichever replica sent it,
    # and no event was ever posted twice. The exporter serves the pool's state from inside the network.
    wanted = [f"coord:{POOL}:{e['id']}" for e in later[len(events):]]

    def alerted() -> dict[str, int] | None:
        counts = sink_keys()
        return counts if all(counts.get(key, 0) >= 1 for key in wanted) else None

    counts = wait_until("the sink to receive the operator's events", alerted, timeout=90)
    assert all(counts[key] == 1 for key in wanted), counts
    assert all(n == 1 for n in counts.values()), f"an alert was posted twice: {counts}"
    scrape = compose("exec", "-T", "metrics", "python", "-c",
                     "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9464/metrics').read()"
                     ".decode())", timeout=60).stdout
    active = [line for line in scrape.splitlines() if line.startswith("coordinator_member_state{")
              and all(label in line for label in ('member="acct-3"', f'pool="{POOL}"', 'state="active"'))]
    assert len(active) == 1 and float(active[0].rsplit(" ", 1)[1]) == 1.0, scrape[-2000:]
    seen["alerts"] = {"posted": sum(counts.values()), "distinct": len(counts), "operator_events_alerted": len(wanted)}

    # 5. Stop: each container ends on its stop signal, none needs SIGKILL; down leaves nothing behind.
    stopping = time.monotonic()
    stragglers = stop_dumping_stragglers()
    stop_s = time.monotonic() - stopping
    stopped = containers()
    assert all(c.status == "exited" for c in stopped), stopped
    codes = {c.name: c.exit_code for c in stopped}
    clean = {0, 130}  # 130: the CLI's exit on SIGINT, the coordinator services' stop signal
    # `stop` sends SIGKILL after STOP_GRACE seconds: a container that needed it exits 137.
    dumps = {name: "\n".join(line.text for line in logs(name)[-60:]) for name in stragglers}
    assert all(code in clean for code in codes.values()), (
        f"a container did not stop cleanly: {codes}; still running near the grace period: {stragglers}; "
        "their last log lines (with the threads Python's faulthandler dumped on SIGABRT):\n"
        + "\n".join(f"--- {name}\n{text}" for name, text in dumps.items()))
    seen["stop"] = {"seconds": round(stop_s, 1), "exit_codes": codes, "slow_to_stop": stragglers}
    compose("down", timeout=120)
    assert containers() == [], "down leaves no container"
    networks = engine("network", "ls", "-q", "--filter", f"name={PROJECT}").stdout.split()
    assert networks == [], f"down leaves no network: {networks}"
    cluster.phases["operator_and_stop"] = time.monotonic() - t0 - sum(
        cluster.phases[k] for k in ("failover", "redis_restart"))

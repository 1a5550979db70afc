"""The ``coordinator`` CLI, in-process (``main([...])``) and as ``python -m coordinator``, on real Redis.

Every test gets its own key prefix, written into its own coordinator.toml, so tests share one server.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

import coordinator as co
from coordinator.cli.main import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "redis://127.0.0.1:1/0"
ENV_SECRET = "sk-env-SECRET-0001"
INLINE_SECRET = "sk-inline-SECRET-0002"
HEADER_SECRET = "org-header-SECRET-0003"
URL_PASSWORD = "hunter2-SECRET-0004"
SECRETS = (ENV_SECRET, INLINE_SECRET, HEADER_SECRET, URL_PASSWORD)

CONFIG = """\
[redis]
url = "{url}"
prefix = "{prefix}"

[pools.openai]
strategy = "sticky"
members = [
  {{ id = "acct-1", api_key_env = "CLI_TEST_KEY_1" }},
  {{ id = "acct-2", api_key_env = "CLI_TEST_KEY_2" }},
  {{ id = "acct-3", api_key = "{inline}", model = "gpt-4o-mini", headers = {{ "X-Org" = "{header}" }} }},
]
rotate_for = "10m"

[pools.rr]
strategy = "round_robin"
members = [{{ id = "a" }}, {{ id = "b" }}]
"""


def strict_json(text: str) -> Any:
    """json.loads that rejects NaN/Infinity, which are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@dataclass
class Cli:
    path: Path
    prefix: str
    url: str
    raw: redis.Redis
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *args: str) -> tuple[int, str, str]:
        """Runs main() in this process with this test's config; returns (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        code = main(["--config", str(self.path), *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self("--json", *args)
        assert code == 0, err
        return strict_json(out)

    def coordinator(self) -> co.Coordinator:
        # Blocking reads (events_after) wait longer than a worker's default timeout allows.
        return co.Coordinator.from_config(self.path, timeout=5)

    def state(self) -> dict[str, Any]:
        """Every key under this test's prefix, raw: proof that a refused command wrote nothing."""
        dump: dict[str, Any] = {}
        for key in sorted(self.raw.scan_iter(f"{self.prefix}:*")):
            kind = self.raw.type(key)
            dump[key] = self.raw.hgetall(key) if kind == "hash" else self.raw.xrange(key)
        return dump

    def subprocess(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "coordinator", "--config", str(self.path), *args],
            capture_output=True, text=True, timeout=timeout, env=child_env(),
        )


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COORDINATOR_REDIS_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(CLI_TEST_KEY_1=ENV_SECRET, CLI_TEST_KEY_2=ENV_SECRET, **extra)
    return env


@pytest.fixture
def cli(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)
    monkeypatch.setenv("CLI_TEST_KEY_1", ENV_SECRET)
    monkeypatch.setenv("CLI_TEST_KEY_2", ENV_SECRET)
    prefix = f"cli{uuid.uuid4().hex[:10]}"
    path = tmp_path / "coordinator.toml"
    path.write_text(CONFIG.format(url=redis_url, prefix=prefix, inline=INLINE_SECRET, header=HEADER_SECRET))
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    yield Cli(path, prefix, redis_url, raw, capsys)
    raw.close()


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def assert_one_error_line(err: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("coordinator: error: "), err


# -- the parser ----------------------------------------------------------------------------------------


def test_every_subcommand_is_registered_once_and_parses() -> None:
    assert {"check", "status", "events", "park", "unpark", "rotate"} <= set(COMMANDS)
    parser = build_parser()
    args = parser.parse_args(["park", "openai", "acct-1", "--for", "1h30m", "--reason", "x", "--json"])
    assert (args.command, args.pool, args.member, args.duration, args.reason, args.json) == (
        "park", "openai", "acct-1", 5400.0, "x", True)
    # Global options work before and after the subcommand; after wins, absent does not reset.
    args = parser.parse_args(["--json", "--config", "a.toml", "status", "--config", "b.toml"])
    assert (args.json, args.config, args.redis) == (True, "b.toml", None)
    assert parser.parse_args(["events"]).config == "coordinator.toml"


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("check", "status", "events", "park", "unpark", "rotate"):
        assert name in out


# -- check -----------------------------------------------------------------------------------------------


def test_check_lists_pools_and_never_secrets(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_url = f"redis://ops:{URL_PASSWORD}@127.0.0.1:1/0"
    code, out, err = cli("check")
    assert code == 0, err
    assert "OK, 2 pools" in out
    assert "pool openai: sticky, 3 members" in out and "pool rr: round_robin, 2 members" in out
    assert "acct-1" in out and "$CLI_TEST_KEY_1" in out and "key in config file" in out
    # check never connects: an unreachable URL (with a password) is fine, and printed redacted.
    code, out, err = cli("--redis", secret_url, "check")
    assert code == 0, err
    assert "redis://ops:***@127.0.0.1:1/0 (from --redis)" in out
    monkeypatch.setenv("COORDINATOR_REDIS_URL", secret_url)
    data = cli.json("check")
    assert data["valid"] is True
    assert data["redis"] == {"url": "redis://ops:***@127.0.0.1:1/0", "url_from": "COORDINATOR_REDIS_URL",
                             "prefix": cli.prefix}
    openai = data["pools"][0]
    assert [m["id"] for m in openai["members"]] == ["acct-1", "acct-2", "acct-3"]
    assert openai["strategy"] == "sticky" and openai["rotate_for"] == 600.0
    assert openai["members"][0]["credential"] == {"source": "env", "env": "CLI_TEST_KEY_1"}
    assert openai["members"][2]["credential"] == {"source": "config", "env": None}
    assert openai["members"][2]["headers"] == ["X-Org"]
    assert_no_secret(out, err, json.dumps(data))


# -- status ----------------------------------------------------------------------------------------------


def test_status_json_of_a_fresh_pool(cli: Cli) -> None:
    data = cli.json("status", "openai")
    (pool,) = data["pools"]
    assert pool["pool"] == "openai" and pool["strategy"] == "sticky"
    assert pool["initialized"] is False and pool["epoch"] is None and pool["generation"] == 0
    assert pool["active"] == "acct-1" and pool["exhausted"] is False and pool["matches_config"] is True
    assert [m["state"] for m in pool["members"]] == ["ready"] * 3
    assert pool["members"][0] == {
        "id": "acct-1", "position": 0, "weight": 1, "active": True, "state": "ready",
        "cooling": None, "parked": None, "failures": 0, "ejections": 0,
    }
    assert cli.state() == {}, "status never writes"


def test_status_shows_cooling_and_parks_json_and_table(cli: Cli) -> None:
    with cli.coordinator() as coord:
        pool = coord.pool("openai")
        pool.report_failure(pool.acquire(), "rate_limited", retry_after=120)
        pool.park("acct-3", reason="quota gone for today")
        pool.park("acct-2", seconds=3600, reason="maintenance")
    data = cli.json("status")
    assert [p["pool"] for p in data["pools"]] == ["openai", "rr"]
    pool = data["pools"][0]
    assert pool["initialized"] is True and isinstance(pool["epoch"], str) and pool["generation"] >= 3
    assert pool["exhausted"] is True and pool["active"] == "acct-2"
    assert pool["now_iso"].endswith("Z")
    one, two, three = pool["members"]
    assert one["state"] == "cooling" and one["parked"] is None and one["active"] is False
    assert one["cooling"]["kind"] == "rate_limited"
    assert 110 < one["cooling"]["left_s"] <= 120
    assert one["cooling"]["until"] == pytest.approx(pool["now"] + one["cooling"]["left_s"], abs=0.01)
    assert one["cooling"]["until_iso"].endswith("Z") and one["ejections"] >= 1
    assert two["state"] == "parked" and two["active"] is True
    assert two["parked"]["forever"] is False and 3590 < two["parked"]["left_s"] <= 3600
    assert two["parked"]["reason"] == "maintenance"
    assert three["parked"] == {"until": None, "until_iso": None, "left_s": None, "forever": True,
                               "reason": "quota gone for today"}

    code, out, err = cli("status", "openai")
    assert code == 0, err
    assert "pool openai" in out and "EXHAUSTED" in out
    for text in ("cooling", "rate_limited", "parked", "until unparked", "quota gone for today", "maintenance"):
        assert text in out
    assert "rr" not in out.split("pool openai")[0]


def test_status_without_rich_hints_at_the_cli_extra_and_json_still_works(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)  # makes `import rich...` raise ImportError
    code, out, err = cli("status")
    assert code == 2 and out == ""
    assert_one_error_line(err)
    assert "pip install 'coordinator[cli]'" in err
    assert cli.json("status")["pools"][0]["pool"] == "openai"
    assert cli("events")[0] == 0


def test_status_warns_when_redis_holds_another_membership(cli: Cli, tmp_path: Path) -> None:
    with cli.coordinator() as coord:
        coord.pool("openai").acquire()
    other = tmp_path / "other.toml"
    other.write_text(cli.path.read_text().replace('  { id = "acct-2", api_key_env = "CLI_TEST_KEY_2" },\n', ""))
    assert main(["--config", str(other), "--json", "status", "openai"]) == 0
    assert strict_json(cli.capsys.readouterr().out)["pools"][0]["matches_config"] is False
    assert main(["--config", str(other), "status", "openai"]) == 0
    assert "warning: pool 'openai' in Redis is sticky [acct-1, acct-2, acct-3]" in cli.capsys.readouterr().out


# -- park, unpark, rotate --------------------------------------------------------------------------------


def test_park_unpark_rotate_say_what_changed(cli: Cli) -> None:
    code, out, err = cli("park", "openai", "acct-1", "--for", "2h", "--reason", "quota  gone")
    assert code == 0, err
    assert out.startswith("parked acct-1 in pool openai for 2h (until ")
    assert "reason: quota gone" in out and "active: acct-1 -> acct-2" in out
    parked_until = int(cli.raw.hget(f"{cli.prefix}:{{openai}}", "acct-1:parked_until") or 0)
    seconds, micros = cli.raw.time()
    now_ms = seconds * 1000 + micros // 1000
    assert 7_190_000 < parked_until - now_ms <= 7_200_000

    code, out, err = cli("unpark", "openai", "acct-1")
    assert code == 0, err
    assert out.splitlines() == ["unparked acct-1 in pool openai", "active: acct-2 (unchanged)"]
    code, out, err = cli("unpark", "openai", "acct-1")
    assert code == 0 and out.startswith("acct-1 in pool openai was not parked; nothing changed")

    code, out, err = cli("rotate", "openai", "--for", "5m", "--reason", "drill")
    assert code == 0, err
    assert out.startswith("rotated pool openai off acct-2: parked for 5m (until ")
    assert "reason: drill" in out and "active: acct-2 -> acct-3" in out

    with cli.coordinator() as coord:
        types = [e.type for e in coord.pool("openai").events()]
    assert types == ["created", "parked", "unparked", "rotated"]


def test_park_unpark_rotate_json(cli: Cli) -> None:
    data = cli.json("park", "openai", "acct-1", "--reason", "gone")
    assert data == {
        "action": "park", "pool": "openai", "member": "acct-1", "changed": True,
        "parked_until": None, "parked_until_iso": None, "forever": True, "reason": "gone",
        "active": "acct-2", "previous_active": "acct-1", "exhausted": False,
        "epoch": data["epoch"], "generation": 2, "events": ["created", "parked"],
        "now": data["now"], "now_iso": data["now_iso"],
    }
    rotated = cli.json("rotate", "openai", "--for", "90s")
    assert (rotated["action"], rotated["member"], rotated["previous_active"], rotated["active"]) == (
        "rotate", "acct-2", "acct-2", "acct-3")
    assert rotated["forever"] is False and rotated["reason"] == "manual"
    assert rotated["parked_until"] == pytest.approx(rotated["now"] + 90, abs=0.01)
    assert rotated["events"] == ["rotated"]
    unparked = cli.json("unpark", "openai", "acct-1")
    assert (unparked["action"], unparked["changed"], unparked["parked_until"], unparked["forever"]) == (
        "unpark", True, None, False)
    assert unparked["active"] == unparked["previous_active"] == "acct-3"
    assert cli.json("unpark", "openai", "acct-1")["changed"] is False


def test_parking_every_member_reports_the_exhausted_pool(cli: Cli) -> None:
    cli("park", "openai", "acct-1")
    cli("park", "openai", "acct-2")
    code, out, err = cli("park", "openai", "acct-3", "--for", "1m")
    assert code == 0, err
    assert "pool openai is EXHAUSTED" in out


# -- events ----------------------------------------------------------------------------------------------


EVENT_KEYS = {"id", "pool", "type", "time", "time_iso", "epoch", "generation", "from", "to", "member", "kind",
              "reason", "until", "until_iso", "forever", "retry_at", "retry_at_iso"}


def test_events_text_json_limit_since_and_pool_filter(cli: Cli) -> None:
    with cli.coordinator() as coord:
        pool = coord.pool("openai")
        pool.report_failure(pool.acquire(), "quota_exhausted", retry_after=3600)
        pool.park("acct-3", reason="for good")
        coord.pool("rr").park("a", seconds=60)
    code, out, err = cli("events", "--json")
    assert code == 0, err
    lines = [strict_json(line) for line in out.splitlines()]
    assert [(e["pool"], e["type"]) for e in lines] == [
        ("openai", "created"), ("openai", "failover"), ("openai", "parked"), ("rr", "parked")]
    assert all(set(e) == EVENT_KEYS for e in lines)
    failover = lines[1]
    assert (failover["from"], failover["to"], failover["kind"], failover["forever"]) == (
        "acct-1", "acct-2", "quota_exhausted", False)
    assert failover["until"] == pytest.approx(failover["time"] + 3600, abs=1)
    assert lines[2]["until"] is None and lines[2]["forever"] is True and lines[2]["reason"] == "for good"
    # In the order they happened: by server time across pools (ids of two pools may share a
    # millisecond, so the ids alone say nothing across pools), by stream id within each pool.
    millis = [int(e["id"].split("-")[0]) for e in lines]
    assert millis == sorted(millis)
    for name in ("openai", "rr"):
        ids = [tuple(map(int, e["id"].split("-"))) for e in lines if e["pool"] == name]
        assert ids == sorted(ids)

    code, out, err = cli("events", "openai", "--limit", "2", "--json")
    assert [strict_json(line)["type"] for line in out.splitlines()] == ["failover", "parked"]
    assert cli("events", "--limit", "0")[1] == ""
    assert len(cli("events", "--since", "1h")[1].splitlines()) == 4
    assert cli("events", "--since", "2999-01-01T00:00:00Z")[1] == ""
    assert len(cli("events", "rr", "--since", "2000-01-01T00:00:00+00:00")[1].splitlines()) == 1

    code, out, err = cli("events", "openai")
    assert code == 0, err
    text = out.splitlines()
    assert len(text) == 3
    assert "failover" in text[1] and "acct-1 -> acct-2" in text[1] and "(quota_exhausted)" in text[1]
    assert "until unparked" in text[2] and "reason: for good" in text[2]


def test_events_of_several_pools_are_shown_in_the_order_they_happened(cli: Cli) -> None:
    # Two writes to one pool, then one to the other, many times over: many of them share a
    # millisecond, where each pool's stream numbers its own entries 0, 1, ... so sorting by stream id
    # would put the second pool's write before the first pool's second one.
    done: list[tuple[str, str]] = []
    with cli.coordinator() as coord:
        openai, rr = coord.pool("openai"), coord.pool("rr")
        for _ in range(25):
            openai.park("acct-3", seconds=60)
            openai.unpark("acct-3")
            rr.park("a", seconds=60)
            rr.unpark("a")
            done += [("openai", "parked"), ("openai", "unparked"), ("rr", "parked"), ("rr", "unparked")]
    code, out, err = cli("events", "--json", "--limit", "1000")
    assert code == 0, err
    shown = [(e["pool"], e["type"]) for e in map(strict_json, out.splitlines()) if e["type"] != "created"]
    assert shown == done
    text = [line.split() for line in cli("events", "--limit", "1000")[1].splitlines()]
    assert [(words[2], words[5]) for words in text if words[5] != "created"] == done, "text shows the same order"


def test_follow_prints_an_event_written_by_another_process_and_ctrl_c_exits_zero(cli: Cli) -> None:
    with cli.coordinator() as coord:
        coord.pool("openai").acquire()  # one `created` event: proof the follower is up once we read it
    follower = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "--config", str(cli.path), "events", "--follow", "--json",
         "--limit", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        # A test runner started in the background may ignore SIGINT; the follower must not inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    stdout = follower.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        assert strict_json(lines.get(timeout=15))["type"] == "created"
        writer = cli.subprocess("park", "openai", "acct-2", "--reason", "from another process")
        assert writer.returncode == 0, writer.stderr
        event = strict_json(lines.get(timeout=10))
        assert (event["type"], event["member"], event["reason"]) == ("parked", "acct-2", "from another process")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=10) == 0
        assert follower.stderr is not None and follower.stderr.read() == ""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


# -- misuse: one line, exit 2, nothing changed -----------------------------------------------------------


MISUSE = [
    pytest.param(["park", "openai", "nope"], "has no member 'nope'", id="unknown-member"),
    pytest.param(["unpark", "openai", "nope"], "has no member 'nope'", id="unpark-unknown-member"),
    pytest.param(["park", "nope", "acct-1"], "unknown pool 'nope'", id="park-unknown-pool"),
    pytest.param(["rotate", "nope"], "unknown pool 'nope'", id="rotate-unknown-pool"),
    pytest.param(["status", "nope"], "unknown pool 'nope'", id="status-unknown-pool"),
    pytest.param(["events", "nope"], "unknown pool 'nope'", id="events-unknown-pool"),
    pytest.param(["park", "openai", "acct-1", "--for", "soon"], "invalid duration 'soon'", id="bad-duration"),
    pytest.param(["park", "openai", "acct-1", "--for", "0"], "must be more than 0", id="zero-duration"),
    pytest.param(["rotate", "openai", "--for", "1x"], "invalid duration '1x'", id="rotate-bad-duration"),
    pytest.param(["events", "--since", "yesterday"], "invalid time 'yesterday'", id="bad-since"),
    pytest.param(["events", "--limit", "-1"], "--limit", id="negative-limit"),
    pytest.param(["rotate", "rr"], "round_robin has none", id="rotate-round-robin"),
    pytest.param(["--redis", "http://127.0.0.1:6379", "park", "openai", "acct-1"], "unsupported Redis URL scheme",
                 id="bad-url-scheme"),
    pytest.param(["--redis", "redis://127.0.0.1:notaport/0", "status"], "invalid Redis URL", id="bad-url"),
    pytest.param(["--redis", UNREACHABLE, "park", "openai", "acct-1"], "cannot reach Redis", id="unreachable"),
    pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="unknown-command"),
    pytest.param(["park", "openai"], "required: member", id="missing-argument"),
    pytest.param([], "required: COMMAND", id="no-command"),
    pytest.param(["--config", "/nonexistent/coordinator.toml", "park", "openai", "acct-1"], "config file not found",
                 id="missing-config"),
]


@pytest.mark.parametrize(("argv", "message"), MISUSE)
def test_misuse_prints_one_line_exits_2_and_changes_nothing(cli: Cli, argv: list[str], message: str) -> None:
    with cli.coordinator() as coord:
        coord.pool("openai").acquire()
        coord.pool("rr").acquire()
    before = cli.state()
    code, out, err = cli(*argv)
    assert code == 2
    assert out == ""
    assert_one_error_line(err)
    assert message in err
    assert cli.state() == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[redis\nurl = 1", "not valid TOML", id="not-toml"),
        pytest.param('[pools.p]\nstrategy = "fastest"\nmembers = [{ id = "a" }]', "pools.p.strategy", id="bad-value"),
        pytest.param('[pools.p]\nmembers = [{ id = "a" }, { id = "a" }]', "appears twice", id="duplicate-member"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(cli: Cli, tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    for argv in (["check"], ["status"], ["park", "p", "a"]):
        code = main(["--config", str(bad), *argv])
        out, err = cli.capsys.readouterr()
        assert code == 2 and out == ""
        assert_one_error_line(err)
        assert message in err


def test_write_with_another_membership_than_the_fleet_is_refused(cli: Cli, tmp_path: Path) -> None:
    with cli.coordinator() as coord:
        coord.pool("openai").acquire()
    before = cli.state()
    stale = tmp_path / "stale.toml"
    stale.write_text(cli.path.read_text().replace('  { id = "acct-2", api_key_env = "CLI_TEST_KEY_2" },\n', ""))
    for argv in (["park", "openai", "acct-1"], ["unpark", "openai", "acct-1"], ["rotate", "openai"]):
        code = main(["--config", str(stale), *argv])
        out, err = cli.capsys.readouterr()
        assert code == 2 and out == ""
        assert_one_error_line(err)
        assert "run the CLI with the workers' config" in err
    assert cli.state() == before


def test_redis_url_precedence_flag_over_env_over_config(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COORDINATOR_REDIS_URL", UNREACHABLE)
    code, out, err = cli("status", "--json")
    assert out == ""
    assert code == 2 and "127.0.0.1:1" in err
    assert cli("--redis", cli.url, "status", "--json")[0] == 0
    monkeypatch.setenv("COORDINATOR_REDIS_URL", cli.url)
    cli.path.write_text(cli.path.read_text().replace(cli.url, UNREACHABLE))
    assert cli("status", "--json")[0] == 0


def test_unreachable_redis_fails_fast_without_the_password(cli: Cli) -> None:
    url = f"redis://ops:{URL_PASSWORD}@127.0.0.1:1/0"
    for argv in (["status"], ["events", "--follow"], ["rotate", "openai"], ["unpark", "openai", "acct-1"]):
        started = time.monotonic()
        code, out, err = cli("--redis", url, *argv)
        assert time.monotonic() - started < 3
        assert code == 2 and out == ""
        assert_one_error_line(err)
        assert "cannot reach Redis at redis://ops:***@127.0.0.1:1/0" in err
        assert_no_secret(err)
    for other in (f"redis+cluster://ops:{URL_PASSWORD}@127.0.0.1:1",
                  f"redis+sentinel://ops:{URL_PASSWORD}@127.0.0.1:1/mymaster"):
        # These clients come from the library's own connect(), with its timeouts and retry policy.
        started = time.monotonic()
        code, out, err = cli("--redis", other, "status")
        assert time.monotonic() - started < 15
        assert code == 2 and out == ""
        assert_one_error_line(err)
        assert "cannot reach Redis at redis+" in err and "<redis." not in err
        assert_no_secret(err)
    started = time.monotonic()
    proc = cli.subprocess("--redis", url, "park", "openai", "acct-1", timeout=20)
    assert time.monotonic() - started < 10
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_error_line(proc.stderr)
    assert_no_secret(proc.stderr)


def test_no_output_of_any_subcommand_contains_a_secret(cli: Cli) -> None:
    outputs = []
    for argv in (["check"], ["status"], ["park", "openai", "acct-3", "--for", "1m"], ["unpark", "openai", "acct-3"],
                 ["rotate", "openai"], ["events"]):
        for mode in ([], ["--json"]):
            code, out, err = cli(*mode, *argv)
            assert code == 0, err
            outputs += [out, err]
    assert_no_secret(*outputs)
    proc = cli.subprocess("check", "--json")
    assert proc.returncode == 0
    assert_no_secret(proc.stdout, proc.stderr)


# -- as a subprocess ---------------------------------------------------------------------------------------


def test_subprocess_park_and_status_json(cli: Cli) -> None:
    parked = cli.subprocess("park", "openai", "acct-1", "--for", "10m", "--reason", "ops", "--json")
    assert parked.returncode == 0, parked.stderr
    assert strict_json(parked.stdout)["active"] == "acct-2"
    status = cli.subprocess("--json", "status", "openai")
    assert status.returncode == 0, status.stderr
    (pool,) = strict_json(status.stdout)["pools"]
    assert pool["active"] == "acct-2" and pool["members"][0]["parked"]["reason"] == "ops"
    table = cli.subprocess("status", "openai")
    assert table.returncode == 0 and "acct-1" in table.stdout and "parked" in table.stdout
    misuse = cli.subprocess("park", "openai", "acct-9")
    assert misuse.returncode == 2 and misuse.stdout == ""
    assert_one_error_line(misuse.stderr)


def test_console_script_entry_point_is_the_cli_main() -> None:
    import coordinator.__main__ as entry

    assert entry.main is main


# -- the store methods --follow and --since rest on ----------------------------------------------------------


def test_pool_events_since_and_events_after(cli: Cli) -> None:
    with cli.coordinator() as coord:
        pool = coord.pool("openai")
        pool.park("acct-2", seconds=60)
        first = pool.events()
        assert [e.type for e in first] == ["created", "parked"]
        assert pool.events(since=first[-1].time) == [e for e in first if e.time >= first[-1].time]
        assert pool.events(since=first[-1].time + 0.001) == []
        assert pool.events_after("0-0") == first
        assert pool.events_after(first[0].id) == first[1:]
        started = time.monotonic()
        assert pool.events_after(first[-1].id, block=0.2) == []
        assert time.monotonic() - started >= 0.15
        pool.unpark("acct-2")
        (new,) = pool.events_after(first[-1].id, block=1)
        assert new.type == "unparked" and new.member == "acct-2"
        assert pool.events_after("$") == []
        with pytest.raises(ValueError):
            pool.events_after("yesterday")
        with pytest.raises(ValueError):
            pool.events(since=float("inf"))


def test_async_pool_events_since_and_events_after(cli: Cli) -> None:
    async def scenario() -> None:
        config = co.load_config(cli.path)
        async with co.AsyncCoordinator.from_config(config, timeout=5) as coord:
            pool = coord.pool("openai")
            await pool.park("acct-1", reason="x")
            events = await pool.events()
            assert await pool.events(since=events[-1].time + 0.001) == []
            assert await pool.events(since=events[0].time) == events
            assert await pool.events_after(events[0].id) == events[1:]
            waiter = asyncio.ensure_future(pool.events_after(events[-1].id, block=2))
            await asyncio.sleep(0.1)
            await pool.unpark("acct-1")
            (new,) = await waiter
            assert new.type == "unparked"

    asyncio.run(scenario())


def test_cli_on_redis_cluster(redis_cluster_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = f"cli{uuid.uuid4().hex[:10]}"
    path = tmp_path / "coordinator.toml"
    path.write_text(CONFIG.format(url=redis_cluster_url, prefix=prefix, inline="x", header="y"))
    assert main(["--config", str(path), "park", "openai", "acct-1", "--json"]) == 0
    assert strict_json(capsys.readouterr().out)["active"] == "acct-2"
    assert main(["--config", str(path), "park", "rr", "a", "--json"]) == 0
    capsys.readouterr()
    assert main(["--config", str(path), "events", "--json"]) == 0
    printed = [(e["pool"], e["type"]) for e in map(strict_json, capsys.readouterr().out.splitlines())]
    assert printed == [("openai", "created"), ("openai", "parked"), ("rr", "parked")]
    with co.Coordinator.from_config(path) as coord:
        pool = coord.pool("openai")
        last = pool.events()[-1]
        pool.unpark("acct-1")
        assert [e.type for e in pool.events_after(last.id, block=1)] == ["unparked"]

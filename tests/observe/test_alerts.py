"""`coordinator alerts` in this process (``run_alerts`` in a thread, and the CLI's ``main``) on real Redis
and on Redis Cluster: what the webhook receives, the group's life across a reset, its state, and misuse."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import coordinator as co
from coordinator.cli.main import main
from coordinator.observe.alerts import AlertOptions, run_alerts
from coordinator.observe.webhook import event_json as cli_event_json  # the CLI prints the same shape
from coordinator.observe.webhook import redact_url, scrubber

from .webhook_server import WebhookServer, wait_for

CONFIG = """\
[redis]
url = "{url}"
prefix = "{prefix}"

[pools.alpha]
members = [{{ id = "a1" }}, {{ id = "a2" }}, {{ id = "a3" }}]
cooldown = {{ rate_limited = "1h" }}

[pools.beta]
members = [{{ id = "b1" }}, {{ id = "b2" }}]

[pools.gamma]
members = [{{ id = "g1" }}, {{ id = "g2" }}]
"""


class Running:
    """One replica in a thread of this process."""

    def __init__(self, config: co.Config, url: str, options: AlertOptions) -> None:
        self.lines: list[str] = []
        self.stop = threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, args=(config, url, options), daemon=True)
        self.thread.start()
        wait_for(lambda: self.records("started") or self.code is not None, 20, "the replica to start")

    def _run(self, config: co.Config, url: str, options: AlertOptions) -> None:
        self.code = run_alerts(config, url, options, json_lines=True, out=self.lines.append, stop=self.stop)

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in map(json.loads, list(self.lines)) if r["event"] == kind]

    def close(self) -> int | None:
        self.stop.set()
        self.thread.join(timeout=20)
        return self.code


@pytest.fixture
def setup(redis_url: str, tmp_path: Path) -> Iterator[tuple[Path, co.Config, co.Coordinator]]:
    path = tmp_path / "coordinator.toml"
    path.write_text(CONFIG.format(url=redis_url, prefix=f"t{uuid.uuid4().hex[:10]}"))
    config = co.load_config(path)
    coord = co.Coordinator.from_config(config, staleness=0)
    try:
        yield path, config, coord
    finally:
        coord.close()


def test_json_is_the_events_json_shape_and_slack_a_readable_line(setup: Any) -> None:
    _path, config, coord = setup
    server = WebhookServer()
    replicas = [Running(config, config.redis.url, AlertOptions(webhook=server.url("/json"))),
                # Another group gets its own copy of every event.
                Running(config, config.redis.url, AlertOptions(webhook=server.url("/slack"), format="slack",
                                                               group="slack"))]
    try:
        alpha = coord.pool("alpha")
        sel = alpha.acquire()
        alpha.report_failure(sel, "rate_limited", retry_after=90)
        alpha.park("a3", reason="quota gone for today")
        alpha.unpark("a3")
        alpha.rotate(reason="suspected leak", seconds=600)
        events = alpha.events(limit=10)
        assert [e.type for e in events] == ["created", "failover", "parked", "unparked", "rotated"]
        wait_for(lambda: len(server.delivered()) == 10, 20, "both groups to deliver all five")
    finally:
        codes = [r.close() for r in replicas]
        server.stop()
    assert codes == [0, 0]
    posts = {(p.path, p.key): p.body for p in server.delivered()}
    for event in events:
        key = f"{config.redis.prefix}:alpha:{event.id}"
        assert posts[("/json", key)] == {**cli_event_json(event), "idempotency_key": key}
    texts = [p.body["text"] for p in sorted(server.delivered(), key=lambda p: p.at) if p.path == "/slack"]
    assert texts[0].startswith("*alpha*: created active a1")
    assert texts[1].startswith("*alpha*: failover a1 -> a2 (rate_limited) until ")
    assert " UTC" in texts[1]
    assert texts[2].startswith("*alpha*: parked member a3 until unparked reason: quota gone for today")
    assert texts[3].startswith("*alpha*: unparked member a3  (generation 4, ")
    assert texts[4].startswith("*alpha*: rotated a2 -> a3 until ") and "reason: suspected leak" in texts[4]
    assert all(set(p.body) == {"text"} for p in server.delivered() if p.path == "/slack")
    assert math.isinf(events[2].until or 0)


def test_a_reset_re_creates_the_group_and_its_event_is_delivered(setup: Any) -> None:
    _path, config, coord = setup
    server = WebhookServer()
    replica = Running(config, config.redis.url, AlertOptions(webhook=server.url()))
    try:
        beta = coord.pool("beta")
        beta.park("b2")
        wait_for(lambda: len(server.delivered()) == 2, 20, "created and parked")
        beta.reset(reason="repair")  # deletes the stream, and the group with it
        wait_for(lambda: [p.body["type"] for p in server.delivered()][2:] == ["reset"], 20, "the reset event")
        assert replica.records("group_created")
        beta.unpark("b2")
        wait_for(lambda: len(server.delivered()) == 4, 20, "the events after the reset")
    finally:
        assert replica.close() == 0
        server.stop()
    assert [p.body["type"] for p in server.delivered()] == ["created", "parked", "reset", "unparked"]


def test_from_start_delivers_what_the_stream_already_holds(setup: Any) -> None:
    _path, config, coord = setup
    coord.pool("gamma").park("g2", reason="before any replica")
    server = WebhookServer()
    replica = Running(config, config.redis.url, AlertOptions(webhook=server.url(), from_start=True))
    try:
        wait_for(lambda: len(server.delivered()) == 2, 20, "the stream's two events")
    finally:
        replica.close()
        server.stop()
    assert [p.body["type"] for p in server.delivered()] == ["created", "parked"]


def test_status_shows_each_pools_group_and_its_replicas(setup: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, config, coord = setup
    server = WebhookServer()
    replica = Running(config, config.redis.url, AlertOptions(webhook=server.url(), consumer="replica-1"))
    try:
        coord.pool("alpha").park("a3")
        wait_for(lambda: len(server.delivered()) == 2, 20, "two events")
        capsys.readouterr()
        assert main(["--config", str(path), "alerts", "--status", "--json"]) == 0
        state = json.loads(capsys.readouterr().out)
        assert main(["--config", str(path), "alerts", "--status"]) == 0
        text = capsys.readouterr().out
    finally:
        replica.close()
        server.stop()
    alpha = next(p for p in state["pools"] if p["pool"] == "alpha")
    assert state["group"] == "alerts"
    assert alpha["group_exists"] and alpha["pending"] == 0 and alpha["lag"] == 0
    assert [c["name"] for c in alpha["consumers"]] == ["replica-1"]
    assert "alpha: 0 pending, 0 not yet read" in text and "replica-1: 0 pending" in text


def test_misuse_exits_2_with_one_line_and_never_shows_the_webhook(setup: Any, capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    path, _config, _coord = setup
    secret = "https://user:SECRETPW@hooks.example/services/T0/B0/SECRETTOKEN?sig=SECRETSIG"
    memory = tmp_path / "memory.toml"
    memory.write_text(CONFIG.format(url="memory://", prefix="x"))
    cases = [
        (["alerts"], "alerts needs --webhook URL"),
        (["alerts", "--webhook", "ftp://SECRETPW@host/x"], "--webhook must be an http:// or https:// URL"),
        (["alerts", "--webhook", secret, "--group", "no spaces"], "--group 'no spaces'"),
        (["alerts", "--webhook", secret, "--claim-after", "soon"], "argument --claim-after: invalid duration"),
        (["alerts", "--webhook", secret, "--format", "xml"], "argument --format: invalid choice"),
        (["--config", str(memory), "alerts", "--webhook", secret], "keeps state inside one process"),
        (["--redis", "redis://127.0.0.1:1/0", "alerts", "--webhook", secret], "cannot reach Redis"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        started = time.monotonic()
        code = main(["--config", str(path), *argv])
        out, err = capsys.readouterr()
        assert code == 2, argv
        assert err.count("\n") == 1 and message in err, err
        assert "SECRET" not in out + err
        assert time.monotonic() - started < 5


def test_the_webhook_url_is_shown_without_its_credentials() -> None:
    assert redact_url("https://hooks.slack.com/services/T0/B0/XYZ") == "https://hooks.slack.com/***"
    assert redact_url("https://u:p@example.com:8443/?token=abc") == "https://example.com:8443/***"
    assert redact_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert redact_url("not a url") == "***"
    scrub = scrubber("https://u:pw-123@example.com/hook/TOKEN-456?sig=SIG-789")
    assert scrub("POST https://u:pw-123@example.com/hook/TOKEN-456?sig=SIG-789 failed; sig=SIG-789 TOKEN-456") \
        == "POST *** failed; *** ***"


def test_on_cluster_each_pool_stream_has_its_own_group(redis_cluster_url: str, tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(CONFIG.format(url=redis_cluster_url, prefix=f"t{uuid.uuid4().hex[:10]}"))
    config = co.load_config(path)
    server = WebhookServer()
    replicas = [Running(config, redis_cluster_url, AlertOptions(webhook=server.url(), consumer=f"c{i}"))
                for i in range(2)]
    try:
        with co.Coordinator.from_config(config, staleness=0) as coord:
            for name in ("alpha", "beta", "gamma"):
                pool = coord.pool(name)
                pool.park(pool.config.members[1].id, reason=name)
            expected = {f"{config.redis.prefix}:{name}:{e.id}" for name in ("alpha", "beta", "gamma")
                        for e in coord.pool(name).events()}
        assert len(expected) == 6
        wait_for(lambda: set(server.keys()) == expected, 30, "every pool's events")
    finally:
        for r in replicas:
            r.close()
        server.stop()
    assert all(n == 1 for n in server.keys().values())


def test_a_webhook_slower_than_claim_after_is_not_taken_for_a_dead_replica(setup: Any) -> None:
    """Each POST takes 2.5 s, claim-after is 1 s: the replica sending keeps its entry claimed, so the
    other replica never takes it over and nothing is sent twice."""
    _path, config, coord = setup
    server = WebhookServer(delay=2.5)
    replicas = [Running(config, config.redis.url, AlertOptions(webhook=server.url(), consumer=f"s{i}",
                                                               claim_after=1.0)) for i in range(2)]
    try:
        for member in ("a2", "a3"):
            coord.pool("alpha").park(member, reason="slow")
        wait_for(lambda: len(server.delivered()) == 3, 30, "three slow deliveries")
    finally:
        for r in replicas:
            r.close()
        server.stop()
    assert all(n == 1 for n in server.keys().values()) and len(server.keys()) == 3
    assert not any(r.records("claimed") for r in replicas)


def test_a_redis_outage_is_waited_out_and_an_emptied_redis_is_followed(tmp_path: Path) -> None:
    from coordinator.testing import RedisServer

    with RedisServer() as redis_server:
        path = tmp_path / "coordinator.toml"
        path.write_text(CONFIG.format(url=redis_server.url, prefix="own"))
        config = co.load_config(path)
        server = WebhookServer()
        replica = Running(config, redis_server.url, AlertOptions(webhook=server.url()))
        try:
            with co.Coordinator.from_config(config, staleness=0) as coord:
                coord.pool("beta").park("b2")
            wait_for(lambda: len(server.delivered()) == 2, 20, "created and parked")
            redis_server.stop()
            wait_for(lambda: replica.records("redis_error"), 20, "the replica to notice")
            redis_server.start()  # empty: the stream and its group are gone
            with co.Coordinator.from_config(config, staleness=0) as coord:
                coord.pool("beta").park("b1", reason="after the restart")
            wait_for(lambda: len(server.delivered()) == 4, 30, "the events written after the restart")
        finally:
            assert replica.close() == 0
            server.stop()
    bodies = [p.body for p in server.delivered()]
    assert [b["type"] for b in bodies] == ["created", "parked", "created", "parked"]
    assert bodies[3]["reason"] == "after the restart" and bodies[0]["epoch"] != bodies[2]["epoch"]

"""`coordinator metrics`: /metrics fetched over HTTP from the exporter (in a thread, and as a real
process) and parsed with prometheus_client's own parser, against real redis-servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import coordinator as co
from coordinator.cli.main import main
from coordinator.observe.exporter import run_metrics
from coordinator.testing import RedisServer, free_port

from .metrics_text import parse, value
from .webhook_server import wait_for

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-exporter-SECRET-0123"
CONFIG = """\
[redis]
url = "{url}"
prefix = "{prefix}"

[pools.alpha]
members = [{{ id = "a1", api_key = "{secret}" }}, {{ id = "a2" }}, {{ id = "a3" }}]
cooldown = {{ rate_limited = "1h" }}

[pools.beta]
members = [{{ id = "b1" }}, {{ id = "b2" }}]
"""


class Exporter:
    def __init__(self, config: co.Config, url: str) -> None:
        self.stop = threading.Event()
        self.ports: list[int] = []
        self.lines: list[str] = []
        self.thread = threading.Thread(target=run_metrics, args=(config, url), daemon=True, kwargs={
            "port": 0, "out": self.lines.append, "stop": self.stop, "ready": self.ports.append})
        self.thread.start()
        wait_for(lambda: self.ports, 20, "the exporter to listen")

    def scrape(self) -> tuple[str, dict[str, Any]]:
        response = httpx.get(f"http://127.0.0.1:{self.ports[0]}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text, parse(response.text)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


@pytest.fixture
def setup(redis_url: str, tmp_path: Path) -> Iterator[tuple[Path, co.Config]]:
    path = tmp_path / "coordinator.toml"
    path.write_text(CONFIG.format(url=redis_url, prefix=f"t{uuid.uuid4().hex[:10]}", secret=SECRET))
    yield path, co.load_config(path)


def state_of(samples: dict[str, Any], pool: str, member: str) -> str:
    (state,) = [s for s in ("active", "ready", "cooling", "parked")
                if value(samples, "coordinator_member_state", pool=pool, member=member, state=s) == 1]
    return state


def test_the_fleet_state_as_metrics(setup: Any) -> None:
    _path, config = setup
    with co.Coordinator.from_config(config, staleness=0) as coord:
        alpha, beta = coord.pool("alpha"), coord.pool("beta")
        alpha.report_failure(alpha.acquire(), "rate_limited", retry_after=600)
        alpha.park("a3", reason="forever")
        beta.park("b1", seconds=3600)
        beta.park("b2", seconds=7200)
        alpha_gen = alpha.snapshot().generation
    exporter = Exporter(config, config.redis.url)
    try:
        text, samples = exporter.scrape()
    finally:
        exporter.close()
    assert [state_of(samples, "alpha", m) for m in ("a1", "a2", "a3")] == ["cooling", "active", "parked"]
    assert [state_of(samples, "beta", m) for m in ("b1", "b2")] == ["parked", "parked"]
    # Every member has exactly one state set, and all four are present (0 for the other three).
    assert len(samples["coordinator_member_state"]) == 5 * 4
    assert 590 < value(samples, "coordinator_member_recovery_seconds", pool="alpha", member="a1") <= 600
    assert value(samples, "coordinator_member_recovery_seconds", pool="alpha", member="a2") == 0
    # Parked until unparked: no recovery time at all.
    assert not [k for k in samples["coordinator_member_recovery_seconds"] if ("member", "a3") in k]
    assert 7190 < value(samples, "coordinator_member_recovery_seconds", pool="beta", member="b2") <= 7200
    assert value(samples, "coordinator_pool_generation", pool="alpha") == alpha_gen == 3
    assert value(samples, "coordinator_pool_exhausted", pool="alpha") == 0
    assert value(samples, "coordinator_pool_exhausted", pool="beta") == 1
    assert value(samples, "coordinator_pool_up", pool="beta") == 1
    assert value(samples, "coordinator_redis_up") == 1
    assert all(name.startswith("coordinator_") for name in samples)
    assert SECRET not in text


def test_a_redis_outage_shows_as_redis_up_0(tmp_path: Path) -> None:
    with RedisServer() as server:
        path = tmp_path / "coordinator.toml"
        path.write_text(CONFIG.format(url=server.url, prefix="own", secret=SECRET))
        config = co.load_config(path)
        with co.Coordinator.from_config(config) as coord:
            coord.pool("beta").park("b2")
        exporter = Exporter(config, server.url)
        try:
            assert value(exporter.scrape()[1], "coordinator_pool_generation", pool="beta") == 2
            server.stop()
            _, samples = exporter.scrape()
            assert value(samples, "coordinator_redis_up") == 0
            assert "coordinator_member_state" not in samples
            server.start()  # back, empty: the pools have no state until a worker acts
            _, samples = exporter.scrape()
            assert value(samples, "coordinator_redis_up") == 1
            assert value(samples, "coordinator_pool_generation", pool="beta") == 0
        finally:
            exporter.close()


def test_the_metrics_command_serves_until_sigterm(setup: Any) -> None:
    path, _config = setup
    port = free_port()
    argv = [sys.executable, "-m", "coordinator", "--config", str(path), "metrics", "--port", str(port)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        def scrape() -> str | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.TransportError:
                return None

        text = wait_for(scrape, 30, "the exporter to answer")
        assert value(parse(text), "coordinator_redis_up") == 1
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert f"serving http://127.0.0.1:{port}/metrics" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_a_port_in_use_is_misuse(setup: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path, _config = setup

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--config", str(path), "metrics", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"coordinator: error: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1

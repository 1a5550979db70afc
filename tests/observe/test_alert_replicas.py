"""`coordinator alerts` as real replicas (`python -m coordinator alerts`) on a real redis-server, posting
to a loopback webhook: every event delivered, a killed replica's entries taken over, a webhook outage
waited out, and the webhook URL's credentials never printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import coordinator as co

from .webhook_server import WebhookServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hook-TOKEN-SECRET-0099"
PASSWORD = "pw-SECRET-0098"
CONFIG = """\
[redis]
url = "{url}"
prefix = "{prefix}"

[pools.alpha]
members = [{{ id = "a1" }}, {{ id = "a2" }}, {{ id = "a3" }}]

[pools.beta]
members = [{{ id = "b1" }}, {{ id = "b2" }}, {{ id = "b3" }}]
"""


class Replica:
    """One `coordinator alerts --json` process; its output lines are parsed as they come."""

    def __init__(self, config: Path, webhook: str, name: str, *extra: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "--config", str(config), "alerts", "--webhook", webhook,
             "--json", "--name", name, *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True).start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in list(self.lines)]
        return [r for r in found if kind is None or r["event"] == kind]

    def text(self) -> str:
        return "\n".join(self.lines + self.errors)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path) -> Iterator[tuple[Path, co.Coordinator, redis.Redis, str]]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    config = tmp_path / "coordinator.toml"
    config.write_text(CONFIG.format(url=redis_url, prefix=prefix))
    coord = co.Coordinator.from_config(config, staleness=0)
    for pool in ("alpha", "beta"):
        coord.pool(pool).acquire()  # writes `created` before any replica starts: a new group skips it
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield config, coord, raw, prefix
    finally:
        coord.close()
        raw.close()


def secret_url(server: WebhookServer) -> str:
    return f"http://alerts:{PASSWORD}@127.0.0.1:{server.port}/hook/{TOKEN}?token={TOKEN}"


def transitions(coord: co.Coordinator, count: int, start: int = 0) -> list[str]:
    """``count`` transitions, alternating pools: park then unpark a non-active member, one event each."""
    ids = []
    for i in range(start, start + count):
        pool = coord.pool("alpha" if i % 2 == 0 else "beta")
        member = pool.config.members[2].id
        result = pool.park(member, reason=f"t{i}") if (i // 2) % 2 == 0 else pool.unpark(member)
        assert result.transitioned and len(result.events) == 1
        ids.append(f"{pool.name}:{pool.events(limit=1)[0].id}")
    return ids


def pending(raw: redis.Redis, prefix: str) -> dict[str, int]:
    """Pending entries per consumer, over both pools' streams."""
    per: dict[str, int] = {}
    for pool in ("alpha", "beta"):
        for consumer in raw.xinfo_consumers(co.KeySchema(prefix).events(pool), "alerts"):
            per[consumer["name"]] = per.get(consumer["name"], 0) + int(consumer["pending"])
    return per


def started(replicas: list[Replica]) -> None:
    for r in replicas:
        wait_for(lambda r=r: r.records("started") or r.proc.poll() is not None, 30, f"{r.name} to start")
        assert r.proc.poll() is None, r.text()


@pytest.mark.slow
def test_three_replicas_one_killed_halfway_deliver_every_event(fleet: Any) -> None:
    config, coord, raw, prefix = fleet
    # A slow receiver: each delivery is in flight for a while, so the kill catches one mid-way.
    server = WebhookServer(delay=0.1)
    replicas = [Replica(config, secret_url(server), f"r{i}", "--claim-after", "1s", "--retry-max", "0.5s")
                for i in range(3)]
    try:
        started(replicas)
        expected = transitions(coord, 15)
        # Kill a replica while it holds an entry it has not acknowledged: mid-delivery.
        holders = wait_for(lambda: [n for n, c in pending(raw, prefix).items() if c > 0], 20, "an entry in flight")
        victim = next(r for r in replicas if r.name == holders[0])
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=10)
        expected += transitions(coord, 15, start=15)
        key_of = {e: f"{prefix}:{e}" for e in expected}
        wait_for(lambda: set(key_of.values()) <= set(server.keys()), 60, "every event at the webhook")
        wait_for(lambda: not any(pending(raw, prefix).values()), 30, "every entry acknowledged")

        keys = server.keys()
        duplicates = sum(n - 1 for n in keys.values())
        print(f"\nalerts, 3 replicas, 30 transitions, one SIGKILLed halfway: delivered {len(keys)} distinct, "
              f"{sum(keys.values())} POSTs, duplicates {duplicates}")
        assert set(keys) == set(key_of.values())
        assert duplicates <= 1
        # The entries the dead replica held were taken over by a survivor.
        survivors = [r for r in replicas if r is not victim]
        assert any(r.records("claimed") for r in survivors)
        # The body matches the key and the stream's event.
        for post in server.delivered():
            assert post.key == f"{prefix}:{post.body['pool']}:{post.body['id']}" == post.body["idempotency_key"]
        for r in survivors:
            r.proc.send_signal(signal.SIGTERM)
            assert r.proc.wait(timeout=20) == 0, r.text()
            assert r.records("stopped")
        for r in replicas:
            assert TOKEN not in r.text() and PASSWORD not in r.text()
            assert "/hook" not in r.text()
    finally:
        for r in replicas:
            r.close()
        server.stop()


@pytest.mark.slow
def test_a_webhook_down_for_five_seconds_loses_nothing(fleet: Any) -> None:
    config, coord, raw, prefix = fleet
    import time

    down_since = time.monotonic()
    outage = {"503": True}
    server = WebhookServer(answer=lambda: 503 if outage["503"] else 200)
    replicas = [Replica(config, secret_url(server), f"d{i}", "--retry-max", "0.5s") for i in range(2)]
    try:
        started(replicas)
        down_since = time.monotonic()
        expected = {f"{prefix}:{e}" for e in transitions(coord, 10)}
        # First half: the webhook answers 503.
        wait_for(lambda: len(server.failed()) >= 2 and time.monotonic() - down_since >= 2.5, 20, "503s for 2.5 s")
        # Second half: nothing listens; connections are refused.
        server.stop()
        refused = time.monotonic()
        wait_for(lambda: any("Connect" in r["error"] for x in replicas for r in x.records("retrying"))
                 and time.monotonic() - down_since >= 5.0, 20, "refused connections until 5 s")
        assert not server.delivered()
        outage["503"] = False
        server.start()
        wait_for(lambda: expected <= set(server.keys()), 30, "every event after the outage")
        wait_for(lambda: not any(pending(raw, prefix).values()), 30, "every entry acknowledged")
        keys = server.keys()
        retries = sum(len(r.records("retrying")) for r in replicas)
        print(f"\nalerts, webhook down {time.monotonic() - down_since:.1f}s (503 then refused "
              f"{time.monotonic() - refused:.1f}s): 10 transitions, delivered {len(keys)} distinct, "
              f"duplicates {sum(n - 1 for n in keys.values())}, {len(server.failed())} 503s, {retries} retries")
        assert set(keys) == expected
        assert all(n == 1 for n in keys.values())
        for r in replicas:
            assert TOKEN not in r.text() and PASSWORD not in r.text()
    finally:
        for r in replicas:
            r.close()
        server.stop()

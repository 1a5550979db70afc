"""`coordinator demo`, the README's first command, and the fake upstream subcommand."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "COORDINATOR_REDIS_URL"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "coordinator", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def check_summary(summary: dict) -> None:
    assert summary["ok"] is True
    assert summary["errors"] == 0, summary["error_samples"]
    assert summary["events"] == summary["transition_events"] >= 2
    assert summary["event_types"][:2] == ["failover", "failover"]
    assert summary["active"] == "acct-3"
    assert summary["requests"] > 0
    # Only requests already in flight when a member answered 429 may reach it afterwards.
    assert summary["requests_to_cooling_member"] <= summary["workers"] * summary["transition_events"]


def test_demo_on_the_embedded_default(tmp_path):
    result = run_cli("demo", "--duration", "3", "--json", env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["store"].startswith("memory")
    check_summary(summary)


def test_demo_with_worker_processes_on_real_redis(redis_url):
    result = run_cli("demo", "--duration", "3", "--workers", "4", "--json", "--redis", redis_url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["store"].startswith("redis")
    check_summary(summary)


def test_demo_misuse_exits_2_with_one_line():
    for args in (["--workers", "0"], ["--duration", "soon"], ["--worker"]):
        result = run_cli("demo", *args, "--config", "/nonexistent.toml")
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1 and "coordinator: error:" in result.stderr


def test_upstream_subcommand_serves_the_demo_accounts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "coordinator", "upstream", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("fake upstream listening on")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        statuses = {key: httpx.post(url, json={"model": "m"}, headers={"authorization": f"Bearer {key}"}).status_code
                    for key in ("sk-fake-acct-1", "sk-fake-acct-2", "sk-fake-acct-3", "sk-other")}
        assert statuses == {"sk-fake-acct-1": 429, "sk-fake-acct-2": 200, "sk-fake-acct-3": 200, "sk-other": 401}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_readme_starts_with_the_two_commands():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in readme.split("```")[1::2] if b.startswith("sh\n")]
    assert "coordinator demo" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci, "CI runs exactly the README's test command"


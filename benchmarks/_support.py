"""Helpers of the benchmark runner: loopback upstreams in their own processes, the machine
description and small statistics (the throwaway redis-server is coordinator.testing's). Imports
nothing from tests/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from typing import Any

import redis

from coordinator.testing import RedisServer

__all__ = ["RedisServer"]

# -- redis-server ------------------------------------------------------------------------------------


def redis_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or "unknown"


# -- the machine -------------------------------------------------------------------------------------


def source_version() -> str:
    """The commit of the measured checkout (read-only git commands), and whether the library differs from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        changed = subprocess.run(["git", "-C", root, "diff", "--quiet", "HEAD", "--", "coordinator", "lua"],
                                 capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown (not a git checkout)"
    return commit + (" with local changes to coordinator/ or lua/" if changed else "")


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import httpx

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count() or "?"),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis_server": redis_version(),
        "redis_py": redis.__version__,
        "httpx": httpx.__version__,
        "commit": source_version(),
    }


# -- statistics --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


# -- loopback upstreams in their own process -------------------------------------------------------
#
# The upstream runs in a separate process so that it never competes with the measured client for
# the GIL; both compared variants talk to the very same server.

BENCH_KEY = "sk-bench-0001"
COMPLETION = json.dumps({
    "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": "gpt-bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
}).encode()


def _response(status: int, body: bytes) -> bytes:
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "x-ratelimit-remaining-requests: 57\r\nx-ratelimit-reset-requests: 1s\r\n\r\n")
    return head.encode() + body


_OK = _response(200, COMPLETION)
_UNAUTHORIZED = _response(401, b'{"error":{"message":"bad key","type":"invalid_request_error",'
                               b'"code":"invalid_api_key","param":null}}')


class _FastHTTP(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive server: every request gets one canned chat completion (or a 401 when
    the bench key is missing). One event loop, no per-request thread, one write per response."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17: stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            self.buf = self.buf[total:]
            ok = b"bearer " + BENCH_KEY.encode() in head
            self.transport.write(_OK if ok else _UNAUTHORIZED)


def _serve_fast(conn: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_FastHTTP, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn.send(f"http://127.0.0.1:{port}")
        await loop.run_in_executor(None, conn.recv)  # any message, or EOF: stop
        server.close()

    with contextlib.suppress(EOFError):
        asyncio.run(main())


def _serve_fake(conn: Any) -> None:
    from coordinator.testing import FakeUpstream

    with FakeUpstream({BENCH_KEY: "ok"}) as upstream:
        conn.send(upstream.url)
        with contextlib.suppress(EOFError):
            conn.recv()


class UpstreamProcess:
    """``kind`` "fast" (the minimal asyncio server above) or "fake" (coordinator's FakeUpstream, a
    ThreadingHTTPServer), each in a process of its own."""

    def __init__(self, kind: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        target = _serve_fast if kind == "fast" else _serve_fake
        self._proc = ctx.Process(target=target, args=(child,), daemon=True, name=f"upstream-{kind}")
        self._proc.start()
        child.close()
        if not self._conn.poll(30):
            self.close()
            raise RuntimeError(f"{kind} upstream did not start")
        self.url: str = self._conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        self._conn.close()

    def __enter__(self) -> UpstreamProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

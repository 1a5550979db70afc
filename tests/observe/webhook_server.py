"""A loopback webhook for the alert tests: records every POST (its Idempotency-Key and body) and answers
what the test says; it can also stop listening and come back on the same port."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Post:
    key: str
    body: Any
    path: str
    status: int
    at: float


class WebhookServer:
    def __init__(self, answer: Callable[[], int] = lambda: 200, delay: float = 0.0) -> None:
        #: Decides each answer's status (called for every POST).
        self.answer = answer
        #: Seconds each request takes: a slow receiver keeps deliveries in flight.
        self.delay = delay
        self.posts: list[Post] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                if owner.delay:
                    time.sleep(owner.delay)
                status = owner.answer()
                with owner._lock:
                    owner.posts.append(Post(self.headers.get("idempotency-key") or "", json.loads(raw), self.path,
                                            status, time.monotonic()))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        """Stops listening: connections are refused until ``start()``."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self) -> list[Post]:
        with self._lock:
            return [p for p in self.posts if 200 <= p.status < 300]

    def failed(self) -> list[Post]:
        with self._lock:
            return [p for p in self.posts if not 200 <= p.status < 300]

    def keys(self) -> Counter[str]:
        return Counter(p.key for p in self.delivered())


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Polls ``condition`` until it is truthy (returning it) or fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)

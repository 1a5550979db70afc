"""A fake OpenAI- and Anthropic-compatible upstream on loopback, for the demo, tests and benchmarks.

Each account is recognised by its API key (``Authorization: Bearer KEY`` or ``x-api-key: KEY``) and
behaves as scripted: healthy, rate limited, quota exhausted, failing after N requests, 401, 500, 503,
529, 400, context length, content policy, model not found, and the faults of a misbehaving provider
(never answering, slow headers, a slow first token, a stream cut, stalled, malformed or carrying an
error event after N events). It answers ``POST /v1/chat/completions`` (OpenAI, JSON or SSE),
``POST /v1/responses`` (OpenAI Responses, SSE) and ``POST /v1/messages`` (Anthropic, JSON or SSE) with
bodies the official SDKs parse, and records what it saw per key: counts, statuses, arrival times,
and the assistant prefill of each request (``prefills(key)``). A request whose messages end with an
assistant message is a continuation: an account that accepts prefills (the default) streams the rest
of its answer after that text, one that refuses them (``set(key, ..., prefill="reject")``) answers 400
as Anthropic does for a model without prefill.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Behaviours a key can have. ``after:N:<behaviour>`` serves N requests fine, then behaves so;
#: ``first:N:<behaviour>`` behaves so for N requests, then serves fine.
BEHAVIOURS = (
    "ok",
    "ok_last_request",  # 200 with x-ratelimit-remaining-requests: 0 (and anthropic-ratelimit-*-remaining: 0)
    "rate_limited",  # 429 rate_limit_exceeded with every reset header: retry-after, OpenAI and Anthropic
    "rate_limited_retry_after",  # 429 with only retry-after: <seconds>
    "rate_limited_http_date",  # 429 with only retry-after: <HTTP date>
    "rate_limited_ms",  # 429 with only retry-after-ms
    "rate_limited_openai",  # 429 with only x-ratelimit-reset-requests / -tokens (e.g. "1m30s")
    "rate_limited_anthropic",  # 429 with only anthropic-ratelimit-requests-reset (RFC 3339)
    "quota",  # 429 insufficient_quota, resets an hour away
    "auth",  # 401
    "server_error",  # 500
    "overloaded",  # 529 (Anthropic overloaded_error)
    "bad_request",  # 400 invalid_request_error
    "context_length",  # 400 context_length_exceeded / "prompt is too long"
    "content_policy",  # 400 content_policy_violation
    "model_not_found",  # 404
    "stream_break",  # a stream that sends one chunk and then drops the connection
    "unavailable",  # 503 service unavailable
    "too_large",  # OpenAI's 429 "Request too large for ... tokens per min": no key of the pool can serve it
    # Faults; ``delay`` (seconds) and ``events`` (N) are set per account with ``set(...)``:
    "silent",  # reads the request and never answers (until the server stops)
    "slow_headers",  # answers after ``delay``
    "slow_first_token",  # a stream whose headers and preamble come at once, its first content after ``delay``
    "cut",  # a stream that drops the connection after ``events`` events
    "stall",  # a stream that goes quiet for ``delay`` after ``events`` events, then finishes
    "malformed",  # a stream whose event number ``events`` + 1 is not JSON
    "error_event",  # a stream with an in-band error after ``events`` events (Anthropic overloaded_error)
    "no_terminal",  # a stream that ends cleanly but without its terminal event
)
_STREAM_FAULTS = frozenset({"slow_first_token", "cut", "stall", "malformed", "error_event", "no_terminal"})


@dataclass
class Account:
    behaviour: str = "ok"
    retry_after: float = 1.0
    delay: float = 0.0
    events: int = 0
    served: int = 0
    #: monotonic time until which this account told callers (with a 429) to stay away
    resting_until: float = 0.0
    #: "accept": a request ending in an assistant message is continued; "reject": answered with a 400.
    prefill: str = "accept"


@dataclass
class UpstreamStats:
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    #: Request paths as they arrived (with their query).
    paths: Counter[str] = field(default_factory=Counter)
    #: Per key, the monotonic time each request arrived (before it was answered, or not).
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    #: Requests that arrived at an account inside a rest window it had already announced with a 429.
    hit_while_cooling: int = 0
    #: Per key, the assistant prefill of each request in arrival order (None: the request had none).
    prefills: dict[str, list[str | None]] = field(default_factory=dict)


def _openai_error(status: int, kind: str, code: str | None, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


# behaviour -> (status, (anthropic type, message), (openai type, code, message))
_ERRORS: dict[str, tuple[int, tuple[str, str], tuple[str, str | None, str]]] = {
    "auth": (401, ("authentication_error", "invalid x-api-key"),
             ("invalid_request_error", "invalid_api_key", "Incorrect API key provided")),
    "server_error": (500, ("api_error", "Internal server error"), ("server_error", None, "The server had an error")),
    "overloaded": (529, ("overloaded_error", "Overloaded"), ("server_error", None, "Overloaded")),
    "unavailable": (503, ("api_error", "Service unavailable"), ("server_error", None, "Service unavailable")),
    "bad_request": (400, ("invalid_request_error", "messages: field required"),
                    ("invalid_request_error", None, "'messages' is a required property")),
    "context_length": (400, ("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
                       ("invalid_request_error", "context_length_exceeded",
                        "This model's maximum context length is 128000 tokens.")),
    "content_policy": (400, ("invalid_request_error", "Output blocked by content filtering policy"),
                       ("invalid_request_error", "content_policy_violation",
                        "Your request was rejected as a result of our safety system.")),
    "model_not_found": (404, ("not_found_error", "model: {model}"),
                        ("invalid_request_error", "model_not_found",
                         "The model `{model}` does not exist or you do not have access to it.")),
}


def _rfc3339(seconds_from_now: float) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return moment.isoformat().replace("+00:00", "Z")


def _go_duration(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


def _reset_headers(behaviour: str, retry_after: float) -> dict[str, str]:
    """The reset headers a 429 of this flavour carries, each saying ``retry_after`` seconds."""
    every = {
        "retry-after": f"{retry_after:g}",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": _go_duration(retry_after),
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": _rfc3339(retry_after),
    }
    only = {
        "rate_limited_retry_after": {"retry-after": every["retry-after"]},
        "rate_limited_http_date": {"retry-after": formatdate(time.time() + retry_after, usegmt=True)},
        "rate_limited_ms": {"retry-after-ms": f"{retry_after * 1000:g}"},
        "rate_limited_openai": {key: every[key] for key in ("x-ratelimit-remaining-requests",
                                                            "x-ratelimit-reset-requests")},
        "rate_limited_anthropic": {key: every[key] for key in ("anthropic-ratelimit-requests-remaining",
                                                               "anthropic-ratelimit-requests-reset")},
    }
    return only.get(behaviour, every)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a keep-alive client's delayed ACK
    # would stall every response by tens of milliseconds.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing --------------------------------------------------------------------------------

    _on_send: Any = None
    #: Pieces of the answer the request's prefill already holds (a continuation streams the rest).
    _skip: int = 0

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        if self._on_send is not None:
            self._on_send(status)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_sse(self, events: list[tuple[str | None, str]], break_after: int | None = None,
                  fault: str = "", at: int = 0, delay: float = 0.0, anthropic: bool = False) -> None:
        if self._on_send is not None:
            self._on_send(200)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        if fault == "slow_first_token":
            at = next(i for i, (name, data) in enumerate(events) if _has_content(name, data))
        if fault == "cut":
            break_after = at
        if fault == "no_terminal":
            # Chat Completions ends with a finish_reason chunk and [DONE]; the others with one event.
            events = events[:-2] if events[-1][1] == "[DONE]" else events[:-1]
        for i, (name, data) in enumerate(events):
            if break_after is not None and i >= break_after:
                # Drop the connection before the closing chunk, as a crashed upstream would.
                self.wfile.flush()
                self.close_connection = True
                return
            if i == at and fault in ("stall", "slow_first_token") and self.server.upstream.pause(delay):
                return
            if i == at and fault == "malformed":
                self._write_chunk(f"event: {name}\ndata: {{not json\n\n" if name else "data: {not json\n\n")
            if i == at and fault == "error_event":
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                if anthropic:
                    self._write_chunk(f"event: error\ndata: {json.dumps(error)}\n\n")
                else:
                    body = {"error": {"message": "The server is overloaded", "type": "server_error", "code": None}}
                    self._write_chunk(f"data: {json.dumps(body)}\n\n")
                self.close_connection = True
                self.wfile.write(b"0\r\n\r\n")
                return
            prefix = f"event: {name}\n" if name else ""
            self._write_chunk(f"{prefix}data: {data}\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, text: str) -> None:
        payload = text.encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": {"message": "not found", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        with self.server.upstream._lock:
            self.server.upstream.stats.paths[self.path] += 1
        path = self.path.partition("?")[0].rstrip("/")
        anthropic = path.endswith("/v1/messages")
        responses = path.endswith("/v1/responses")
        if not anthropic and not responses and not path.endswith("/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        auth = self.headers.get("authorization", "")
        key = self.headers.get("x-api-key") or (auth[7:] if auth.lower().startswith("bearer ") else "")
        upstream = self.server.upstream
        prefill = _prefill_of(body)
        behaviour, retry_after = upstream.next_behaviour(key, prefill)
        account = upstream.account(key)
        model = str(body.get("model") or "unknown-model")
        stream = bool(body.get("stream"))
        self._skip = _continues_at(upstream.pieces, prefill)
        rest = 3600.0 if behaviour == "quota" else retry_after if behaviour.startswith("rate_limited") else 0.0
        # Counted before the first byte goes out: a test that has its answer sees it counted.
        self._on_send = lambda status: upstream.record(key, status, rest)
        if behaviour == "silent":
            upstream.pause(None)
            self.close_connection = True
            return
        if behaviour == "slow_headers" and upstream.pause(account.delay):
            return
        if prefill is not None and account.prefill == "reject":
            message = ("This model does not support assistant message prefill. "
                       "The conversation must end with a user message.")
            self._send_json(400, _anthropic_error("invalid_request_error", message) if anthropic else
                            _openai_error(400, "invalid_request_error", None, message))
            return
        if responses:
            events = _responses_stream(model, upstream.pieces)
            fault = behaviour if behaviour in _STREAM_FAULTS else ""
            self._send_sse(events, fault=fault, at=account.events, delay=account.delay)
            return
        if stream and behaviour in _STREAM_FAULTS:
            events = self._anthropic_stream(model) if anthropic else self._openai_stream(model)
            self._send_sse(events, fault=behaviour, at=account.events, delay=account.delay, anthropic=anthropic)
            return
        self._respond("ok" if behaviour in ("slow_headers", *_STREAM_FAULTS) else behaviour, retry_after,
                      anthropic, model, stream)

    # -- behaviours ------------------------------------------------------------------------------

    def _respond(self, behaviour: str, retry_after: float, anthropic: bool, model: str, stream: bool) -> None:
        if behaviour in ("ok", "ok_last_request", "stream_break"):
            headers = {"x-ratelimit-remaining-requests": "57", "x-ratelimit-reset-requests": "1s"}
            if behaviour == "ok_last_request":
                headers = {
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{retry_after:g}s",
                    "anthropic-ratelimit-requests-remaining": "0",
                    "anthropic-ratelimit-requests-reset": _rfc3339(retry_after),
                }
            if stream:
                events = self._anthropic_stream(model) if anthropic else self._openai_stream(model)
                self._send_sse(events, break_after=1 if behaviour == "stream_break" else None)
            else:
                self._send_json(200, self._anthropic_message(model) if anthropic else self._openai_completion(model),
                                headers)
            return
        if behaviour == "too_large":
            message = ("Request too large for gpt-4o in organization org-test on tokens per min (TPM): "
                       "Limit 30000, Requested 48000. The input or output tokens must be reduced in order to run "
                       "successfully.")
            self._send_json(429, _openai_error(429, "tokens", "rate_limit_exceeded", message),
                            {"x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "30000"})
            return
        if behaviour.startswith("rate_limited"):
            headers = _reset_headers(behaviour, retry_after)
            body = (_anthropic_error("rate_limit_error", "Number of requests has exceeded your rate limit")
                    if anthropic else
                    _openai_error(429, "requests", "rate_limit_exceeded", "Rate limit reached for requests"))
            self._send_json(429, body, headers)
            return
        if behaviour == "quota":
            headers = {"x-ratelimit-reset-requests": "1h0m0s", "retry-after": "3600",
                       "anthropic-ratelimit-requests-reset": _rfc3339(3600)}
            body = (_anthropic_error("rate_limit_error", "Your credit balance is too low")
                    if anthropic else
                    _openai_error(429, "insufficient_quota", "insufficient_quota",
                                  "You exceeded your current quota, please check your plan and billing details."))
            self._send_json(429, body, headers)
            return
        status, (a_type, a_message), (o_type, o_code, o_message) = _ERRORS.get(behaviour, _ERRORS["server_error"])
        if anthropic:
            body = _anthropic_error(a_type, a_message.format(model=model))
        else:
            body = _openai_error(status, o_type, o_code, o_message.format(model=model))
        self._send_json(status, body)

    @staticmethod
    def _openai_completion(model: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the fake upstream."},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
        }

    def _openai_stream(self, model: str) -> list[tuple[str | None, str]]:
        chunks: list[tuple[str | None, str]] = []
        for i, piece in enumerate(_pieces(self.server.upstream.pieces)[self._skip:]):
            # The first chunk names the role, as OpenAI's does (here with the first piece of text).
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            chunks.append((None, json.dumps({
                "id": f"chatcmpl-fake{self._skip or ''}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            })))
        chunks.append((None, json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        })))
        chunks.append((None, "[DONE]"))
        return chunks

    @staticmethod
    def _anthropic_message(model: str) -> dict[str, Any]:
        return {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello from the fake upstream."}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 6},
        }

    def _anthropic_stream(self, model: str) -> list[tuple[str | None, str]]:
        pieces = _pieces(self.server.upstream.pieces)[self._skip:]
        # A continuation's prompt holds the prefill: more input tokens, fewer output tokens.
        start = {"type": "message_start", "message": {
            "id": f"msg_fake{self._skip or ''}", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5 + self._skip, "output_tokens": 1}}}
        events: list[tuple[str | None, str]] = [
            ("message_start", json.dumps(start)),
            ("content_block_start", json.dumps({"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}})),
        ]
        for piece in pieces:
            events.append(("content_block_delta", json.dumps({
                "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})))
        events += [
            ("content_block_stop", json.dumps({"type": "content_block_stop", "index": 0})),
            ("message_delta", json.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                             "stop_sequence": None},
                                          "usage": {"output_tokens": len(pieces) + 1}})),
            ("message_stop", json.dumps({"type": "message_stop"})),
        ]
        return events


#: The text a stream sends, one piece per content event; ``FakeUpstream(pieces=N)`` makes it N tokens.
_PIECES = ("Hello", " from", " the", " fake", " upstream.")


def _pieces(count: int | None) -> list[str]:
    return list(_PIECES) if count is None else [f" t{i}" for i in range(count)]


def _has_content(name: str | None, data: str) -> bool:
    return name in ("content_block_delta", "response.output_text.delta") or \
        ('"content": "' in data and '"content": ""' not in data)


def _prefill_of(body: Any) -> str | None:
    """The text of the assistant message a request's messages end with (its prefill), or None."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, list):
        return "".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return content if isinstance(content, str) else ""


def _continues_at(count: int | None, prefill: str | None) -> int:
    """How many pieces of the answer a prefill already holds (0 when it is not the answer's start),
    so a continuation streams the rest. Anthropic's prefills lose their trailing whitespace."""
    if not prefill:
        return 0
    pieces = _pieces(count)
    text = ""
    for i, piece in enumerate(pieces):
        text += piece
        if text.rstrip() == prefill.rstrip() and i + 1 < len(pieces):
            return i + 1
    return 0


def _responses_stream(model: str, pieces: int | None) -> list[tuple[str | None, str]]:
    """OpenAI Responses API events, as ``client.responses.create(stream=True)`` reads them."""
    response = {"id": "resp_fake", "object": "response", "created_at": int(time.time()), "model": model,
                "status": "in_progress", "output": []}
    events: list[tuple[str | None, str]] = [
        ("response.created", json.dumps({"type": "response.created", "sequence_number": 0, "response": response})),
    ]
    for i, piece in enumerate(_pieces(pieces)):
        events.append(("response.output_text.delta", json.dumps({
            "type": "response.output_text.delta", "sequence_number": i + 1, "item_id": "msg_fake",
            "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []})))
    done = {**response, "status": "completed"}
    events.append(("response.completed", json.dumps({"type": "response.completed", "sequence_number": 6,
                                                      "response": done})))
    return events


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    upstream: FakeUpstream

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up on a silent or stalled answer closes its connection: that is the test.
        pass


class FakeUpstream:
    """Loopback HTTP server; use as a context manager. ``accounts`` maps API key -> behaviour."""

    def __init__(self, accounts: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 0,
                 retry_after: float = 1.0, pieces: int | None = None) -> None:
        self.pieces = pieces
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}
        self.default_retry_after = retry_after
        self.stats = UpstreamStats()
        for key, behaviour in (accounts or {}).items():
            self.set(key, behaviour)
        self._stopping = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.upstream = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def set(self, key: str, behaviour: str, retry_after: float | None = None, *, delay: float = 0.0,
            events: int = 0, prefill: str = "accept") -> None:
        """Changes how the account with this key behaves from its next request on. ``delay`` is how long a
        slow or stalling fault waits, ``events`` after how many stream events a stream fault strikes,
        ``prefill`` whether a request ending in an assistant message is continued or refused (400)."""
        if prefill not in ("accept", "reject"):
            raise ValueError(f"prefill is 'accept' or 'reject', not {prefill!r}")
        name = behaviour.split(":")[-1]
        if name not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; expected one of {', '.join(BEHAVIOURS)}")
        with self._lock:
            self._accounts[key] = Account(behaviour, self.default_retry_after if retry_after is None else retry_after,
                                          delay, events, prefill=prefill)

    def account(self, key: str) -> Account:
        with self._lock:
            return self._accounts.get(key) or Account("auth")

    def pause(self, seconds: float | None) -> bool:
        """Waits ``seconds`` (None: until the server stops); True when the server is stopping."""
        return self._stopping.wait(seconds)

    def times(self, key: str) -> list[float]:
        """When each request for ``key`` arrived (monotonic seconds)."""
        with self._lock:
            return list(self.stats.arrivals.get(key, []))

    def prefills(self, key: str) -> list[str | None]:
        """The assistant prefill of each request for ``key``, in arrival order (None: it had none)."""
        with self._lock:
            return list(self.stats.prefills.get(key, []))

    def next_behaviour(self, key: str, prefill: str | None = None) -> tuple[str, float]:
        with self._lock:
            account = self._accounts.get(key)
            if account is None:
                return "auth", 0.0
            account.served += 1
            self.stats.arrivals.setdefault(key, []).append(time.monotonic())
            self.stats.prefills.setdefault(key, []).append(prefill)
            if time.monotonic() < account.resting_until:
                self.stats.hit_while_cooling += 1
            behaviour = account.behaviour
            if behaviour.startswith(("after:", "first:")):
                when, count, then = behaviour.split(":", 2)
                early = account.served <= int(count)
                behaviour = ("ok" if early else then) if when == "after" else (then if early else "ok")
            return behaviour, account.retry_after

    def record(self, key: str, status: int, rest: float = 0.0) -> None:
        with self._lock:
            self.stats.requests[key] += 1
            self.stats.statuses[(key, status)] += 1
            account = self._accounts.get(key)
            if account is not None and rest > 0:
                account.resting_until = max(account.resting_until, time.monotonic() + rest)

    def start(self) -> FakeUpstream:
        # A short poll interval: stop() returns within 50 ms, not half a second, in every test.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-upstream",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

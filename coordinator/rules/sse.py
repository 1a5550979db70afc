"""Server-sent events of the three streaming LLM APIs, read without I/O (docs/design.md, "Timeouts and streams").

``SseFramer`` cuts bytes into whole events, keeping each event's raw bytes so the caller gets exactly
what the provider sent. ``judge`` says what one event means for the stream: it carries content, it is
the terminal event, it is an in-band error, or it is malformed. The stream guard in
``coordinator.transport.stream_guard`` drives both.

Terminal events: OpenAI Chat Completions ``data: [DONE]`` (a chunk with a ``finish_reason`` also ends
the answer; ``[DONE]`` may follow it), OpenAI Responses ``response.completed`` (``response.incomplete``
also ends it, ``response.failed`` and ``error`` are errors), Anthropic Messages ``message_stop``
(``event: error`` is an error, ``ping`` is nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

#: Which API's event shapes a stream carries.
SseFormat = Literal["chat", "responses", "messages"]

_PATHS: tuple[tuple[str, SseFormat], ...] = (
    ("/chat/completions", "chat"),
    ("/responses", "responses"),
    ("/messages", "messages"),
)


def detect_format(path: str) -> SseFormat | None:
    """The API a request path belongs to (``.../v1/chat/completions`` -> ``"chat"``); None for others."""
    trimmed = path.rstrip("/")
    for suffix, fmt in _PATHS:
        if trimmed.endswith(suffix):
            return fmt
    return None


@dataclass(frozen=True)
class SseEvent:
    """One event: its ``event:`` name (None when absent), its joined ``data:`` lines, its raw bytes."""

    name: str | None
    data: str
    raw: bytes

    @property
    def empty(self) -> bool:
        """A comment or keep-alive: no name and no data."""
        return self.name is None and not self.data


class SseFramer:
    """Cuts a byte stream into whole events (blank-line separated; ``\\n``, ``\\r\\n`` or ``\\r``)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            end = _event_end(self._buffer)
            if end < 0:
                return events
            raw, self._buffer = self._buffer[:end], self._buffer[end:]
            events.append(parse_event(raw))

    def flush(self) -> SseEvent | None:
        """At the end of the stream: a last event the server did not close with a blank line."""
        raw, self._buffer = self._buffer, b""
        return parse_event(raw) if raw.strip() else None

    @property
    def pending(self) -> bool:
        return bool(self._buffer.strip())


def _event_end(buffer: bytes) -> int:
    """Index just past the first blank line of ``buffer``, or -1."""
    best = -1
    for separator in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        at = buffer.find(separator)
        if at >= 0 and (best < 0 or at + len(separator) < best):
            best = at + len(separator)
    return best


def parse_event(raw: bytes) -> SseEvent:
    name: str | None = None
    data: list[str] = []
    text = raw.decode("utf-8", errors="replace")
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return SseEvent(name, "\n".join(data), raw)


@dataclass(frozen=True)
class Verdict:
    """What one event means for the stream."""

    content: bool = False
    #: The answer is complete (the stream may still send an epilogue such as ``[DONE]`` or usage).
    terminal: bool = False
    #: The provider's in-band error object, when the event is one.
    error: Any = None
    #: Why the event cannot be read, when it cannot.
    malformed: str | None = None
    #: The event's data as parsed JSON (None for ``[DONE]``, pings, comments), for the stream's transcript.
    payload: Any = None


_NOTHING = Verdict()


def judge(fmt: SseFormat, event: SseEvent) -> Verdict:
    """What ``event`` of a ``fmt`` stream means. Pure."""
    if event.empty:
        return _NOTHING
    if fmt == "chat" and event.data.strip() == "[DONE]":
        return Verdict(terminal=True)
    if fmt == "messages" and event.name == "ping":
        return _NOTHING
    if not event.data and fmt != "chat":
        return _NOTHING  # a named event without data says nothing
    try:
        payload = json.loads(event.data)
    except ValueError:
        return Verdict(malformed=f"event {event.name or 'message'!r} has data that is not JSON: {event.data[:80]!r}")
    if not isinstance(payload, dict):
        return Verdict(malformed=f"event {event.name or 'message'!r} has data that is not a JSON object")
    if fmt == "chat":
        verdict = _judge_chat(payload)
    elif fmt == "responses":
        verdict = _judge_responses(event.name, payload)
    else:
        verdict = _judge_messages(event.name, payload)
    return Verdict(verdict.content, verdict.terminal, verdict.error, verdict.malformed, payload)


def _judge_chat(payload: dict[str, Any]) -> Verdict:
    if payload.get("error") is not None:
        return Verdict(error=payload)
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return _NOTHING  # e.g. the usage chunk of stream_options.include_usage
    content = terminal = False
    for choice in choices:
        if not isinstance(choice, dict):
            return Verdict(malformed="a chat completion chunk whose choices are not objects")
        delta = choice.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls") or delta.get("refusal")
                                        or delta.get("function_call")):
            content = True
        if choice.get("finish_reason"):
            terminal = True
    return Verdict(content=content, terminal=terminal)


def _judge_responses(name: str | None, payload: dict[str, Any]) -> Verdict:
    kind = payload.get("type") or name or ""
    if kind in ("error", "response.failed"):
        return Verdict(error=payload)
    if kind in ("response.completed", "response.incomplete", "response.done"):
        return Verdict(terminal=True)
    return Verdict(content=isinstance(kind, str) and kind.endswith(".delta"))


def _judge_messages(name: str | None, payload: dict[str, Any]) -> Verdict:
    kind = name or payload.get("type")
    if kind == "error" or payload.get("type") == "error":
        return Verdict(error=payload)
    if kind == "message_stop":
        return Verdict(terminal=True)
    return Verdict(content=kind == "content_block_delta")

"""Continuing a broken stream from an assistant prefill, without I/O (docs/design.md, "Continuation").

A stream that broke after the caller started reading it can be finished by another member: the
request is sent again with the text the caller already has as an assistant prefill, and the new
stream's events are rewritten so they read as the rest of the first one. This module holds the pure
parts: what was delivered (``Transcript``), whether it may be continued, the prefilled request body
(``prefill_body``), the rewriting of the continuation's events (``Splice``), and whether a member's
error response refuses the prefill (``refuses_prefill``).

Only plain text is continued: a stream that carried a tool call, a reasoning or thinking block, a
refusal, citations or several choices is not (``Transcript.continuable`` is False and ``why_not``
says why). Only Chat Completions and Anthropic Messages streams are continued; OpenAI Responses has
no assistant prefill.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from coordinator.core.config import ContinuationMode
from coordinator.rules.sse import SseEvent, SseFormat

#: Formats whose requests can carry an assistant prefill, and the default of ``"auto"`` for each.
_AUTO: dict[SseFormat, bool] = {"messages": True, "chat": False, "responses": False}
_PREFILL_FORMATS = frozenset({"messages", "chat"})


def continues(mode: ContinuationMode, fmt: SseFormat | None) -> bool:
    """Whether a member with ``mode`` is asked to continue a ``fmt`` stream. Responses never is."""
    if fmt is None or fmt not in _PREFILL_FORMATS:
        return False
    if mode == "auto":
        return _AUTO[fmt]
    return mode == "prefill"


# -- what the caller was given ------------------------------------------------------------------------

#: Chat Completions delta fields that carry something other than plain answer text.
_CHAT_OPAQUE = ("tool_calls", "function_call", "refusal", "reasoning_content", "reasoning", "reasoning_details",
                "audio")


@dataclass
class Transcript:
    """The events a caller has been given, read for what a continuation needs. Fed only events that
    were delivered; never blocks, never raises on unknown shapes (they just make it not continuable)."""

    fmt: SseFormat
    text: str = ""
    why_not: str | None = None
    #: Chat Completions: the first chunk's id and created, whether the role chunk went out.
    chat_id: Any = None
    chat_created: Any = None
    role_sent: bool = False
    #: Anthropic Messages: the type of each content block started so far, and the open one's index.
    blocks: list[str] = field(default_factory=list)
    open_block: int | None = None

    @property
    def continuable(self) -> bool:
        return self.why_not is None and self.fmt in _PREFILL_FORMATS

    def _stop(self, why: str) -> None:
        if self.why_not is None:
            self.why_not = why

    def observe(self, name: str | None, payload: Any) -> None:
        """Takes in one delivered event: its name and its data as parsed JSON (None when it has none)."""
        if not isinstance(payload, dict):
            return
        if self.fmt == "chat":
            self._observe_chat(payload)
        elif self.fmt == "messages":
            self._observe_messages(name or payload.get("type"), payload)
        else:
            self._stop("OpenAI Responses streams have no assistant prefill")

    def _observe_chat(self, payload: dict[str, Any]) -> None:
        if self.chat_id is None and payload.get("id") is not None:
            self.chat_id, self.chat_created = payload.get("id"), payload.get("created")
        choices = payload.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("index", 0) != 0:
                self._stop("the stream has more than one choice")
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if choice.get("finish_reason"):
                self._stop("the answer had ended (finish_reason); only the end of the stream was lost")
            if delta.get("role"):
                self.role_sent = True
            for name in _CHAT_OPAQUE:
                if delta.get(name):
                    self._stop(f"the stream carried {name.replace('_', ' ')}")
            content = delta.get("content")
            if isinstance(content, str):
                self.text += content
            elif content is not None:
                self._stop("the stream carried content that is not text")

    def _observe_messages(self, kind: Any, payload: dict[str, Any]) -> None:
        if kind == "content_block_start":
            block = payload.get("content_block")
            block_type = block.get("type") if isinstance(block, dict) else None
            self.blocks.append(str(block_type))
            self.open_block = len(self.blocks) - 1
            if block_type != "text":
                self._stop(f"the stream carried a {block_type} block")
            elif isinstance(block, dict) and block.get("text"):
                self.text += str(block["text"])
            if isinstance(block, dict) and block.get("citations"):
                self._stop("the stream carried citations")
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            delta_type = delta.get("type") if isinstance(delta, dict) else None
            if delta_type == "text_delta" and isinstance(delta, dict) and isinstance(delta.get("text"), str):
                self.text += delta["text"]
            else:
                self._stop(f"the stream carried a {delta_type}")
        elif kind == "content_block_stop":
            self.open_block = None
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop("the answer had ended (stop_reason); only message_stop was lost")


# -- the request that asks for the rest ----------------------------------------------------------------


@dataclass(frozen=True)
class Prefill:
    """A continuation request's body, and the whitespace cut off the end of its prefill (Anthropic
    refuses a final assistant message that ends in whitespace; the continuation is expected to start
    with it, and the splice drops it from there, since the caller has it already)."""

    body: bytes
    chars: int
    trimmed: str = ""


def prefill_body(body: bytes, fmt: SseFormat, text: str) -> Prefill | None:
    """The caller's request with ``text`` as the final assistant message; None when the body is not a
    JSON request of ``fmt`` with a list of messages (or asks for several choices)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
        return None
    if fmt == "chat" and payload.get("n") not in (None, 1):
        return None
    messages = list(payload["messages"])
    last = messages[-1] if messages else None
    trimmed = ""
    if isinstance(last, dict) and last.get("role") == "assistant":
        # The caller's own prefill: the delivered text continues it.
        message = dict(last)
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = content + text
        elif isinstance(content, list) and content and isinstance(content[-1], dict) \
                and content[-1].get("type") == "text":
            message["content"] = [*content[:-1], {**content[-1], "text": str(content[-1].get("text", "")) + text}]
        elif isinstance(content, list):
            message["content"] = [*content, {"type": "text", "text": text}]
        else:
            return None
        messages[-1] = message
    else:
        messages.append({"role": "assistant", "content": text})
    if fmt == "messages":
        message = messages[-1]
        content = message["content"]
        if isinstance(content, str):
            kept = content.rstrip()
            trimmed = content[len(kept):]
            message["content"] = kept
        else:
            last_text = str(content[-1].get("text", ""))
            kept = last_text.rstrip()
            trimmed = last_text[len(kept):]
            message["content"] = [*content[:-1], {**content[-1], "text": kept}]
        if not kept:
            messages.pop()  # nothing but whitespace: no prefill at all (an empty one is refused)
    payload["messages"] = messages
    return Prefill(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode(), len(text), trimmed)


#: Wordings of a refused prefill, and only those: Anthropic's "does not support assistant message
#: prefill" and "final assistant content cannot end with trailing whitespace"; OpenAI-compatible
#: servers' "the last message must be from the user", "last message role must be 'user'", Mistral's
#: "Expected last role User or Tool (or Assistant with prefix True)", vLLM's continue_final_message.
#: Not the words "assistant message" or "last message" alone: 400s about tool_use / tool_result
#: ordering or empty messages name them too, and a refusal is remembered for the process's life.
_REFUSAL = re.compile(
    r"prefill|final assistant content|continue_final_message|expected last role"
    r"|last message(?: role)? must be (?:from |sent by )?(?:the |a |an )?['\"`]?(?:user|tool)"
    r"|must end with (?:a |the )?user(?: or tool)? message", re.IGNORECASE)


def refuses_prefill(status: int, body: bytes) -> bool:
    """A 400 (or 422) whose error is about the prefill: the member cannot continue an answer."""
    if status not in (400, 422):
        return False
    return bool(_REFUSAL.search(body[:4000].decode("utf-8", errors="replace")))


# -- the continuation's events, as the rest of the first stream -----------------------------------------

#: One event to deliver: its raw bytes, its name, its data as parsed JSON.
Delivered = tuple[bytes, str | None, Any]


def _event(name: str | None, payload: dict[str, Any]) -> Delivered:
    prefix = f"event: {name}\n" if name else ""
    raw = f"{prefix}data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()
    return raw, name, payload


class Splice:
    """Rewrites a continuation stream's events to follow what ``transcript`` says the caller has: no
    second ``message_start`` or role chunk, the first stream's ids, block indexes that go on from the
    caller's, and the continuation's usage. ``rewrite`` returns the events to deliver instead of one
    (none drops it); what is delivered is then fed to the transcript, as for any event."""

    def __init__(self, transcript: Transcript, trimmed: str = "") -> None:
        self.fmt = transcript.fmt
        self._chat_id, self._chat_created = transcript.chat_id, transcript.chat_created
        self._role_sent = transcript.role_sent
        self._trimmed = trimmed
        self._open = transcript.open_block
        #: Where the continuation's block 0 goes: into the caller's open text block, or after the last.
        self._merge = transcript.open_block is not None and transcript.blocks[transcript.open_block] == "text"
        self._base = transcript.open_block if self._merge and transcript.open_block is not None \
            else len(transcript.blocks)
        self._usage: dict[str, Any] = {}

    def rewrite(self, event: SseEvent, payload: Any) -> list[Delivered]:
        if not isinstance(payload, dict):
            return [(event.raw, event.name, payload)]
        if self.fmt == "chat":
            return self._chat(event, payload)
        return self._messages(event, payload)

    def _dedupe(self, text: str) -> str:
        """Drops from the start of the continuation the whitespace the prefill was trimmed of."""
        common = 0
        while common < min(len(text), len(self._trimmed)) and text[common] == self._trimmed[common]:
            common += 1
        # Once the continuation says something else, or all of it was matched, the matching is over.
        self._trimmed = "" if common < len(text) else self._trimmed[common:]
        return text[common:]

    def _chat(self, event: SseEvent, payload: dict[str, Any]) -> list[Delivered]:
        out = dict(payload)
        if self._chat_id is not None and "id" in out:
            out["id"] = self._chat_id
        if self._chat_created is not None and "created" in out:
            out["created"] = self._chat_created
        choices = out.get("choices")
        if isinstance(choices, list) and choices:
            rewritten = []
            for choice in choices:
                if not isinstance(choice, dict) or not isinstance(choice.get("delta", {}), dict):
                    return [(event.raw, event.name, payload)]
                choice = dict(choice)
                delta = dict(choice.get("delta") or {})
                if self._role_sent:
                    delta.pop("role", None)
                if isinstance(delta.get("content"), str) and self._trimmed:
                    delta["content"] = self._dedupe(delta["content"])
                choice["delta"] = delta
                rewritten.append(choice)
            says_nothing = all(not any(c["delta"].values()) and not c.get("finish_reason") and not c.get("logprobs")
                               for c in rewritten)
            if says_nothing and not out.get("usage"):
                return []
            out["choices"] = rewritten
        return [_event(event.name, out)]

    def _messages(self, event: SseEvent, payload: dict[str, Any]) -> list[Delivered]:
        kind = event.name or payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._usage = {k: v for k, v in usage.items() if k != "output_tokens"}
            return []
        if kind in ("content_block_start", "content_block_delta", "content_block_stop"):
            index = payload.get("index")
            if not isinstance(index, int):
                return [(event.raw, event.name, payload)]
            before: list[Delivered] = []
            if kind == "content_block_start" and index == 0 and self._merge:
                block = payload.get("content_block")
                if isinstance(block, dict) and block.get("type") == "text":
                    # The caller's open text block goes on; text the start carries goes on as a delta.
                    text = block.get("text")
                    text = self._dedupe(text) if isinstance(text, str) and self._trimmed else text
                    if not isinstance(text, str) or not text:
                        return []
                    return [_event("content_block_delta", {"type": "content_block_delta", "index": self._base,
                                                           "delta": {"type": "text_delta", "text": text}})]
                # Not text after all: close the caller's block, and put this one after it.
                self._merge = False
                self._base += 1
                before.append(_event("content_block_stop", {"type": "content_block_stop", "index": self._open}))
            out = {**payload, "index": self._base + index}
            delta = out.get("delta")
            if kind == "content_block_delta" and index == 0 and isinstance(delta, dict) \
                    and isinstance(delta.get("text"), str) and self._trimmed:
                out["delta"] = {**delta, "text": self._dedupe(delta["text"])}
            return [*before, _event(event.name, out)]
        if kind == "message_delta" and self._usage:
            usage = payload.get("usage")
            merged = {**self._usage, **(usage if isinstance(usage, dict) else {})}
            return [_event(event.name, {**payload, "usage": merged})]
        return [(event.raw, event.name, payload)]

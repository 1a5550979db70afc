"""The pure parts of continuing a broken stream (coordinator/rules/continuation.py): which member
continues which API, what was delivered and whether it may be continued, the prefilled request, the
splice of the continuation's events, and a member's refusal of the prefill. Plus the setting in TOML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import coordinator as co
from coordinator.rules.continuation import Splice, Transcript, continues, prefill_body, refuses_prefill
from coordinator.rules.sse import SseFramer, judge


def events(raw: str):
    return SseFramer().feed(raw.encode())


def feed(transcript: Transcript, raw: str) -> None:
    for event in events(raw):
        transcript.observe(event.name, judge(transcript.fmt, event).payload)


def sse(name: str | None, payload: dict) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {json.dumps(payload)}\n\n"


def splice_all(splice: Splice, fmt, raw: str) -> list[tuple[str | None, dict]]:
    out = []
    for event in events(raw):
        for _, name, payload in splice.rewrite(event, judge(fmt, event).payload):
            out.append((name, payload))
    return out


def test_auto_continues_anthropic_messages_only_and_responses_never() -> None:
    assert continues("auto", "messages") and not continues("auto", "chat") and not continues("auto", "responses")
    assert continues("prefill", "chat") and not continues("prefill", "responses")
    assert not continues("off", "messages") and not continues("auto", None)


def test_toml_sets_continuation_per_pool_and_member(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text('''
[pools.local]
continuation = "prefill"
members = [{ id = "a" }, { id = "b", continuation = "off" }]
''')
    pool = co.load_config(path).pools["local"]
    assert [pool.continuation_of(m) for m in pool.members] == ["prefill", "off"]
    path.write_text('[pools.local]\ncontinuation = true\nmembers = [{ id = "a" }]\n')
    with pytest.raises(co.ConfigError, match=r"pools\.local\.continuation"):
        co.load_config(path)


# -- the transcript -------------------------------------------------------------------------------------

MESSAGE_START = sse("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {
    "input_tokens": 9, "output_tokens": 1}}})


def text_block(index: int, *texts: str) -> str:
    out = sse("content_block_start", {"type": "content_block_start", "index": index,
                                      "content_block": {"type": "text", "text": ""}})
    for text in texts:
        out += sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                           "delta": {"type": "text_delta", "text": text}})
    return out


@pytest.mark.parametrize(("raw", "why"), [
    (sse("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}), "thinking block"),
    (sse("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
     "tool_use block"),
    (text_block(0, "a") + sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                      "delta": {"type": "citations_delta"}}), "citations_delta"),
    (text_block(0, "a") + sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
     "had ended"),
])
def test_an_anthropic_stream_with_more_than_text_is_not_continued(raw: str, why: str) -> None:
    transcript = Transcript("messages")
    feed(transcript, MESSAGE_START + raw)
    assert not transcript.continuable and why in str(transcript.why_not)


@pytest.mark.parametrize(("delta", "why"), [
    ({"reasoning_content": "hm"}, "reasoning content"), ({"refusal": "no"}, "refusal"),
    ({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}, "tool calls"),
])
def test_a_chat_stream_with_more_than_text_is_not_continued(delta: dict, why: str) -> None:
    transcript = Transcript("chat")
    feed(transcript, sse(None, {"id": "c", "choices": [{"index": 0, "delta": {"content": "a"}}]})
         + sse(None, {"id": "c", "choices": [{"index": 0, "delta": delta}]}))
    assert not transcript.continuable and why in str(transcript.why_not)


def test_a_chat_stream_of_several_choices_or_a_finished_one_is_not_continued() -> None:
    several = Transcript("chat")
    feed(several, sse(None, {"choices": [{"index": 1, "delta": {"content": "a"}}]}))
    assert not several.continuable
    done = Transcript("chat")
    feed(done, sse(None, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    assert not done.continuable and "had ended" in str(done.why_not)


def test_the_transcript_holds_the_delivered_text() -> None:
    transcript = Transcript("messages")
    feed(transcript, MESSAGE_START + text_block(0, "Hel", "lo"))
    assert transcript.continuable and transcript.text == "Hello" and transcript.open_block == 0


# -- the prefilled request -------------------------------------------------------------------------------


def test_the_prefill_is_a_final_assistant_message_or_extends_the_callers() -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}).encode()
    got = prefill_body(body, "chat", "Hello ")
    assert got is not None and got.chars == 6 and got.trimmed == ""
    assert json.loads(got.body)["messages"][-1] == {"role": "assistant", "content": "Hello "}
    own = json.dumps({"messages": [{"role": "user", "content": "x"},
                                   {"role": "assistant", "content": [{"type": "text", "text": "Sure: "}]}]}).encode()
    got = prefill_body(own, "messages", "Hello")
    assert got is not None and json.loads(got.body)["messages"][-1]["content"] == [{"type": "text",
                                                                                  "text": "Sure: Hello"}]


def test_an_anthropic_prefill_loses_its_trailing_whitespace_and_the_splice_drops_it_once() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
    got = prefill_body(body, "messages", "Hello \n")
    assert got is not None and json.loads(got.body)["messages"][-1]["content"] == "Hello"
    assert got.trimmed == " \n"
    transcript = Transcript("messages")
    feed(transcript, MESSAGE_START + text_block(0, "Hello \n"))
    out = splice_all(Splice(transcript, got.trimmed), "messages",
                     MESSAGE_START + text_block(0, " ", "\nworld", " \n"))
    assert [p["delta"]["text"] for _, p in out if p["type"] == "content_block_delta"] == ["", "world", " \n"]


def test_no_prefill_for_a_body_that_is_not_a_chat_or_for_several_choices() -> None:
    assert prefill_body(b"not json", "chat", "a") is None
    assert prefill_body(b'{"input": "x"}', "chat", "a") is None
    assert prefill_body(b'{"messages": [], "n": 2}', "chat", "a") is None


#: Errors that refuse a prefill: Anthropic's, and OpenAI-compatible servers' (vLLM, Mistral, Groq, ...).
_REFUSALS = [
    b'{"type":"error","error":{"type":"invalid_request_error","message":'
    b'"This model does not support assistant message prefill. The conversation must end with a user message."}}',
    b'{"type":"error","error":{"type":"invalid_request_error",'
    b'"message":"messages: final assistant content cannot end with trailing whitespace"}}',
    b'{"error":{"message":"The last message must be from the user","type":"invalid_request_error"}}',
    b'{"error":{"message":"last message role must be \'user\'","type":"invalid_request_error"}}',
    b'{"object":"error","message":"Expected last role User or Tool (or Assistant with prefix True) for serving'
    b' but got assistant","type":"invalid_request_error"}',
    b'{"object":"error","message":"continue_final_message is not supported by this model","code":400}',
]
#: 400s about something else, some of them naming assistant messages: not a refusal of the prefill.
_NOT_REFUSALS = [
    b'{"error": {"message": "max_tokens: field required"}}',
    b'{"type":"error","error":{"type":"invalid_request_error","message":"messages.1: `tool_use` ids were found '
    b'without `tool_result` blocks immediately after: toolu_01. Each `tool_use` block must have a corresponding '
    b'`tool_result` block in the next message."}}',
    b'{"error":{"message":"Invalid parameter: messages with role \'tool\' must be a response to a preceeding '
    b'message with \'tool_calls\'.","type":"invalid_request_error","param":"messages.[2].role"}}',
    b'{"error":{"message":"An assistant message with \'tool_calls\' must be followed by tool messages '
    b'responding to each \'tool_call_id\'.","type":"invalid_request_error"}}',
    b'{"type":"error","error":{"type":"invalid_request_error","message":"messages.2: all messages must have '
    b'non-empty content except for the optional final assistant message"}}',
    b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > '
    b'200000 maximum"}}',
]


@pytest.mark.parametrize("body", _REFUSALS)
def test_a_refusal_is_a_400_or_422_about_the_prefill(body: bytes) -> None:
    assert refuses_prefill(400, body) and refuses_prefill(422, body)
    assert not refuses_prefill(529, body) and not refuses_prefill(413, body)


@pytest.mark.parametrize("body", _NOT_REFUSALS)
def test_other_400s_are_not_refusals_even_when_they_name_assistant_messages(body: bytes) -> None:
    assert not refuses_prefill(400, body)


# -- the splice ------------------------------------------------------------------------------------------


def test_an_anthropic_continuation_goes_on_in_the_callers_open_block_with_its_own_usage() -> None:
    transcript = Transcript("messages")
    feed(transcript, MESSAGE_START + text_block(0, "Hello"))
    continuation = (sse("message_start", {"type": "message_start", "message": {"id": "msg_2", "usage": {
        "input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 3}}})
        + text_block(0, " world") + sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        + text_block(1, "more")
        + sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                "usage": {"output_tokens": 4}})
        + sse("message_stop", {"type": "message_stop"}))
    out = splice_all(Splice(transcript), "messages", continuation)
    assert [name for name, _ in out] == ["content_block_delta", "content_block_stop", "content_block_start",
                                         "content_block_delta", "message_delta", "message_stop"]
    assert [p.get("index") for _, p in out[:4]] == [0, 0, 1, 1]
    assert out[4][1]["usage"] == {"input_tokens": 12, "cache_read_input_tokens": 3, "output_tokens": 4}


def test_text_in_the_continuations_first_block_start_goes_on_as_a_delta_in_the_callers_block() -> None:
    transcript = Transcript("messages")
    feed(transcript, MESSAGE_START + text_block(0, "Hello "))
    start = sse("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": " world"}})
    delta = sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": "!"}})
    out = splice_all(Splice(transcript, trimmed=" "), "messages", start + delta)
    assert out == [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": "world"}}),
                   ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": "!"}})], \
        "its text once, without the whitespace the caller has"
    empty = Transcript("messages")
    feed(empty, MESSAGE_START + text_block(0, "Hello"))
    assert splice_all(Splice(empty), "messages", text_block(0)) == [], "an empty start is dropped, as before"


def test_a_continuation_after_a_closed_block_or_with_a_new_kind_of_block_keeps_indexes_apart() -> None:
    closed = Transcript("messages")
    feed(closed, MESSAGE_START + text_block(0, "Hello") + sse("content_block_stop", {"type": "content_block_stop",
                                                                                      "index": 0}))
    out = splice_all(Splice(closed), "messages", text_block(0, "x"))
    assert [(name, p["index"]) for name, p in out] == [("content_block_start", 1), ("content_block_delta", 1)]
    open_text = Transcript("messages")
    feed(open_text, MESSAGE_START + text_block(0, "Hello"))
    tool = sse("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}})
    out = splice_all(Splice(open_text), "messages", tool)
    assert [(name, p["index"]) for name, p in out] == [("content_block_stop", 0), ("content_block_start", 1)]


def test_a_chat_continuation_keeps_the_first_streams_id_and_sends_no_second_role() -> None:
    transcript = Transcript("chat")
    feed(transcript, sse(None, {"id": "c1", "created": 1, "choices": [{"index": 0, "delta": {
        "role": "assistant", "content": "Hel"}}]}))
    continuation = (sse(None, {"id": "c2", "created": 2, "choices": [{"index": 0, "delta": {
        "role": "assistant", "content": ""}}]})
        + sse(None, {"id": "c2", "created": 2, "choices": [{"index": 0, "delta": {"content": "lo"}}]})
        + sse(None, {"id": "c2", "created": 2, "choices": [], "usage": {"completion_tokens": 1}}))
    out = splice_all(Splice(transcript), "chat", continuation)
    assert len(out) == 2, "the empty role chunk is dropped"
    assert [(p["id"], p["created"]) for _, p in out] == [("c1", 1), ("c1", 1)]
    assert out[0][1]["choices"][0]["delta"] == {"content": "lo"}
    assert out[1][1]["usage"] == {"completion_tokens": 1}

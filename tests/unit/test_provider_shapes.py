"""Recorded error shapes of providers beyond plain OpenAI and Anthropic (Gemini native and its
OpenAI-compatible endpoint, AWS Bedrock through the anthropic SDK's Bedrock client, Azure OpenAI),
Anthropic's 529, OpenAI's too-large 429, and the server-sent events the stream guard reads."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
from provider_errors import anthropic_error, httpx_response, openai_error, sdk_response

import coordinator as co
from coordinator.rules.sse import SseEvent, SseFramer, detect_format, judge

GEMINI_URL = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
GEMINI_COMPAT_URL = "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
BEDROCK_URL = "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet/invoke"


def gemini_body(quota_id: str, retry_delay: str = "43s") -> dict[str, Any]:
    """Gemini's 429 as the native API sends it (recorded; project numbers removed)."""
    return {"error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details. For more "
                   "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": quota_id,
                "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                "quotaValue": "15"}]},
            {"@type": "type.googleapis.com/google.rpc.Help",
             "links": [{"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
        ],
    }}


def test_gemini_native_per_minute_quota_is_a_rate_limit_with_its_retry_delay() -> None:
    failure = co.classify(httpx_response(429, json=gemini_body("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
                                         url=GEMINI_URL))
    assert (failure.kind, failure.retry_after, failure.code) == ("rate_limited", 43.0, "resource_exhausted")


def test_gemini_native_per_day_quota_is_exhausted_for_the_day() -> None:
    failure = co.classify(httpx_response(429, json=gemini_body("GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                                                               "12s"), url=GEMINI_URL))
    assert failure.kind == "quota_exhausted"
    assert failure.retry_after is None, "a retryDelay of seconds says nothing about a daily quota"


def test_gemini_openai_compatible_endpoint_wraps_the_error_in_a_list() -> None:
    body = [gemini_body("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "7s")]
    response = sdk_response(429, GEMINI_COMPAT_URL, body)
    error = openai.RateLimitError("Error code: 429", response=response, body=body)
    failure = co.classify(error)
    assert (failure.kind, failure.retry_after) == ("rate_limited", 7.0)
    bare = [{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                       "status": "RESOURCE_EXHAUSTED"}}]
    assert co.classify(httpx_response(429, json=bare, url=GEMINI_COMPAT_URL)).kind == "rate_limited"


@pytest.mark.parametrize(("status", "errortype", "message", "kind"), [
    (429, "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
     "Too many requests, please wait before trying again.", "rate_limited"),
    (429, "ThrottlingException", "Too many tokens, please wait before trying again.", "rate_limited"),
    (503, "ServiceUnavailableException:http://internal.amazon.com/coral/com.amazon.bedrock/",
     "Bedrock is unable to process your request.", "transient"),
    (429, "ModelNotReadyException", "Model is not ready to serve inference requests.", "transient"),
    (400, "ValidationException", "Input is too long for requested model.", "context_length"),
    (403, "AccessDeniedException", "You don't have access to the model with the specified model ID.", "auth"),
])
def test_bedrock_errors_as_the_anthropic_bedrock_client_raises_them(status: int, errortype: str, message: str,
                                                                     kind: str) -> None:
    response = sdk_response(status, BEDROCK_URL, {"message": message},
                            {"x-amzn-errortype": errortype, "x-amzn-requestid": "5d9c0b6e-0000"})
    cls = {429: anthropic.RateLimitError, 503: anthropic.ServiceUnavailableError,
           400: anthropic.BadRequestError, 403: anthropic.PermissionDeniedError}[status]
    assert co.classify(cls(f"Error code: {status}", response=response, body={"message": message})).kind == kind


def test_azure_retry_after_ms_is_preferred_and_content_filter_kept() -> None:
    message = ("Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
               "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds.")
    error = openai_error(429, "429", message, "", {"retry-after": "6", "retry-after-ms": "5800"})
    assert (co.classify(error).kind, co.classify(error).retry_after) == ("rate_limited", 5.8)
    filtered = openai_error(400, "content_filter", "The response was filtered due to the prompt triggering "
                            "Azure OpenAI's content management policy.")
    assert co.classify(filtered).kind == "content_policy"


def test_anthropic_529_is_transient_with_its_own_code() -> None:
    failure = co.classify(anthropic_error(529, "overloaded_error", "Overloaded"))
    assert (failure.kind, failure.code, failure.retry_after) == ("transient", "overloaded_error", None)
    assert co.CooldownPolicy().overloaded < co.CooldownPolicy().rate_limited


def test_openai_request_too_large_429_is_a_context_length_problem() -> None:
    message = ("Request too large for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, "
               "Requested 48000. The input or output tokens must be reduced in order to run successfully.")
    failure = co.classify(openai_error(429, "rate_limit_exceeded", message, "tokens"))
    assert failure.kind == "context_length"
    assert co.classify(openai_error(429, "rate_limit_exceeded", "Rate limit reached for gpt-4o on tokens per min",
                                    "tokens")).kind == "rate_limited"


def test_timeouts_are_marked_so_the_call_moves_on() -> None:
    import httpx

    assert co.classify(httpx.ReadTimeout("slow")).timeout
    assert co.classify(httpx.ConnectTimeout("slow")).timeout
    assert not co.classify(httpx.ConnectError("refused")).timeout
    assert co.classify(co.StreamInterruptedError("stalled", "quiet")).timeout
    assert not co.classify(co.StreamInterruptedError("incomplete", "cut")).timeout


# -- server-sent events ---------------------------------------------------------------------------------


def test_framer_keeps_raw_bytes_and_handles_split_chunks_and_line_endings() -> None:
    framer = SseFramer()
    assert framer.feed(b"event: message_start\r\ndata: {\"a\"") == []
    events = framer.feed(b": 1}\r\n\r\ndata: [DONE]\n\n")
    assert [(e.name, e.data) for e in events] == [("message_start", '{"a": 1}'), (None, "[DONE]")]
    assert b"".join(e.raw for e in events) == b"event: message_start\r\ndata: {\"a\": 1}\r\n\r\ndata: [DONE]\n\n"
    assert framer.feed(b": keep-alive\n\n")[0].empty


@pytest.mark.parametrize(("fmt", "name", "data", "expected"), [
    ("chat", None, '{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}', "content"),
    ("chat", None, '{"choices":[{"delta":{"role":"assistant","content":""}}]}', "nothing"),
    ("chat", None, '{"choices":[{"delta":{},"finish_reason":"stop"}]}', "terminal"),
    ("chat", None, "[DONE]", "terminal"),
    ("chat", None, '{"error":{"message":"overloaded","type":"server_error"}}', "error"),
    ("chat", None, "{not json", "malformed"),
    ("responses", "response.output_text.delta", '{"type":"response.output_text.delta","delta":"Hi"}', "content"),
    ("responses", "response.completed", '{"type":"response.completed","response":{}}', "terminal"),
    ("responses", "error", '{"type":"error","code":"server_error","message":"x"}', "error"),
    ("messages", "content_block_delta", '{"type":"content_block_delta","delta":{"text":"Hi"}}', "content"),
    ("messages", "message_stop", '{"type":"message_stop"}', "terminal"),
    ("messages", "ping", '{"type": "ping"}', "nothing"),
    ("messages", "error", '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "error"),
    ("messages", "message_start", "[1, 2]", "malformed"),
])
def test_judge_each_format(fmt: Any, name: str | None, data: str, expected: str) -> None:
    verdict = judge(fmt, SseEvent(name, data, b""))
    got = ("malformed" if verdict.malformed else "error" if verdict.error is not None else
           "terminal" if verdict.terminal else "content" if verdict.content else "nothing")
    assert got == expected


def test_detect_format_by_path() -> None:
    assert detect_format("/v1/chat/completions") == "chat"
    assert detect_format("/openai/deployments/gpt4/chat/completions") == "chat"
    assert detect_format("/v1/responses") == "responses"
    assert detect_format("/v1/messages") == "messages"
    assert detect_format("/v1/embeddings") is None


@pytest.mark.parametrize(("base", "path", "joined"), [
    ("/v1", "/v1/chat/completions", "/v1/chat/completions"),  # OpenAI: member https://api.openai.com/v1
    ("", "/v1/chat/completions", "/v1/chat/completions"),  # member https://api.openai.com
    ("/v1/", "/v1/messages", "/v1/messages"),  # Anthropic: member https://api.anthropic.com/v1/
    ("/openai/v1", "/v1/chat/completions", "/openai/v1/chat/completions"),  # Azure OpenAI v1 API
    ("/api", "/v1/chat/completions", "/api/v1/chat/completions"),  # an OpenAI-compatible server under /api
    ("/proxy/v1/x", "/v1/chat/completions", "/proxy/v1/x/v1/chat/completions"),  # only a tail overlaps
])
def test_member_base_path_joins_the_sdk_path_without_repeating_it(base: str, path: str, joined: str) -> None:
    from coordinator.transport.failover import join_paths

    assert join_paths(base, path) == joined

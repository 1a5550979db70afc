"""Classification of real httpx responses and exceptions and the real openai / anthropic SDK exceptions."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from provider_errors import ANTHROPIC_URL, anthropic_error, httpx_response, openai_error, sdk_response

import coordinator as co
from coordinator.rules.classify import classify_with

NOON_HTTP = "Wed, 01 May 2024 12:00:00 GMT"

OPENAI_CASES: list[tuple[str, Any, str]] = [
    (
        "429 rate limit",
        openai_error(429, "rate_limit_exceeded", "Rate limit reached for gpt-4o on requests per min", "requests"),
        "rate_limited",
    ),
    (
        "429 insufficient_quota",
        openai_error(429, "insufficient_quota", "You exceeded your current quota", "insufficient_quota"),
        "quota_exhausted",
    ),
    (
        "429 quota, message only",
        openai_error(429, None, "You exceeded your current quota, check billing"),
        "quota_exhausted",
    ),
    (
        "429 billing hard limit",
        openai_error(429, "billing_hard_limit_reached", "Billing hard limit"),
        "quota_exhausted",
    ),
    (
        "429 rate limit on the moderation model",
        openai_error(429, "rate_limit_exceeded", "Rate limit reached for text-moderation-latest", "tokens"),
        "rate_limited",
    ),
    (
        "400 context_length_exceeded",
        openai_error(400, "context_length_exceeded", "This model's maximum context length is 128000 tokens."),
        "context_length",
    ),
    (
        "400 content_policy_violation",
        openai_error(400, "content_policy_violation", "Your request was rejected by our safety system."),
        "content_policy",
    ),
    (
        "400 flagged prompt",
        openai_error(400, "invalid_prompt", "Invalid prompt: your prompt was flagged as violating our usage policy."),
        "content_policy",
    ),
    ("400 bad parameter", openai_error(400, None, "'messages' is a required property"), "request"),
    ("401 invalid key", openai_error(401, "invalid_api_key", "Incorrect API key provided: sk-abc***xyz."), "auth"),
    ("403 region", openai_error(403, "unsupported_country_region_territory", "Country not supported"), "auth"),
    (
        "404 model_not_found",
        openai_error(404, "model_not_found", "The model `gpt-9` does not exist or you do not have access to it."),
        "model_unavailable",
    ),
    (
        "404 deprecated model",
        openai_error(404, None, "The model `text-davinci-003` has been deprecated"),
        "model_unavailable",
    ),
    ("404 wrong URL", openai_error(404, None, "Invalid URL (POST /v1/chat/completionz)"), "request"),
    ("409 conflict", openai_error(409, None, "conflict"), "transient"),
    ("422 unprocessable", openai_error(422, None, "unprocessable"), "request"),
    ("500 server error", openai_error(500, None, "The server had an error", "server_error"), "transient"),
    ("503 overloaded", openai_error(503, None, "The engine is currently overloaded", "server_error"), "transient"),
]

ANTHROPIC_CASES: list[tuple[str, Any, str]] = [
    ("429 rate_limit_error", anthropic_error(429, "rate_limit_error", "Number of requests exceeded"), "rate_limited"),
    ("529 overloaded_error", anthropic_error(529, "overloaded_error", "Overloaded"), "transient"),
    ("500 api_error", anthropic_error(500, "api_error", "Internal server error"), "transient"),
    (
        "400 prompt is too long",
        anthropic_error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
        "context_length",
    ),
    (
        "400 context limit",
        anthropic_error(400, "invalid_request_error", "input length and `max_tokens` exceed context limit: 190000"),
        "context_length",
    ),
    (
        "400 credit balance",
        anthropic_error(400, "invalid_request_error", "Your credit balance is too low to access the Anthropic API."),
        "quota_exhausted",
    ),
    (
        "400 output blocked",
        anthropic_error(400, "invalid_request_error", "Output blocked by content filtering policy"),
        "content_policy",
    ),
    ("400 invalid request", anthropic_error(400, "invalid_request_error", "messages: field required"), "request"),
    ("401 authentication_error", anthropic_error(401, "authentication_error", "invalid x-api-key"), "auth"),
    ("402 billing_error", anthropic_error(402, "billing_error", "Payment required"), "quota_exhausted"),
    ("403 permission_error", anthropic_error(403, "permission_error", "not allowed"), "auth"),
    ("404 model", anthropic_error(404, "not_found_error", "model: claude-3-opus-20990101"), "model_unavailable"),
    ("404 other", anthropic_error(404, "not_found_error", "File not found"), "request"),
    ("413 request_too_large", anthropic_error(413, "request_too_large", "Request exceeds the maximum size"), "request"),
]


@pytest.mark.parametrize(
    ("name", "error", "kind"), OPENAI_CASES + ANTHROPIC_CASES, ids=lambda v: v if isinstance(v, str) else ""
)
def test_sdk_status_errors(name: str, error: Any, kind: str) -> None:
    failure = co.classify(error)
    assert failure.kind == kind, name
    assert failure.status == error.status_code
    assert failure.cools == (kind not in ("request", "content_policy", "context_length"))


def test_openai_code_and_message_are_read() -> None:
    failure = co.classify(
        openai_error(429, "insufficient_quota", "You exceeded your current quota", "insufficient_quota")
    )
    assert failure.code == "insufficient_quota"
    assert failure.message == "You exceeded your current quota"
    assert str(failure) == "quota_exhausted (HTTP 429, insufficient_quota)"


def test_openai_rate_limit_hint_from_reset_headers() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    failure = co.classify(openai_error(429, "rate_limit_exceeded", "slow down", "requests", headers))
    assert failure.retry_after == 360.0


def test_quota_ignores_per_minute_reset_headers() -> None:
    # The per-minute window says nothing about a billing quota: trusting its "1s" would re-try an
    # exhausted account every second.
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}
    failure = co.classify(openai_error(429, "insufficient_quota", "quota", "insufficient_quota", headers))
    assert failure.kind == "quota_exhausted"
    assert failure.retry_after is None


def test_anthropic_rate_limit_hint_uses_server_date() -> None:
    headers = {
        "date": NOON_HTTP,
        "retry-after": "",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2024-05-01T12:00:20Z",
    }
    failure = co.classify(anthropic_error(429, "rate_limit_error", "slow down", headers))
    assert failure.kind == "rate_limited"
    assert failure.retry_after == 20.0


def test_anthropic_retry_after_wins() -> None:
    failure = co.classify(anthropic_error(429, "rate_limit_error", "slow down", {"retry-after": "9"}))
    assert failure.retry_after == 9.0


def test_anthropic_overloaded_mid_stream_with_status_200() -> None:
    # The SDK raises a bare APIStatusError carrying the stream's own 200 response for an SSE error event.
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    error = anthropic.APIStatusError(str(body), response=sdk_response(200, ANTHROPIC_URL), body=body)
    assert co.classify(error).kind == "transient"


def test_openai_mid_stream_error_without_status() -> None:
    error = openai.APIError(
        "An error occurred during streaming",
        httpx2.Request("POST", "https://api.openai.com/v1/chat/completions"),
        body={"message": "An error occurred during streaming", "type": "server_error"},
    )
    assert co.classify(error).kind == "transient"


def test_subscription_window_is_quota_until_its_reset() -> None:
    headers = {
        "date": NOON_HTTP,
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": "1714582800",  # 5 h later, unix seconds
    }
    failure = co.classify(anthropic_error(429, "rate_limit_error", "rate limited", headers))
    assert failure.kind == "quota_exhausted"
    assert failure.retry_after == 5 * 3600.0


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (openai.APIConnectionError(request=httpx2.Request("POST", "https://x")), "transient"),
        (openai.APITimeoutError(request=httpx2.Request("POST", "https://x")), "transient"),
        (anthropic.APIConnectionError(request=httpx2.Request("POST", "https://x")), "transient"),
        (anthropic.APITimeoutError(request=httpx2.Request("POST", "https://x")), "transient"),
        (openai.ContentFilterFinishReasonError(), "content_policy"),
        (openai.LengthFinishReasonError(completion=types.SimpleNamespace(usage=None)), "request"),  # type: ignore[arg-type]
    ],
)
def test_sdk_errors_without_status(error: Exception, kind: str) -> None:
    failure = co.classify(error)
    assert failure.kind == kind
    assert failure.status is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "request"),
        (401, "auth"),
        (402, "quota_exhausted"),
        (403, "auth"),
        (404, "request"),  # no sign of a model: the caller's own URL is wrong
        (408, "transient"),
        (409, "transient"),
        (413, "request"),
        (418, "request"),
        (422, "request"),
        (429, "rate_limited"),
        (500, "transient"),
        (502, "transient"),
        (503, "transient"),
        (504, "transient"),
        (529, "transient"),
    ],
)
def test_httpx_response_by_status(status: int, kind: str) -> None:
    response = httpx_response(status)
    assert co.classify(response).kind == kind
    with pytest.raises(httpx.HTTPStatusError) as excinfo:
        response.raise_for_status()
    assert co.classify(excinfo.value).kind == kind


def test_httpx2_response_is_understood_too() -> None:
    response = sdk_response(429, "https://x", {"error": {"code": "insufficient_quota"}}, {"retry-after": "3"})
    failure = co.classify(response)
    assert (failure.kind, failure.retry_after) == ("quota_exhausted", 3.0)


def test_httpx_response_body_and_headers() -> None:
    response = httpx_response(
        429,
        json={"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
        headers={"retry-after-ms": "1500"},
    )
    failure = co.classify(response)
    assert (failure.kind, failure.retry_after, failure.code) == ("rate_limited", 1.5, "rate_limit_exceeded")


def test_error_body_shapes() -> None:
    assert co.classify({"type": "error", "error": {"type": "overloaded_error"}}).kind == "transient"
    assert co.classify({"error": {"code": "context_length_exceeded"}}).kind == "context_length"
    assert co.classify({"error": "invalid_grant", "error_description": "token expired"}).kind == "auth"
    azure = {"error": {"code": "content_filter", "innererror": {"code": "ResponsibleAIPolicyViolation"}}}
    assert co.classify(httpx_response(400, json=azure)).kind == "content_policy"
    assert co.classify(httpx_response(404, json={"error": {"code": "DeploymentNotFound"}})).kind == "model_unavailable"
    google = [{"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}]
    assert co.classify(httpx_response(429, json=google)).kind == "rate_limited"


def test_non_json_and_unread_bodies() -> None:
    html = httpx.Response(502, text="<html>Bad Gateway</html>", request=httpx.Request("GET", "https://x"))
    failure = co.classify(html)
    assert (failure.kind, failure.message) == ("transient", "<html>Bad Gateway</html>")

    def chunks() -> Any:
        yield b'{"error": {"code": "insufficient_quota"}}'

    streamed = httpx.Response(429, content=chunks(), request=httpx.Request("GET", "https://x"))
    assert co.classify(streamed).kind == "rate_limited"  # body not read: status only, no crash
    streamed.read()
    assert co.classify(streamed).kind == "quota_exhausted"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ConnectTimeout("timed out"), "transient"),
        (httpx.ReadTimeout("timed out"), "transient"),
        (httpx.ConnectError("refused"), "transient"),
        (httpx.RemoteProtocolError("peer closed"), "transient"),
        (httpx2.ReadTimeout("timed out"), "transient"),
        (httpx2.ConnectError("refused"), "transient"),
        (httpx.UnsupportedProtocol("ftp"), "request"),
        (TimeoutError(), "transient"),
        (ConnectionResetError(), "transient"),
        (OSError("network unreachable"), "transient"),
        (RuntimeError("something odd"), "transient"),
        (ValueError("unexpected payload"), "transient"),
        (TypeError("fn() takes 0 positional arguments"), "request"),
        (AttributeError("'Member' object has no attribute 'secrt'"), "request"),
    ],
)
def test_exceptions_without_a_response(error: Exception, kind: str) -> None:
    assert co.classify(error).kind == kind


def test_wrapped_error_is_classified_by_its_cause() -> None:
    cause = openai_error(401, "invalid_api_key", "bad key")
    try:
        try:
            raise cause
        except openai.APIStatusError as exc:
            raise RuntimeError("request failed") from exc
    except RuntimeError as wrapper:
        assert co.classify(wrapper).kind == "auth"


@pytest.mark.parametrize("error", [asyncio.CancelledError(), KeyboardInterrupt(), GeneratorExit(), SystemExit(1)])
def test_cancellation_is_never_classified(error: BaseException) -> None:
    with pytest.raises(type(error)) as excinfo:
        co.classify(error)
    assert excinfo.value is error
    with pytest.raises(type(error)):
        classify_with(error, (lambda e: co.Failure(kind="transient"),))


def test_successful_response_is_not_a_failure() -> None:
    with pytest.raises(ValueError, match="not a failure"):
        co.classify(httpx_response(200, json={"ok": True}))


class QuotaGone(Exception):
    pass


def test_user_classifier_first_then_builtin() -> None:
    def mine(error: object) -> co.Failure | None:
        return co.Failure(kind="quota_exhausted", retry_after=60.0) if isinstance(error, QuotaGone) else None

    assert classify_with(QuotaGone(), (mine,)) == co.Failure(kind="quota_exhausted", retry_after=60.0)
    assert classify_with(openai_error(401, "invalid_api_key"), (mine,)).kind == "auth"
    with pytest.raises(TypeError, match="expected a Failure"):
        classify_with(QuotaGone(), (lambda e: "quota_exhausted",))  # type: ignore[arg-type, return-value]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=400, max_value=599),
    st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
    st.dictionaries(
        st.sampled_from(["retry-after", "x-ratelimit-reset-requests", "x-ratelimit-remaining-requests", "date"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
        max_size=4,
    ),
)
def test_garbage_responses_never_crash(status: int, content: bytes, headers: dict[str, str]) -> None:
    response = httpx.Response(status, content=content, headers=headers, request=httpx.Request("GET", "https://x"))
    failure = co.classify(response)
    assert failure.status == status
    assert failure.retry_after is None or failure.retry_after >= 0

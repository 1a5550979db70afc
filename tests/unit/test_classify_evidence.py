"""The classifier reads every piece of evidence a provider gives (docs/design.md, "Failure kinds"): each
documented error code, the code on the exception object, nested ``details`` and ``innererror`` codes,
the message where the status leaves room for it, the status, the exception class; and it takes the
hint that fits the kind. Each case is one a user meets with a real provider."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

import coordinator as co
from coordinator.rules.classify import classify_with, is_error_response, is_response, safe_attr


def resp(status: int, body: Any = None, headers: dict[str, str] | None = None, text: str | None = None
         ) -> httpx.Response:
    request = httpx.Request("POST", "https://api.example/v1/chat")
    if text is not None:
        return httpx.Response(status, text=text, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


CODES = {
    "quota_exhausted": ["insufficient_quota", "billing_hard_limit_reached", "billing_not_active", "billing_error",
                        "quota_exceeded"],
    "context_length": ["context_length_exceeded", "context_window_exceeded"],
    "content_policy": ["content_policy_violation", "content_filter", "moderation_blocked", "invalid_prompt",
                       "ResponsibleAIPolicyViolation"],
    "model_unavailable": ["model_not_found", "model_not_available", "model_decommissioned", "model_deprecated",
                          "DeploymentNotFound"],
    "auth": ["invalid_api_key", "authentication_error", "permission_error", "invalid_authentication",
             "account_deactivated", "unauthorized", "invalid_grant", "invalid_token", "expired_token",
             "token_expired", "unsupported_country_region_territory"],
    "rate_limited": ["rate_limit_exceeded", "rate_limit_error", "too_many_requests", "tokens_exceeded"],
    "transient": ["overloaded_error", "api_error", "server_error", "timeout_error", "service_unavailable",
                  "internal_error"],
}
CASES = [(code, kind) for kind, codes in CODES.items() for code in codes]


@pytest.mark.parametrize(("code", "kind"), CASES)
def test_every_documented_code_in_the_body_beats_a_plain_400(code: str, kind: str) -> None:
    failure = co.classify(resp(400, {"error": {"code": code, "message": "see code"}}))
    assert failure.kind == kind
    assert failure.code == code.lower()


@pytest.mark.parametrize(("code", "kind"), CASES)
def test_every_documented_code_on_the_exception_object(code: str, kind: str) -> None:
    class SDKError(Exception):
        pass

    error = SDKError("failed")
    error.code = code  # type: ignore[attr-defined]
    assert co.classify(error).kind == kind


@pytest.mark.parametrize("attribute", ["code", "error_code", "type"])
def test_the_code_attributes_an_sdk_error_may_carry(attribute: str) -> None:
    error = RuntimeError("quota")
    setattr(error, attribute, " Insufficient_Quota ")
    failure = co.classify(error)
    assert (failure.kind, failure.code) == ("quota_exhausted", "insufficient_quota")


def test_the_error_type_and_code_fields_of_the_body_are_read() -> None:
    assert co.classify(resp(400, {"error": {"type": "rate_limit_error"}})).kind == "rate_limited"
    assert co.classify(resp(400, {"error": {"status": "UNAUTHORIZED"}})).kind == "auth"
    assert co.classify(resp(500, {"code": "insufficient_quota"})).kind == "quota_exhausted", "a bare error object"


def test_a_nested_details_error_code_is_the_most_specific_cause() -> None:
    body = {"error": {"code": "bad_request", "message": "refused",
                      "details": {"error_code": "insufficient_quota"}}}
    failure = co.classify(resp(400, body))
    assert (failure.kind, failure.code) == ("quota_exhausted", "insufficient_quota")
    assert co.classify(resp(400, {"error": {"details": {"error_code": 5}}})).kind == "request"
    assert co.classify(resp(400, {"error": {"details": ["insufficient_quota"]}})).kind == "request"


def test_an_innererror_code_is_read() -> None:
    body = {"error": {"code": "bad_request", "innererror": {"code": "ResponsibleAIPolicyViolation"}}}
    assert co.classify(resp(400, body)).kind == "content_policy"
    assert co.classify(resp(400, {"error": {"innererror": {"code": 1}}})).kind == "request"


def test_oauth_style_errors() -> None:
    failure = co.classify(resp(400, {"error": "invalid_grant", "error_description": "refresh token revoked"}))
    assert (failure.kind, failure.code, failure.message) == ("auth", "invalid_grant", "refresh token revoked")
    assert co.classify(resp(400, {"error": "invalid_token", "message": "bad"})).message == "bad"


def test_a_list_wrapped_error_and_an_empty_list() -> None:
    assert co.classify(resp(400, [{"error": {"code": "insufficient_quota"}}])).kind == "quota_exhausted"
    assert co.classify(resp(400, [])).kind == "request"


def test_bytes_and_text_bodies_of_sdk_errors() -> None:
    error = RuntimeError("boom")
    error.body = b'{"error": {"code": "context_length_exceeded", "message": "too long"}}'  # type: ignore[attr-defined]
    failure = co.classify(error)
    assert (failure.kind, failure.message) == ("context_length", "too long")
    error = RuntimeError("x")
    error.body = "upstream said no"  # type: ignore[attr-defined]
    assert co.classify(error).message == "upstream said no", "the provider's text, not the wrapper's"


def test_a_non_json_body_becomes_the_message() -> None:
    failure = co.classify(resp(502, text="  <html>Bad Gateway</html> \n"))
    assert (failure.kind, failure.message) == ("transient", "<html>Bad Gateway</html>")


@pytest.mark.parametrize(("status", "message", "kind"), [
    (400, "This model's maximum context length is 8192 tokens", "context_length"),
    (400, "prompt is too long: 210000 tokens > 200000 maximum", "context_length"),
    (413, "Request exceeds the context window", "context_length"),
    (400, "Your request was rejected by our safety system", "content_policy"),
    (400, "Your prompt violates our content policy", "content_policy"),
    (400, "blocked by the content management policy", "content_policy"),
    (400, "Output blocked by content filtering policy", "content_policy"),
    (403, "You exceeded your current quota, please check your plan", "quota_exhausted"),
    (400, "Your credit balance is too low to access the API", "quota_exhausted"),
    (402, "insufficient funds", "quota_exhausted"),
    (429, "You exceeded your current quota", "quota_exhausted"),
    (404, "The model `gpt-9` does not exist or you do not have access to it.", "model_unavailable"),
    (404, "model: claude-3-opus-19990101", "model_unavailable"),
    (400, "unsupported model", "model_unavailable"),
    (410, "The model text-davinci-003 has been deprecated", "model_unavailable"),
    (422, "Unprocessable", "request"),
    (429, "Rate limit reached for text-moderation-latest", "rate_limited"),
    (500, "maximum context length exceeded somewhere upstream", "transient"),
    (500, "exceeded your current quota", "transient"),
    (503, "model overloaded, is not available", "transient"),
])
def test_message_heuristics_only_where_the_status_leaves_room(status: int, message: str, kind: str) -> None:
    assert co.classify(resp(status, {"error": {"message": message}})).kind == kind


def test_a_subscription_window_rejected_is_a_quota_allowed_is_a_rate_limit() -> None:
    rejected = {"anthropic-ratelimit-unified-5h-status": "Rejected",
                "anthropic-ratelimit-unified-5h-reset": "1714568400", "date": "Wed, 01 May 2024 12:00:00 GMT",
                "retry-after": "12"}
    failure = co.classify(resp(429, {"error": {"message": "limit"}}, rejected))
    assert (failure.kind, failure.retry_after) == ("quota_exhausted", 12.0)
    del rejected["retry-after"]
    assert co.classify(resp(429, {}, rejected)).retry_after == 3600.0, "the window's own reset"
    allowed = dict(rejected, **{"anthropic-ratelimit-unified-5h-status": "allowed"})
    assert co.classify(resp(429, {}, allowed)).kind == "rate_limited"
    other = {"anthropic-ratelimit-requests-status": "rejected"}
    assert co.classify(resp(429, {}, other)).kind == "rate_limited"
    assert co.classify(resp(403, {}, rejected)).kind == "auth", "only a 429 says the window closed"


@pytest.mark.parametrize(("status", "kind"), [
    (400, "request"), (401, "auth"), (402, "quota_exhausted"), (403, "auth"), (404, "request"), (405, "request"),
    (408, "transient"), (409, "transient"), (413, "request"), (422, "request"), (425, "transient"),
    (429, "rate_limited"), (499, "transient"), (500, "transient"), (502, "transient"), (599, "transient"),
])
def test_the_status_alone(status: int, kind: str) -> None:
    failure = co.classify(resp(status, text=""))
    assert (failure.kind, failure.status) == (kind, status)


def test_below_400_is_not_a_failure() -> None:
    for status in (200, 204, 301, 399):
        with pytest.raises(ValueError, match=f"Response with status {status} is not a failure"):
            co.classify(resp(status, text=""))


def test_a_200_stream_carrying_an_error_code_is_a_failure() -> None:
    assert co.classify(resp(200, {"type": "error", "error": {"type": "overloaded_error"}})).kind == "transient"


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("invalid_request_error", None, "request"), ("not_found_error", None, "request"),
    ("request_too_large", None, "request"), ("invalid_request_error", 503, "transient"),
    ("something_else", None, "transient"),
])
def test_weak_error_types_only_when_the_status_says_nothing(code: str, status: int | None, kind: str) -> None:
    error = RuntimeError("failed")
    error.type = code  # type: ignore[attr-defined]
    if status is not None:
        error.status_code = status  # type: ignore[attr-defined]
    assert co.classify(error).kind == kind


@pytest.mark.parametrize(("name", "kind"), [
    ("ContentFilterFinishReasonError", "content_policy"), ("LengthFinishReasonError", "request"),
    ("UnsupportedProtocol", "request"), ("TooManyRedirects", "request"), ("InvalidURL", "request"),
    ("TimeoutException", "transient"), ("TransportError", "transient"), ("NetworkError", "transient"),
    ("ProtocolError", "transient"), ("ProxyError", "transient"), ("DecodingError", "transient"),
    ("StreamError", "transient"), ("APIConnectionError", "transient"), ("APITimeoutError", "transient"),
])
def test_sdk_exception_classes_by_name_anywhere_in_their_mro(name: str, kind: str) -> None:
    base = type(name, (Exception,), {})
    sub = type("Specific" + name, (base,), {})
    assert co.classify(base("x")).kind == kind
    assert co.classify(sub("x")).kind == kind


def test_openai_content_filter_finish_reason_is_a_policy_refusal() -> None:
    import openai

    error = openai.ContentFilterFinishReasonError()
    assert co.classify(error).kind == "content_policy"


@pytest.mark.parametrize("error", [TypeError("x"), AttributeError("x"), NameError("x"), ImportError("x"),
                                   AssertionError("x"), NotImplementedError("x")])
def test_bugs_in_the_callers_code_are_not_the_members_fault(error: Exception) -> None:
    assert co.classify(error).kind == "request"


def test_a_plain_mapping_without_an_error_is_a_transient_failure() -> None:
    assert co.classify({"error": {"code": "unheard_of"}}).kind == "transient"


def test_cancellation_is_raised_again_by_classify_with_too() -> None:
    with pytest.raises(KeyboardInterrupt):
        classify_with(KeyboardInterrupt(), (lambda e: co.Failure(kind="auth"),))


def test_a_failure_is_its_own_classification() -> None:
    failure = co.Failure(kind="auth", status=401)
    assert co.classify(failure) is failure


def test_a_wrapper_is_classified_by_its_cause_up_to_five_levels() -> None:
    root = RuntimeError("quota")
    root.code = "insufficient_quota"  # type: ignore[attr-defined]
    error: BaseException = root
    for _ in range(4):
        try:
            raise ValueError("wrapped") from error
        except ValueError as wrapped:
            error = wrapped
    assert co.classify(error).kind == "quota_exhausted"
    try:
        raise ValueError("one more") from error
    except ValueError as deeper:
        assert co.classify(deeper).kind == "transient", "the chain is followed five levels, no further"


def test_a_wrapper_with_evidence_of_its_own_is_not_replaced_by_its_cause() -> None:
    cause = RuntimeError("q")
    cause.code = "insufficient_quota"  # type: ignore[attr-defined]
    try:
        raise RuntimeError("auth") from cause
    except RuntimeError as wrapper:
        wrapper.status_code = 401  # type: ignore[attr-defined]
        assert co.classify(wrapper).kind == "auth"


def test_the_message_is_capped_and_the_first_code_reported() -> None:
    failure = co.classify(resp(400, {"error": {"message": "x" * 2000, "code": "invalid_api_key",
                                               "type": "invalid_request_error"}}))
    assert len(failure.message) == 500
    assert (failure.kind, failure.code) == ("auth", "invalid_api_key")


def test_codes_are_stripped_lowercased_and_unique() -> None:
    error = RuntimeError("x")
    error.code = "Invalid_API_Key"  # type: ignore[attr-defined]
    error.type = " invalid_api_key "  # type: ignore[attr-defined]
    error.error_code = "   "  # type: ignore[attr-defined]
    assert co.classify(error).code == "invalid_api_key"


@pytest.mark.parametrize(("status", "headers", "retry_after"), [
    (429, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}, 20.0),
    (402, {"x-ratelimit-reset-requests": "20s"}, None),
    (402, {"retry-after": "60"}, 60.0),
    (503, {"retry-after": "5"}, 5.0),
    (503, {"x-ratelimit-reset-requests": "20s"}, None),
    (404, {"retry-after": "5"}, None),
    (401, {"retry-after": "5"}, None),
    (400, {"retry-after": "5"}, None),
])
def test_the_hint_that_fits_the_kind(status: int, headers: dict[str, str], retry_after: float | None) -> None:
    assert co.classify(resp(status, text="", headers=headers)).retry_after == retry_after


def test_model_unavailable_takes_an_explicit_retry_after() -> None:
    body = {"error": {"code": "model_not_available"}}
    assert co.classify(resp(404, body, {"retry-after": "30"})).retry_after == 30.0


def test_user_classifiers_first_non_none_wins_and_must_return_a_failure() -> None:
    seen: list[object] = []

    def unsure(error: object) -> co.Failure | None:
        seen.append(error)
        return None

    def sure(error: object) -> co.Failure | None:
        return co.Failure(kind="auth")

    error = RuntimeError("x")
    assert classify_with(error, (unsure, sure)).kind == "auth"
    assert classify_with(error, (unsure,)).kind == "transient"
    assert seen == [error, error]
    with pytest.raises(TypeError, match="expected a Failure or None"):
        classify_with(error, (lambda e: "auth",))  # type: ignore[arg-type, return-value]


def test_what_looks_like_a_response() -> None:
    assert is_response(resp(200, text=""))
    assert not is_response(RuntimeError())
    assert not is_response(object())

    class NoHeaders:
        status_code = 500

    assert not is_response(NoHeaders())
    assert is_error_response(resp(400, text="")) and not is_error_response(resp(399, text=""))
    assert not is_error_response(object())


def test_a_boolean_status_is_no_status_and_raising_properties_are_no_evidence() -> None:
    error = RuntimeError("x")
    error.status_code = True  # type: ignore[attr-defined]
    assert co.classify(error).status is None

    class Nasty(Exception):
        @property
        def response(self) -> Any:
            raise RuntimeError("unset")

    assert safe_attr(Nasty(), "response") is None
    assert co.classify(Nasty("x")).kind == "transient"


def test_an_exception_carrying_a_response_is_read_through_it() -> None:
    error = RuntimeError("upstream")
    error.response = resp(429, {"error": {"code": "insufficient_quota"}}, {"retry-after": "9"})  # type: ignore[attr-defined]
    failure = co.classify(error)
    assert (failure.kind, failure.status, failure.retry_after) == ("quota_exhausted", 429, 9.0)


def test_an_unread_streamed_body_is_skipped() -> None:
    def chunks() -> Any:
        yield b'{"error": {"code": "insufficient_quota"}}'

    streamed = httpx.Response(429, content=chunks(), request=httpx.Request("GET", "https://x"))
    assert co.classify(streamed).kind == "rate_limited"
    empty = resp(429, text="")
    assert co.classify(empty).message == ""


def test_headers_alone_are_evidence() -> None:
    error = RuntimeError("x")
    error.response = resp(503, text="", headers={"retry-after": "2"})  # type: ignore[attr-defined]
    failure = co.classify(error)
    assert failure.retry_after == 2.0 and not math.isnan(failure.retry_after)


def test_a_body_that_is_not_utf8_is_read_not_raised() -> None:
    error = RuntimeError("x")
    error.body = b"\xff\xfe upstream broke"  # type: ignore[attr-defined]
    failure = co.classify(error)
    assert failure.kind == "transient" and "upstream broke" in failure.message
    response = httpx.Response(503, content=b"\xff bad gateway", request=httpx.Request("GET", "https://x"))
    assert "bad gateway" in co.classify(response).message


def test_a_response_attribute_that_is_no_response_is_ignored() -> None:
    error = RuntimeError("odd")
    error.response = "not a response"  # type: ignore[attr-defined]
    failure = co.classify(error)
    assert (failure.kind, failure.status) == ("transient", None)

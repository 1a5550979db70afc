"""What a failed request means for the member that served it (docs/design.md, "Failure kinds"). Pure, no I/O.

``classify`` reads httpx responses and exceptions, the exceptions of the ``openai`` and ``anthropic``
SDKs and the error bodies of both APIs. The SDKs are never imported: their exceptions are recognised
by what they carry (``status_code``, ``response``, ``body``, ``code``, ``type``), so the same code
serves httpx, httpx2, requests and OpenAI-compatible servers.

The strongest evidence wins: an error code or type in the body (``insufficient_quota`` on a 429,
``overloaded_error`` on a stream that started with 200) beats the HTTP status, which beats the class
of the exception. Anything left over is ``transient``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator.core.errors import StreamInterruptedError
from coordinator.core.kinds import Failure, FailureKind
from coordinator.rules.hints import (
    explicit_retry_after,
    normalize_headers,
    parse_go_duration,
    rate_limit_buckets,
    rate_limit_hint,
)

#: A user's classifier: a Failure for the errors it knows, None to let the built-in rules decide.
Classifier = Callable[[Any], Failure | None]

_MESSAGE_LIMIT = 500

_QUOTA_CODES = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active", "billing_error", "quota_exceeded"}
)
_QUOTA_TEXT = re.compile(
    r"exceeded your current quota|credit balance is too low|insufficient (credit|balance|funds)|billing hard limit"
)
_CONTEXT_CODES = frozenset({"context_length_exceeded", "context_window_exceeded"})
_CONTEXT_TEXT = re.compile(
    r"prompt is too long|maximum context length|context[ _]length|context window|exceeds? (the )?context limit"
    r"|input is too long for requested model"
)
# OpenAI's 429 for one request larger than the key's whole per-minute token limit: waiting never helps,
# and no key of the same tier can serve it, so it is a context-window problem, not a rate limit.
_TOO_LARGE_TEXT = re.compile(r"request too large for .{0,200}\bper min")
_POLICY_CODES = frozenset(
    {
        "content_policy_violation",
        "content_filter",
        "moderation_blocked",
        "invalid_prompt",
        "responsibleaipolicyviolation",
    }
)
_POLICY_TEXT = re.compile(
    r"content (management )?policy|usage polic|safety system|flagged|moderation|content[ _]filter|output blocked"
)
_MODEL_CODES = frozenset(
    {"model_not_found", "model_not_available", "model_decommissioned", "model_deprecated", "deploymentnotfound"}
)
_MODEL_TEXT = re.compile(
    r"^model: |\bmodel\b.{0,120}\b(does not exist|not found|deprecated|decommissioned|(is )?not available|"
    r"no longer available)|\b(unknown|invalid|unsupported) model\b"
)
_AUTH_CODES = frozenset(
    {
        "invalid_api_key",
        "authentication_error",
        "permission_error",
        "invalid_authentication",
        "account_deactivated",
        "unauthorized",
        "invalid_grant",
        "invalid_token",
        "expired_token",
        "token_expired",
        "unsupported_country_region_territory",
    }
)
_RATE_CODES = frozenset({"rate_limit_exceeded", "rate_limit_error", "too_many_requests", "tokens_exceeded"})
_TRANSIENT_CODES = frozenset(
    {"overloaded_error", "api_error", "server_error", "timeout_error", "service_unavailable", "internal_error"}
)
# Error types that say little beyond "the request was refused": only used when the status says nothing.
_WEAK_TYPES: dict[str, FailureKind] = {
    "invalid_request_error": "request",
    "not_found_error": "request",
    "request_too_large": "request",
}

# AWS (Bedrock, also through the anthropic SDK's Bedrock client) names its error in x-amzn-errortype.
_AWS_TYPES: dict[str, FailureKind] = {
    "throttlingexception": "rate_limited",
    "toomanyrequestsexception": "rate_limited",
    "servicequotaexceededexception": "quota_exhausted",
    "serviceunavailableexception": "transient",
    "modelnotreadyexception": "transient",
    "internalserverexception": "transient",
    "modeltimeoutexception": "transient",
    "accessdeniedexception": "auth",
    "unrecognizedclientexception": "auth",
    "expiredtokenexception": "auth",
    "resourcenotfoundexception": "model_unavailable",
}

# Message heuristics only where the status leaves room for them: a 429 "Rate limit reached for
# text-moderation-latest" is a rate limit, not a moderation refusal.
_SOFT_STATUSES = frozenset({None, 200, 400, 404, 410, 413, 422})
_QUOTA_STATUSES = frozenset({None, 200, 400, 402, 403, 429})

# Exceptions found by class name anywhere in their MRO, so httpx, httpx2 and both SDKs match alike.
_TRANSIENT_CLASSES = frozenset(
    {
        "TimeoutException",
        "TransportError",
        "NetworkError",
        "ProtocolError",
        "ProxyError",
        "DecodingError",
        "StreamError",
        "APIConnectionError",
        "APITimeoutError",
        "TimeoutError",
        "ConnectionError",
    }
)
_REQUEST_CLASSES = frozenset({"UnsupportedProtocol", "TooManyRedirects", "InvalidURL", "LengthFinishReasonError"})
_POLICY_CLASSES = frozenset({"ContentFilterFinishReasonError"})
# A member that did not answer in time: httpx/httpx2 timeouts of every phase, the SDKs' APITimeoutError.
_TIMEOUT_CLASSES = frozenset({"TimeoutException", "APITimeoutError", "TimeoutError"})
# Bugs in the caller's own code: retrying them on every member would cool the whole fleet's pool.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, ImportError, AssertionError, NotImplementedError)


@dataclass
class _Evidence:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    codes: list[str] = field(default_factory=list)
    message: str = ""
    #: Google's RetryInfo.retryDelay from the body, seconds.
    retry_delay: float | None = None
    #: Google's QuotaFailure violation quota ids (e.g. "GenerateRequestsPerMinutePerProjectPerModel").
    quota_ids: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.status is not None or bool(self.codes) or bool(self.headers)

    def has(self, names: frozenset[str]) -> bool:
        return any(code in names for code in self.codes)


def classify(error_or_response: object, *, now: float | None = None) -> Failure:
    """What a failed attempt means: an exception raised by the request, or an error response.

    ``now`` (unix seconds) is only a fallback for converting absolute reset times when the response
    has no ``Date`` header. Cancellation (``CancelledError``, ``KeyboardInterrupt``, ``GeneratorExit``)
    is never classified: it is raised again at once. A successful response is not a failure
    (``ValueError``).
    """
    if isinstance(error_or_response, Failure):
        return error_or_response
    if isinstance(error_or_response, BaseException) and not isinstance(error_or_response, Exception):
        raise error_or_response
    target: object = error_or_response
    for _ in range(5):
        evidence = _gather(target)
        if evidence.found or not isinstance(target, BaseException):
            break
        # A wrapper that carries nothing itself (raise MyError(...) from sdk_error): ask its cause.
        cause = target.__cause__
        if not isinstance(cause, Exception):
            break
        target = cause
    is_error = evidence.codes or (evidence.status is not None and evidence.status >= 400)
    if not isinstance(target, BaseException) and not is_error:
        raise ValueError(f"{type(target).__name__} with status {evidence.status} is not a failure")
    kind = _decide(evidence, target)
    hint = _hint(kind, evidence.headers, now)
    if hint is None and kind in ("rate_limited", "transient"):
        hint = evidence.retry_delay
    return Failure(
        kind=kind,
        retry_after=hint,
        status=evidence.status,
        code=evidence.codes[0] if evidence.codes else None,
        message=evidence.message[:_MESSAGE_LIMIT],
        timeout=kind == "transient" and _is_timeout(target),
    )


def _is_timeout(target: object) -> bool:
    if isinstance(target, StreamInterruptedError):
        return target.reason in ("stalled", "deadline")
    if not isinstance(target, BaseException):
        return False
    return bool({cls.__name__ for cls in type(target).__mro__} & _TIMEOUT_CLASSES)


def classify_with(
    error_or_response: object, classifiers: tuple[Classifier, ...] = (), *, now: float | None = None
) -> Failure:
    """The user's classifiers first (the first non-None answer wins), then the built-in rules."""
    if isinstance(error_or_response, BaseException) and not isinstance(error_or_response, Exception):
        raise error_or_response
    for classifier in classifiers:
        answer = classifier(error_or_response)
        if answer is not None:
            if not isinstance(answer, Failure):
                raise TypeError(f"classifier {classifier!r} returned {answer!r}; expected a Failure or None")
            return answer
    return classify(error_or_response, now=now)


def is_response(value: object) -> bool:
    """Looks like an HTTP response (httpx, httpx2, requests): an integer status and headers."""
    status = getattr(value, "status_code", None)
    return isinstance(status, int) and not isinstance(value, BaseException) and hasattr(value, "headers")


def is_error_response(value: object) -> bool:
    return is_response(value) and int(getattr(value, "status_code", 0)) >= 400


# -- gathering evidence ----------------------------------------------------------------------------


def safe_attr(obj: object, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # properties of foreign objects may raise (httpx's .request when unset)
        return None


def _gather(target: object) -> _Evidence:
    evidence = _Evidence()
    response = target if is_response(target) else safe_attr(target, "response")
    if response is not None and is_response(response):
        evidence.status = int(safe_attr(response, "status_code"))
        evidence.headers = normalize_headers(safe_attr(response, "headers"))
    status = safe_attr(target, "status_code")
    if isinstance(status, int) and not isinstance(status, bool):
        evidence.status = status
    body: Any = None
    if isinstance(target, Mapping):
        body = target
    elif isinstance(target, BaseException):
        body = safe_attr(target, "body")
        for name in ("code", "error_code", "type"):
            value = safe_attr(target, name)
            if isinstance(value, str):
                evidence.codes.append(value)
    if body is None and response is not None and is_response(response):
        body = _response_body(response)
    _read_body(body, evidence)
    if isinstance(target, BaseException):
        evidence.message = evidence.message or str(target)
    aws = evidence.headers.get("x-amzn-errortype")
    if aws:
        evidence.codes.insert(0, aws.partition(":")[0])
    evidence.codes = _unique(code.strip().lower() for code in evidence.codes if code and code.strip())
    return evidence


def _response_body(response: object) -> Any:
    try:
        content = response.content  # type: ignore[attr-defined]  # httpx raises ResponseNotRead when streamed
    except Exception:
        return None
    if not content:
        return None
    if isinstance(content, bytes):
        content = content.decode("utf-8", errors="replace")
    return content


def _read_body(body: Any, evidence: _Evidence) -> None:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            evidence.message = evidence.message or body.strip()
            return
    if isinstance(body, list) and body:
        body = body[0]  # Google-style servers wrap the error object in a list
    if not isinstance(body, Mapping):
        return
    inner = body.get("error")
    if isinstance(inner, str):
        # OAuth style: {"error": "invalid_grant", "error_description": "..."}
        evidence.codes.append(inner)
        description = body.get("error_description") or body.get("message")
        if isinstance(description, str):
            evidence.message = evidence.message or description
        return
    error = inner if isinstance(inner, Mapping) else body
    for name in ("code", "type", "status"):
        value = error.get(name)
        if isinstance(value, str):
            evidence.codes.append(value)
    details = error.get("details")
    if isinstance(details, Mapping) and isinstance(details.get("error_code"), str):
        evidence.codes.insert(0, details["error_code"])
    if isinstance(details, list):
        _read_google_details(details, evidence)
    inner_error = error.get("innererror")
    if isinstance(inner_error, Mapping) and isinstance(inner_error.get("code"), str):
        evidence.codes.append(inner_error["code"])
    message = error.get("message")
    if isinstance(message, str):
        evidence.message = message


def _read_google_details(details: list[Any], evidence: _Evidence) -> None:
    """Gemini (native and OpenAI-compatible): ``google.rpc.RetryInfo`` and ``google.rpc.QuotaFailure``."""
    for detail in details:
        if not isinstance(detail, Mapping):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.rpc.RetryInfo"):
            evidence.retry_delay = parse_go_duration(str(detail.get("retryDelay", "")))
        elif kind.endswith("google.rpc.QuotaFailure") and isinstance(detail.get("violations"), list):
            for violation in detail["violations"]:
                if isinstance(violation, Mapping) and isinstance(violation.get("quotaId"), str):
                    evidence.quota_ids.append(violation["quotaId"].lower())


def _unique(values: Any) -> list[str]:
    out: list[str] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


# -- deciding ------------------------------------------------------------------------------------


def _subscription_window_closed(headers: Mapping[str, str]) -> bool:
    # Claude subscription (OAuth) accounts report their 5-hour / weekly windows as "unified" limits;
    # a rejected unified window is a quota that lasts hours, not a per-minute rate limit.
    return any(
        key.startswith("anthropic-ratelimit-unified") and key.endswith("-status") and value.lower() == "rejected"
        for key, value in headers.items()
    )


def _decide(ev: _Evidence, target: object) -> FailureKind:
    text = ev.message.lower()
    soft = ev.status in _SOFT_STATUSES
    if ev.has(_CONTEXT_CODES) or (soft and _CONTEXT_TEXT.search(text)):
        return "context_length"
    if ev.status in (None, 413, 429) and _TOO_LARGE_TEXT.search(text):
        return "context_length"
    if ev.has(_POLICY_CODES) or (soft and _POLICY_TEXT.search(text)):
        return "content_policy"
    if ev.quota_ids:
        # Google says which quota ran out: a per-day one is spent for the day, anything shorter is a rate.
        return "quota_exhausted" if any("perday" in q for q in ev.quota_ids) else "rate_limited"
    if ev.has(_QUOTA_CODES) or (ev.status in _QUOTA_STATUSES and _QUOTA_TEXT.search(text)):
        return "quota_exhausted"
    if ev.status == 429 and _subscription_window_closed(ev.headers):
        return "quota_exhausted"
    if ev.has(_MODEL_CODES) or (soft and _MODEL_TEXT.search(text)):
        return "model_unavailable"
    for code in ev.codes:
        if code in _AWS_TYPES:
            return _AWS_TYPES[code]
    if ev.has(_AUTH_CODES):
        return "auth"
    if ev.has(_RATE_CODES):
        return "rate_limited"
    if ev.has(_TRANSIENT_CODES):
        return "transient"
    by_status = _by_status(ev.status)
    if by_status is not None:
        return by_status
    for code in ev.codes:
        if code in _WEAK_TYPES:
            return _WEAK_TYPES[code]
    return _by_class(target)


def _by_status(status: int | None) -> FailureKind | None:
    if status is None or status < 400:
        return None
    if status in (401, 403):
        return "auth"
    if status == 402:
        return "quota_exhausted"
    if status == 429:
        return "rate_limited"
    if status in (408, 409, 425, 499) or status >= 500:
        return "transient"
    return "request"


def _by_class(target: object) -> FailureKind:
    if not isinstance(target, BaseException):
        return "transient"
    names = {cls.__name__ for cls in type(target).__mro__}
    if names & _POLICY_CLASSES:
        return "content_policy"
    if names & _REQUEST_CLASSES:
        return "request"
    if names & _TRANSIENT_CLASSES:
        return "transient"
    if isinstance(target, _PROGRAMMING_ERRORS):
        return "request"
    return "transient"


def _hint(kind: FailureKind, headers: Mapping[str, str], now: float | None) -> float | None:
    if not headers:
        return None
    if kind == "rate_limited":
        return rate_limit_hint(headers, now)
    if kind == "quota_exhausted":
        # Per-minute windows (x-ratelimit-reset-*) say nothing about a billing quota; only an explicit
        # retry-after or a subscription window's reset does.
        explicit = explicit_retry_after(headers, now)
        if explicit is not None:
            return explicit
        windows = [reset for name, _, reset in rate_limit_buckets(headers, now) if name.startswith("unified")]
        return max(windows) if windows else None
    if kind in ("transient", "model_unavailable"):
        return explicit_retry_after(headers, now)
    return None

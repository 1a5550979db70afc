"""Real provider failures for the executor and classifier tests: the SDKs' own exception classes,
built the way the SDKs build them (OpenAI passes the inner ``error`` object as ``body``, Anthropic the
whole body), around real httpx2 responses (what both SDKs use)."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import httpx2
import openai

OPENAI_URL = "https://api.openai.com/v1/chat/completions"
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"

_OPENAI_CLASSES: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}
_ANTHROPIC_CLASSES: dict[int, type[anthropic.APIStatusError]] = {
    400: anthropic.BadRequestError,
    401: anthropic.AuthenticationError,
    402: anthropic.PaymentRequiredError,
    403: anthropic.PermissionDeniedError,
    404: anthropic.NotFoundError,
    413: anthropic.ContentTooLargeError,
    429: anthropic.RateLimitError,
    500: anthropic.InternalServerError,
    529: anthropic.OverloadedError,
}


def sdk_response(status: int, url: str, body: Any = None, headers: dict[str, str] | None = None) -> httpx2.Response:
    request = httpx2.Request("POST", url)
    if body is None:
        return httpx2.Response(status, headers=headers, request=request)
    return httpx2.Response(status, headers=headers, json=body, request=request)


def openai_error(
    status: int,
    code: str | None = None,
    message: str = "error",
    type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> openai.APIStatusError:
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    response = sdk_response(status, OPENAI_URL, body, headers)
    cls = _OPENAI_CLASSES.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(f"Error code: {status} - {body}", response=response, body=body["error"])


def anthropic_error(
    status: int, type: str, message: str = "error", headers: dict[str, str] | None = None
) -> anthropic.APIStatusError:
    body = {"type": "error", "error": {"type": type, "message": message}}
    response = sdk_response(status, ANTHROPIC_URL, body, headers)
    cls = _ANTHROPIC_CLASSES.get(status, anthropic.APIStatusError)
    return cls(f"Error code: {status} - {body}", response=response, body=body)


def rate_limited(retry_after: float | None = 30.0) -> openai.RateLimitError:
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else None
    error = openai_error(429, "rate_limit_exceeded", "Rate limit reached", "requests", headers)
    assert isinstance(error, openai.RateLimitError)
    return error


def server_error(status: int = 503) -> openai.APIStatusError:
    return openai_error(status, None, "The server is overloaded", "server_error")


def httpx_response(
    status: int, *, json: Any = None, headers: dict[str, str] | None = None, url: str = OPENAI_URL
) -> httpx.Response:
    return httpx.Response(status, json=json, headers=headers, request=httpx.Request("POST", url))

"""How an HTTP model API's failures become ModelError. Pure: no I/O.

Both SDK-based providers (openai, anthropic) map the errors their SDK raises
through these functions, so one status means one RunError code everywhere:

    HTTP 401, 403           model_unauthorized   not retryable
    HTTP 429                model_rate_limited   retryable, retry_after_ms from
                                                 retry-after-ms / Retry-After
                                                 (an exhausted quota: not retryable)
    HTTP 408, 5xx, 529      model_unavailable    retryable
    other HTTP errors       model_error          not retryable

The SDK has already retried what it retries (max_retries) by the time one of
these is raised; `retryable` tells the client whether trying later may help.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Mapping

from agent_service.providers.base import ModelError

MAX_ERROR_TEXT = 300  # characters of an error body quoted in a message


def parse_retry_after_ms(headers: Mapping[str, str], now_s: float) -> int:
    """How long a 429 asks to wait, in ms: `retry-after-ms`, else `Retry-After`
    (seconds or an HTTP date); 0 when neither says."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0, round(float(value)))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return 0
    try:
        return max(0, round(float(value) * 1000))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0
    return max(0, round((when.timestamp() - now_s) * 1000))


def error_detail(body: str) -> str:
    """The human part of an error body: `error.message` of a JSON error, else the text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:MAX_ERROR_TEXT]
    if isinstance(parsed, Mapping) and isinstance(parsed.get("error"), Mapping):
        return str(parsed["error"].get("message", ""))[:MAX_ERROR_TEXT]
    return body.strip()[:MAX_ERROR_TEXT]


def error_for_status(
    status: int, headers: Mapping[str, str], body: str, *, key_setting: str, now_s: float
) -> ModelError:
    """The ModelError for an HTTP error reply; `key_setting` names the key's setting."""
    detail = error_detail(body)
    said = f" ({detail})" if detail else ""
    if status in (401, 403):
        return ModelError(
            "model_unauthorized",
            f"the model endpoint refused the API key (HTTP {status}){said}; check {key_setting}",
        )
    if status == 429:
        out_of_quota = "insufficient_quota" in body
        return ModelError(
            "model_rate_limited",
            f"the model endpoint is rate limiting requests (HTTP 429){said}",
            retryable=not out_of_quota,
            retry_after_ms=parse_retry_after_ms(headers, now_s),
        )
    if status == 408 or status >= 500:
        return ModelError(
            "model_unavailable",
            f"the model endpoint is unavailable (HTTP {status}){said}",
            retryable=True,
        )
    return ModelError(
        "model_error", f"the model endpoint refused the request (HTTP {status}){said}"
    )


def error_in_stream(kind: str, message: str) -> ModelError:
    """The ModelError for an error the API sent inside a stream (its `type` and message)."""
    lowered = kind.lower()
    if "rate_limit" in lowered:
        return ModelError(
            "model_rate_limited", f"rate limited in the stream: {message}", retryable=True
        )
    if "server_error" in lowered or "overloaded" in lowered or lowered == "api_error":
        return ModelError(
            "model_unavailable", f"model failed in the stream: {message}", retryable=True
        )
    return ModelError("model_error", f"the model reported an error in the stream: {message}")


def stream_cut(message: str) -> ModelError:
    """The ModelError for a stream that ended before the reply did."""
    return ModelError("model_unavailable", message, retryable=True)

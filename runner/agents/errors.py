"""Provider errors, sorted into what the agent does about them.

The two SDKs raise different classes but share a shape (`status_code`, `response.headers`,
`body`), so one classifier serves both. The kind is a short code for the console and for
counting; `retryable` says whether waiting may help; `retry_after_s` is the provider's own
advice (the `retry-after-ms` or `retry-after` header), which the agent honours.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any


class AgentConfigError(ValueError):
    """An agent that cannot be built as asked (a missing key, an unknown kind or option)."""


@dataclass(frozen=True)
class ProviderError:
    kind: str  # rate_limit | overloaded | server_error | timeout | connection | stream_broken | ...
    detail: str
    retryable: bool
    status: int | None = None
    retry_after_s: float | None = None


_STREAM_CUTS = frozenset({"RemoteProtocolError", "ReadError", "StreamCut", "IncompleteRead"})
_CONTEXT_HINTS = ("context_length_exceeded", "prompt is too long", "maximum context length",
                  "context window", "too many tokens")


def retry_after(headers: Any) -> float | None:
    """Seconds the provider asks us to wait, from `retry-after-ms` or `retry-after`."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
    except (TypeError, ValueError, AttributeError):
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _cut_stream(exc: BaseException) -> bool:
    """Whether the exception, or one it was raised from (an SDK wraps httpx's), is a cut stream."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if type(seen).__name__ in _STREAM_CUTS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def classify(exc: BaseException) -> ProviderError:
    """Sort an SDK exception (anthropic or openai) into a ProviderError."""
    name = type(exc).__name__
    detail = str(exc)[:2000] or name
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        response = getattr(exc, "response", None)
        after = retry_after(getattr(response, "headers", None))
        low = detail.lower()
        if status == 429:
            return ProviderError("rate_limit", detail, True, status, after)
        if status == 529:
            return ProviderError("overloaded", detail, True, status, after)
        if status >= 500:
            return ProviderError("server_error", detail, True, status, after)
        if status in (408, 409):
            return ProviderError("timeout" if status == 408 else "conflict", detail, True, status, after)
        if status in (400, 413) and any(h in low for h in _CONTEXT_HINTS):
            return ProviderError("context_length", detail, True, status, None)
        if status in (401, 403):
            return ProviderError("auth", detail, False, status, None)
        return ProviderError("bad_request" if status == 400 else f"http_{status}", detail, False,
                             status, None)
    if "Timeout" in name:
        return ProviderError("timeout", detail, True)
    # A stream cut mid-reply: the connection dropped (httpx's RemoteProtocolError, ReadError)
    # or the events stopped before the reply's end (the agent's StreamCut).
    if _cut_stream(exc):
        return ProviderError("stream_broken", detail, True)
    if "Connection" in name:
        return ProviderError("connection", detail, True)
    return ProviderError("unexpected", f"{name}: {detail}", False)

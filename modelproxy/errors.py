"""One error tree for both planes of the ModelProxy API.

    ModelProxyError                      every error this package raises
    ├── ConfigError (ValueError)         missing account id, bad endpoint, no proxy name
    ├── PortalDeadlockError (RuntimeError)  a sync twin called on the portal's own loop
    ├── WaitTimeoutError (TimeoutError)  a wait loop ran out of time
    ├── LimitExceededError               an answer past a limit the caller set: not retryable
    │   ├── ResponseTooLargeError        a body, or a stream's bytes or events, over its cap
    │   └── DeadlineExceededError        a call (e.g. a job's attempt) outlived its deadline
    ├── TransportError                   no HTTP answer: retryable
    │   ├── APITimeoutError              connect/read/write/pool timeout
    │   ├── APIConnectionError           refused, reset, DNS
    │   │   └── CertificateError         TLS verification failed: not retryable
    │   └── StreamInterruptedError       a stream ended before its final event
    └── HTTPError                        an HTTP answer with an error status
        ├── ClientError                  4xx
        │   ├── BadRequestError          400 (validation)
        │   ├── AuthenticationError      401
        │   ├── PermissionDeniedError    403
        │   ├── ResourceNotExistError    404
        │   │   └── ProxyNotFoundError   no proxy of that name (a 404, or one remembered)
        │   ├── RequestTimeoutError      408: retryable
        │   ├── ConflictError            409 (e.g. proxy not READY)
        │   └── RateLimitedError         429: retryable, carries retry_after_s
        ├── ServerError                  5xx: retryable
        └── ResourceAlreadyExistError    400/409/500 whose message says "already exists"

`retryable` is a class attribute, so callers decide with one `isinstance`-free check:
`getattr(exc, "retryable", False)`. Only our errors are ever retried.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CertificateError",
    "ClientError",
    "ConfigError",
    "ConflictError",
    "DeadlineExceededError",
    "HTTPError",
    "LimitExceededError",
    "ModelProxyError",
    "PermissionDeniedError",
    "PortalDeadlockError",
    "ProxyNotFoundError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ResourceAlreadyExistError",
    "ResourceNotExistError",
    "ResponseTooLargeError",
    "ServerError",
    "StreamInterruptedError",
    "TransportError",
    "WaitTimeoutError",
    "error_from_response",
    "parse_retry_after_s",
    "request_id_of",
]

MAX_RETRY_AFTER_S = 24 * 3600.0


class ModelProxyError(Exception):
    """Base of every error raised by `modelproxy`."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ModelProxyError, ValueError):
    """The configuration or the call cannot work (a programming or setup error)."""


class PortalDeadlockError(ModelProxyError, RuntimeError):
    """A sync twin called from code running on the portal loop (modelproxy.portal): it
    would wait for itself forever. The message names the async twin to await instead."""


class WaitTimeoutError(ModelProxyError, TimeoutError):
    """A wait loop (e.g. `wait_until_ready_or_failed`) ran out of time."""


class LimitExceededError(ModelProxyError):
    """The answer went past a limit the caller set. Never retried: the same upstream would
    most likely do it again, and each try would cost the limit's worth once more."""


class ResponseTooLargeError(LimitExceededError):
    """A body longer than allowed, or a stream with more bytes or events than allowed.
    Raised as the limit is passed: no more than the limit was held."""


class DeadlineExceededError(LimitExceededError):
    """The whole call (sending, waiting, every chunk) took longer than its deadline, however
    often the upstream sent something."""


class TransportError(ModelProxyError):
    """The request got no HTTP answer."""

    retryable = True


class APITimeoutError(TransportError):
    """Connect, read, write or pool timeout."""


class APIConnectionError(TransportError):
    """Connection refused or reset, DNS or TLS failure."""


class CertificateError(APIConnectionError):
    """The server's TLS certificate did not verify (a setup error, so never retried)."""

    retryable = False


class StreamInterruptedError(TransportError):
    """A streamed answer ended before its final event."""


class HTTPError(ModelProxyError):
    """An HTTP answer with an error status; keeps everything the server said."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_code: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        response_body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.response_body = response_body

    def __str__(self) -> str:
        code = f" [{self.error_code}]" if self.error_code else ""
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"HTTP {self.status_code}{code}: {self.message}{rid}"


class ClientError(HTTPError):
    """4xx."""


class BadRequestError(ClientError):
    """400: the request is invalid."""


class AuthenticationError(ClientError):
    """401: missing or wrong credentials."""


class PermissionDeniedError(ClientError):
    """403: the credentials may not do this."""


class ResourceNotExistError(ClientError):
    """404: no such proxy (on delete this means done)."""


class ProxyNotFoundError(ResourceNotExistError):
    """No proxy of this name: the server's 404 for it, or an earlier 404 remembered (a cache
    of proxies answers without asking again). The message names the proxy, nothing else."""

    def __init__(self, name: str, *, request_id: str | None = None) -> None:
        super().__init__(f'proxy "{name}" does not exist', status_code=404,
                         request_id=request_id)
        self.name = name

    def __str__(self) -> str:
        return self.message


class RequestTimeoutError(ClientError):
    """408: the server timed out waiting for the request."""

    retryable = True


class ConflictError(ClientError):
    """409: the resource is in a state that refuses this (e.g. not READY)."""


class RateLimitedError(ClientError):
    """429: slow down; `retry_after_s` says for how long when the server told us."""

    retryable = True


class ServerError(HTTPError):
    """5xx."""

    retryable = True


class ResourceAlreadyExistError(HTTPError):
    """Create of a name that exists (the real service answers HTTP 500 for this)."""


_BY_STATUS: dict[int, type[HTTPError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: ResourceNotExistError,
    408: RequestTimeoutError,
    409: ConflictError,
    429: RateLimitedError,
}


def parse_retry_after_s(
    headers: Mapping[str, str], *, now_s: float | None = None
) -> float | None:
    """Seconds to wait as the server asked: `retry-after-ms`, `retry-after` (seconds or
    HTTP date) or Alibaba's `x-acs-retry-after`; None when absent or unparsable."""
    lowered = {k.lower(): v for k, v in headers.items()}
    candidates = (
        (lowered.get("retry-after-ms"), 0.001),
        (lowered.get("retry-after"), 1.0),
        (lowered.get("x-acs-retry-after"), 1.0),
    )
    for raw, scale in candidates:
        if raw is None:
            continue
        value = _parse_delay(raw.strip(), scale, now_s)
        if value is not None:
            return min(max(value, 0.0), MAX_RETRY_AFTER_S)
    return None


def _parse_delay(raw: str, scale: float, now_s: float | None) -> float | None:
    try:
        return float(raw) * scale
    except ValueError:
        pass
    if scale != 1.0:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - (time.time() if now_s is None else now_s)


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The id the server gave a request: `x-request-id` (OpenAI's header, the model server's
    id behind a gateway), else `x-acs-request-id` (AgentRun's own); None without either."""
    return headers.get("x-request-id") or headers.get("x-acs-request-id") or None


def _body_fields(body: Any) -> tuple[str | None, str | None, str | None]:
    """(code, message, request id) from an AgentRun or OpenAI-style error body."""
    if not isinstance(body, dict):
        return None, None, None
    nested = body.get("error")
    err: dict[str, Any] = nested if isinstance(nested, dict) else body
    code = err.get("code") or err.get("Code") or err.get("type")
    message = err.get("message") or err.get("Message")
    request_id = body.get("requestId") or body.get("RequestId") or body.get("request_id")
    return (
        None if code is None else str(code),
        None if message is None else str(message),
        None if request_id is None else str(request_id),
    )


def error_from_response(
    status_code: int, content: bytes, headers: Mapping[str, str]
) -> HTTPError:
    """Map one HTTP error answer to the error tree (the only place that does this)."""
    try:
        body: Any = json.loads(content) if content else None
    except ValueError:
        body = content.decode("utf-8", "replace")
    code, message, request_id = _body_fields(body)
    if message is None:
        message = body.strip()[:300] if isinstance(body, str) and body.strip() else "no message"
    request_id = request_id or request_id_of(headers)
    cls: type[HTTPError]
    if status_code in (400, 409, 500) and "already exist" in message.lower():
        cls = ResourceAlreadyExistError
    elif status_code >= 500:
        cls = ServerError
    else:
        cls = _BY_STATUS.get(status_code, ClientError)
    return cls(
        message,
        status_code=status_code,
        error_code=code,
        request_id=request_id,
        retry_after_s=parse_retry_after_s(headers),
        response_body=body,
    )

"""What the upstream model said to a job's final attempt, as the job record keeps it.

Only an answer of the inference call counts: a refusal by mpq itself (a proxy not found or
not ready) or by the control plane never reached the model, so it has no upstream status.
"""

from __future__ import annotations

from typing import Any

from modelproxy.errors import HTTPError


class UpstreamRefused(Exception):
    """The inference call got an error status. It carries the `HTTPError` as raised, for the
    runner to decide on (retries, cool-downs) as for any other; this wrapper only says that
    the answer came from the upstream model."""

    def __init__(self, error: HTTPError) -> None:
        super().__init__(str(error))
        self.error = error


def error_type(status: int) -> str:
    """OpenAI's error `type` for a status, as its API answers."""
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_object(exc: HTTPError) -> dict[str, Any]:
    """The upstream's error in OpenAI's shape: its own `error` object when its body has one
    (every key kept, any of OpenAI's four it lacks added), else one made from the status,
    the code and the message."""
    body = exc.response_body
    given = body.get("error") if isinstance(body, dict) else None
    made: dict[str, Any] = {"message": exc.message, "type": error_type(exc.status_code),
                            "param": None, "code": None}
    if not isinstance(given, dict):
        return {**made, "code": exc.error_code}
    return {**made, **given}

"""The upstream's error object as a job record keeps it (worker/upstream.py): a table."""

from __future__ import annotations

import json

import pytest

from modelproxy.errors import error_from_response
from worker.upstream import error_object, error_type

OPENAI_ERROR = {"message": "The model `x` does not exist", "type": "invalid_request_error",
                "param": "model", "code": "model_not_found"}

CASES = [
    # OpenAI's own object, as it is.
    (404, {"error": OPENAI_ERROR}, OPENAI_ERROR),
    # Another provider's: every key kept, OpenAI's four added where missing.
    (400, {"error": {"message": "bad", "code": 1002, "provider": "p"}},
     {"message": "bad", "type": "invalid_request_error", "param": None, "code": 1002,
      "provider": "p"}),
    # AgentRun's shape: made from its code and message.
    (400, {"code": "InvalidParameter", "message": "bad cpu", "requestId": "r1"},
     {"message": "bad cpu", "type": "invalid_request_error", "param": None,
      "code": "InvalidParameter"}),
    (429, {"message": "slow down"},
     {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}),
    (503, {"error": "overloaded"},
     {"message": "no message", "type": "server_error", "param": None, "code": None}),
    # Not JSON: its text is the message.
    (502, "<html>bad gateway</html>",
     {"message": "<html>bad gateway</html>", "type": "server_error", "param": None,
      "code": None}),
    (500, None, {"message": "no message", "type": "server_error", "param": None, "code": None}),
]


@pytest.mark.parametrize(("status", "body", "expected"), CASES)
def test_error_object(status, body, expected):
    content = (b"" if body is None else body.encode() if isinstance(body, str)
               else json.dumps(body).encode())
    assert error_object(error_from_response(status, content, {})) == expected


@pytest.mark.parametrize(("status", "expected"), [
    (400, "invalid_request_error"), (401, "invalid_request_error"),
    (404, "invalid_request_error"), (429, "rate_limit_error"), (500, "server_error"),
    (503, "server_error"),
])
def test_error_type(status, expected):
    assert error_type(status) == expected

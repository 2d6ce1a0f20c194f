"""Error classification and Retry-After parsing: pure tables."""

from __future__ import annotations

import json

import pytest

from modelproxy import errors as e

CASES = [
    (400, {"code": "InvalidParameter", "message": "bad cpu"}, e.BadRequestError, False),
    (401, {"error": {"message": "API key mismatch", "code": "401"}}, e.AuthenticationError, False),
    (403, {"code": "Forbidden", "message": "no"}, e.PermissionDeniedError, False),
    (404, {"code": "NotFound", "message": "model proxy x does not exist"},
     e.ResourceNotExistError, False),
    (408, {"message": "slow"}, e.RequestTimeoutError, True),
    (409, {"message": "proxy is UPDATING"}, e.ConflictError, False),
    (409, {"message": "model proxy x already exists"}, e.ResourceAlreadyExistError, False),
    (429, {"message": "rate limited"}, e.RateLimitedError, True),
    (500, {"code": "InternalError", "message": "model proxy x Already Exists"},
     e.ResourceAlreadyExistError, False),
    (500, {"message": "boom"}, e.ServerError, True),
    (502, None, e.ServerError, True),
    (503, {"message": "unavailable"}, e.ServerError, True),
    (418, {"message": "teapot"}, e.ClientError, False),
]


@pytest.mark.parametrize(("status", "body", "cls", "retryable"), CASES)
def test_error_from_response_classifies(status, body, cls, retryable):
    content = b"" if body is None else json.dumps({**body, "requestId": "rid-1"}).encode()
    err = e.error_from_response(status, content, {})
    assert type(err) is cls
    assert err.retryable is retryable
    assert err.status_code == status
    if body is not None:
        assert err.request_id == "rid-1"


def test_error_keeps_server_code_and_message():
    err = e.error_from_response(
        400, b'{"code":"InvalidParameter","message":"cpu must be > 0","requestId":"r9"}', {}
    )
    assert err.error_code == "InvalidParameter"
    assert err.message == "cpu must be > 0"
    assert str(err) == "HTTP 400 [InvalidParameter]: cpu must be > 0 (request id r9)"


def test_non_json_body_becomes_the_message():
    err = e.error_from_response(502, b"<html>502 Bad Gateway</html>", {"x-request-id": "q"})
    assert isinstance(err, e.ServerError)
    assert "502 Bad Gateway" in err.message
    assert err.request_id == "q"


def test_rate_limited_carries_retry_after():
    err = e.error_from_response(429, b"{}", {"Retry-After": "7"})
    assert isinstance(err, e.RateLimitedError)
    assert err.retry_after_s == 7.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"x-acs-retry-after": "4"}, 4.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "99999999"}, e.MAX_RETRY_AFTER_S),
        ({}, None),
    ],
)
def test_parse_retry_after(headers, expected):
    now_s = 1445412480.0  # 2015-10-21T07:28:00Z
    assert e.parse_retry_after_s(headers, now_s=now_s) == expected


def test_transport_errors_are_retryable_and_config_errors_are_not():
    assert e.APITimeoutError("t").retryable
    assert e.APIConnectionError("c").retryable
    assert e.StreamInterruptedError("s").retryable
    assert not e.ConfigError("x").retryable
    assert isinstance(e.ConfigError("x"), ValueError)
    assert isinstance(e.WaitTimeoutError("x"), TimeoutError)


def test_a_missing_proxy_is_a_404_that_names_it_and_is_not_retried():
    err = e.ProxyNotFoundError("p-1", request_id="r1")
    assert isinstance(err, e.ResourceNotExistError)
    assert (err.name, err.status_code, err.request_id) == ("p-1", 404, "r1")
    assert str(err) == 'proxy "p-1" does not exist'
    assert not err.retryable


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-request-id": "req_1", "x-acs-request-id": "acs-1"}, "req_1"),
        ({"x-acs-request-id": "acs-1"}, "acs-1"),
        ({"x-request-id": "", "x-acs-request-id": "acs-1"}, "acs-1"),
        ({}, None),
    ],
)
def test_request_id_of_prefers_the_model_servers(headers, expected):
    assert e.request_id_of(headers) == expected
    content = b'{"error": {"message": "no"}}'
    assert e.error_from_response(400, content, headers).request_id == expected


def test_the_bodys_request_id_wins_over_the_headers():
    content = b'{"code": "Bad", "message": "no", "requestId": "body-1"}'
    assert e.error_from_response(400, content, {"x-request-id": "req_1"}).request_id == "body-1"

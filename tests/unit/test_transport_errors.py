"""Transport failures map to our tree by their root cause (pure)."""

from __future__ import annotations

import ssl

import aiohttp
import httpx
import pytest

from modelproxy.errors import (
    APIConnectionError,
    APITimeoutError,
    CertificateError,
    StreamInterruptedError,
)
from modelproxy.transport import classify_transport_error


def wrapped(outer: Exception, cause: BaseException | None) -> Exception:
    outer.__cause__ = cause
    return outer


KEY = aiohttp.client_reqrep.ConnectionKey("h", 1, True, True, None, None, None)
CERT = aiohttp.ClientConnectorCertificateError(KEY, ssl.SSLCertVerificationError("bad"))
REFUSED = aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "refused"))

CASES = [
    # httpx-aiohttp labels all of these ConnectTimeout; the cause says what happened.
    (wrapped(httpx.ConnectTimeout("x"), CERT), False, CertificateError),
    (wrapped(httpx.ConnectTimeout("x"), REFUSED), False, APIConnectionError),
    (wrapped(httpx.ConnectTimeout("x"), aiohttp.ConnectionTimeoutError()), False,
     APITimeoutError),
    (wrapped(httpx.ReadTimeout("x"), aiohttp.SocketTimeoutError()), False, APITimeoutError),
    (wrapped(httpx.ReadError("x"), aiohttp.ClientPayloadError("cut")), True,
     StreamInterruptedError),
    (wrapped(httpx.ReadError("x"), aiohttp.ClientPayloadError("cut")), False,
     APIConnectionError),
    (wrapped(httpx.ConnectTimeout("x"), aiohttp.ServerDisconnectedError()), True,
     StreamInterruptedError),
    (httpx.ReadTimeout("plain httpx"), False, APITimeoutError),
    (httpx.RemoteProtocolError("plain httpx"), True, StreamInterruptedError),
    (httpx.ConnectError("plain httpx"), False, APIConnectionError),
]


@pytest.mark.parametrize(("exc", "streaming", "expected"), CASES)
def test_classify(exc: Exception, streaming: bool, expected: type) -> None:
    assert classify_transport_error(exc, streaming=streaming) is expected


def test_certificate_errors_are_not_retried() -> None:
    assert not CertificateError("x").retryable
    assert APIConnectionError("x").retryable

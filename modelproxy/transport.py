"""The control plane's HTTP: a shared `httpx.AsyncClient` per event loop on the aiohttp
transport; the rules that map HTTP failures to `modelproxy.errors` (the data plane's
aiohttp calls, modelproxy/aio_transport.py, use them too); the deadline of a whole call.

Plain httpx's connection pool collapses past ~10 concurrent requests (encode/httpx#3215);
the aiohttp transport keeps the httpx API and holds hundreds of requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from modelproxy.config import Config
from modelproxy.errors import (
    APIConnectionError,
    APITimeoutError,
    CertificateError,
    DeadlineExceededError,
    HTTPError,
    StreamInterruptedError,
    TransportError,
    error_from_response,
)

USER_AGENT = "mpq-modelproxy/0.1"
# The caller's own concurrency (Celery slots, rate limits) is the real limit. Not None:
# the aiohttp transport then falls back to aiohttp's default of 100 connections.
MAX_CONNECTIONS = 4096
POOL_LIMITS = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=1000)

_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[bool | str, httpx.AsyncClient]
] = weakref.WeakKeyDictionary()


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        """Kept nowhere (see `_CookielessClient`)."""


class _CookielessClient(httpx.AsyncClient):
    """An AsyncClient that keeps no cookies. One client serves every proxy of a process, so
    a cookie one upstream sets must not ride along on requests for the others (and parsing
    them was ~170 µs of CPU per request)."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        del cookies


_NO_COOKIES = _NoCookies()


@functools.lru_cache(maxsize=4096)
def _parsed_url(url: str) -> httpx.URL:
    """httpx parses every URL it is given (~100 µs); ours repeat per proxy and path."""
    return httpx.URL(url)


def shared_client(verify: bool | str = True) -> httpx.AsyncClient:
    """The client for the running loop (one connection pool per loop and TLS setting)."""
    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    client = per_loop.get(verify)
    if client is None or client.is_closed:
        client = _CookielessClient(
            transport=AiohttpTransport(verify=ssl_verify(verify), limits=POOL_LIMITS),
            headers={"user-agent": USER_AGENT},
        )
        per_loop[verify] = client
    return client


def ssl_verify(verify: bool | str) -> bool | ssl.SSLContext:
    """A CA file path becomes a context (httpx deprecates `verify=<str>`)."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


async def close_shared_clients() -> None:
    """Close this loop's clients (call before the loop ends, e.g. at worker shutdown)."""
    loop = asyncio.get_running_loop()
    for client in _clients.pop(loop, {}).values():
        await client.aclose()


def timeout_for(config: Config) -> httpx.Timeout:
    return _timeout(config.get_timeout_s(), config.get_connect_timeout_s())


@functools.lru_cache(maxsize=64)
def _timeout(total_s: float, connect_s: float) -> httpx.Timeout:
    return httpx.Timeout(total_s, connect=connect_s)


def classify_transport_error(exc: BaseException, *, streaming: bool) -> type[TransportError]:
    """Our error class for an httpx or aiohttp failure; an httpx one is judged by the aiohttp
    error it wraps where there is one (httpx-aiohttp maps every aiohttp connection error to
    `ConnectTimeout`)."""
    cause = (exc.__cause__ or exc) if isinstance(exc, httpx.TransportError) else exc
    if isinstance(cause, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        return CertificateError
    if isinstance(cause, TimeoutError | httpx.TimeoutException):  # aiohttp's are TimeoutErrors
        return APITimeoutError
    if isinstance(cause, aiohttp.ClientPayloadError | httpx.RemoteProtocolError | httpx.ReadError):
        return StreamInterruptedError if streaming else APIConnectionError
    if isinstance(cause, aiohttp.ServerDisconnectedError) and streaming:
        return StreamInterruptedError
    return APIConnectionError


@contextlib.contextmanager
def mapped_transport_errors(*, streaming: bool = False) -> Iterator[None]:
    """Translate httpx exceptions into ours (the single place that does)."""
    try:
        yield
    except httpx.TransportError as exc:
        cls = classify_transport_error(exc, streaming=streaming)
        raise cls(str(exc) or repr(exc)) from exc


def raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise error_from_response(response.status_code, response.content, response.headers)


async def send(
    config: Config,
    method: str,
    url: str,
    *,
    json_body: Any = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    auth: httpx.Auth | None = None,
    extensions: dict[str, Any] | None = None,
) -> httpx.Response:
    """One request; returns a 2xx/3xx response or raises an `HTTPError`/`TransportError`."""
    client = shared_client(config.get_verify_tls())
    request = client.build_request(
        method, _parsed_url(url), json=json_body, params=params, headers=headers,
        timeout=timeout_for(config), extensions=extensions,
    )
    with mapped_transport_errors():
        response = await client.send(request, auth=auth or httpx.USE_CLIENT_DEFAULT)
    raise_for_status(response)
    return response


@contextlib.asynccontextmanager
async def deadline(seconds: float | None, what: str) -> AsyncIterator[None]:
    """Cancel the block's awaits once it has run `seconds` in all and raise
    `DeadlineExceededError` (a read timeout bounds each read only: a chunk every few
    seconds keeps a call alive forever). None: no deadline."""
    if seconds is None:
        yield
        return
    timer = asyncio.timeout(seconds)
    try:
        async with timer:
            yield
    except TimeoutError as exc:
        if not timer.expired():
            raise  # the block's own timeout, not ours
        raise DeadlineExceededError(f"{what} still running after {seconds:g} s") from exc


__all__ = [
    "HTTPError",
    "close_shared_clients",
    "deadline",
    "mapped_transport_errors",
    "send",
    "shared_client",
    "timeout_for",
]

"""The one HTTP boundary: a shared `httpx.AsyncClient` per event loop on the aiohttp
transport, and the mapping of httpx failures and error statuses to `modelproxy.errors`.

Plain httpx's connection pool collapses past ~10 concurrent requests (encode/httpx#3215);
the aiohttp transport keeps the httpx API and holds hundreds of requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import Any, cast

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
    ResponseTooLargeError,
    StreamInterruptedError,
    TransportError,
    error_from_response,
)

USER_AGENT = "mpq-modelproxy/0.1"
# The caller's own concurrency (Celery slots, rate limits) is the real limit. Not None:
# the aiohttp transport then falls back to aiohttp's default of 100 connections.
MAX_CONNECTIONS = 4096
POOL_LIMITS = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=1000)
# An error answer's message is near its start; the rest of a huge one is never read.
ERROR_BODY_MAX_BYTES = 64 * 1024

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
            transport=AiohttpTransport(verify=_ssl_verify(verify), limits=POOL_LIMITS),
            headers={"user-agent": USER_AGENT},
        )
        per_loop[verify] = client
    return client


def _ssl_verify(verify: bool | str) -> bool | ssl.SSLContext:
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
    """Our error class for an httpx failure, judged by its root aiohttp cause where there is
    one (httpx-aiohttp maps every aiohttp connection error to `ConnectTimeout`)."""
    cause = exc.__cause__ or exc
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
async def open_response(
    config: Config,
    method: str,
    url: str,
    *,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    auth: httpx.Auth | None = None,
) -> AsyncIterator[httpx.Response]:
    """Send and yield the open response, its body unread (read it with `read_body` or as a
    stream); an error status raises first, from at most `ERROR_BODY_MAX_BYTES` of its body."""
    client = shared_client(config.get_verify_tls())
    request = client.build_request(
        method, _parsed_url(url), json=json_body, headers=headers, timeout=timeout_for(config)
    )
    with mapped_transport_errors():
        response = await client.send(
            request, auth=auth or httpx.USE_CLIENT_DEFAULT, stream=True
        )
    try:
        if response.status_code >= 400:
            content = await _body_prefix(response, ERROR_BODY_MAX_BYTES)
            raise error_from_response(response.status_code, content, response.headers)
        yield response
    finally:
        await response.aclose()


async def read_body(response: httpx.Response, max_bytes: int | None = None) -> bytes:
    """The decoded body, read piece by piece (`aread` would hold all of it first). Past
    `max_bytes` it raises `ResponseTooLargeError` holding no more than that; a declared
    Content-Length over it raises before the first byte is read."""
    declared = response.headers.get("content-length", "")
    if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large("response body", max_bytes)
    parts: list[bytes] = []
    async for part in limited_bytes(response, max_bytes, "response body"):
        parts.append(part)
    return b"".join(parts)


async def limited_bytes(
    response: httpx.Response, max_bytes: int | None, what: str, *, streaming: bool = False
) -> AsyncIterator[bytes]:
    """The decoded body's pieces, counted: decoded, so a compressed body cannot grow past
    the limit after the check. Raises `ResponseTooLargeError` once `max_bytes` is passed."""
    size = 0
    with mapped_transport_errors(streaming=streaming):
        async with contextlib.aclosing(_pieces(response)) as pieces:
            async for piece in pieces:
                size += len(piece)
                if max_bytes is not None and size > max_bytes:
                    raise _too_large(what, max_bytes)
                yield piece


def limited_response(
    response: httpx.Response, max_bytes: int | None, what: str
) -> httpx.Response:
    """A view of a streaming `response` whose body raises `ResponseTooLargeError` past
    `max_bytes` decoded bytes, for readers that take a response (an SSE decoder)."""
    if max_bytes is None:
        return response
    if response.headers.get("content-encoding", "identity").strip().lower() == "identity":
        # Not encoded, so its raw bytes are the decoded ones: count them in place, one
        # generator step a piece. A second decoding pipeline (below) doubled a stream's CPU
        # per chunk and, with a hundred streams, its latency tail.
        response.stream = _CountedStream(response.stream, max_bytes, what)
        return response
    headers = {"content-type": response.headers.get("content-type", "")}
    return httpx.Response(
        response.status_code, headers=headers, request=response.request,
        stream=_ByteStream(limited_bytes(response, max_bytes, what, streaming=True)),
    )


class _CountedStream(httpx.AsyncByteStream):
    """A response's own stream, raising `ResponseTooLargeError` past `max_bytes`."""

    def __init__(self, inner: httpx.AsyncByteStream | httpx.SyncByteStream, max_bytes: int,
                 what: str) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)  # an async client's response
        self._inner = inner
        self._max_bytes = max_bytes
        self._what = what

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for piece in self._inner:
            size += len(piece)
            if size > self._max_bytes:
                raise _too_large(self._what, self._max_bytes)
            yield piece

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ByteStream(httpx.AsyncByteStream):
    """Already-decoded pieces as an httpx body (closing is left to the response they come
    from)."""

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._pieces:
            yield piece


async def _body_prefix(response: httpx.Response, max_bytes: int) -> bytes:
    """At most `max_bytes` of the decoded body: enough for an error's message."""
    parts: list[bytes] = []
    size = 0
    with mapped_transport_errors():
        async with contextlib.aclosing(_pieces(response)) as pieces:
            async for piece in pieces:
                parts.append(piece)
                size += len(piece)
                if size >= max_bytes:
                    break
    return b"".join(parts)[:max_bytes]


def _pieces(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The decoded body's generator, typed as one so that it can be closed early."""
    return cast(AsyncGenerator[bytes, None], response.aiter_bytes())


def _too_large(what: str, max_bytes: int) -> ResponseTooLargeError:
    return ResponseTooLargeError(f"{what} over the limit of {max_bytes} bytes")


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
    "ERROR_BODY_MAX_BYTES",
    "HTTPError",
    "close_shared_clients",
    "deadline",
    "limited_bytes",
    "limited_response",
    "mapped_transport_errors",
    "open_response",
    "read_body",
    "send",
    "shared_client",
    "timeout_for",
]

"""The data plane's HTTP: aiohttp itself, one session per event loop and TLS setting.

An inference call is the hot path of every job, made hundreds of times a second by one
worker. Through httpx on the aiohttp transport a call cost ~0.7 ms of CPU, against ~0.37 ms
for the same call made with aiohttp alone (100 calls in flight, measured in one process),
so the data plane speaks aiohttp directly. The control plane and everything else keep
httpx (modelproxy/transport.py), and both map failures to the same `modelproxy.errors`
classes by the same rules (`classify_transport_error`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import json
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from httpx_sse import ServerSentEvent

from modelproxy.auth import AgentrunRamAuth, ApiKeyAuth
from modelproxy.config import Config
from modelproxy.errors import ResponseTooLargeError, error_from_response
from modelproxy.transport import (
    MAX_CONNECTIONS,
    USER_AGENT,
    classify_transport_error,
    close_shared_clients,
    ssl_verify,
)

DataAuth = AgentrunRamAuth | ApiKeyAuth
JSON_TYPE = "application/json"
# An error answer's message is near its start; the rest of a huge one is never read.
ERROR_BODY_MAX_BYTES = 64 * 1024

_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[bool | str, aiohttp.ClientSession]
] = weakref.WeakKeyDictionary()


def data_session(verify: bool | str = True) -> aiohttp.ClientSession:
    """The session for the running loop (one connection pool per loop and TLS setting).
    It keeps no cookies: one session serves every proxy of a process, and a cookie one
    upstream sets must not ride along on requests for the others."""
    loop = asyncio.get_running_loop()
    per_loop = _sessions.setdefault(loop, {})
    session = per_loop.get(verify)
    if session is None or session.closed:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=ssl_verify(verify)),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"user-agent": USER_AGENT},
        )
        per_loop[verify] = session
    return session


async def close_http_pools() -> None:
    """Close this loop's HTTP pools, of both planes (call before the loop ends)."""
    await close_shared_clients()
    loop = asyncio.get_running_loop()
    for session in _sessions.pop(loop, {}).values():
        await session.close()


@functools.lru_cache(maxsize=64)
def _timeout(total_s: float, connect_s: float) -> aiohttp.ClientTimeout:
    # As the control plane's httpx.Timeout(total, connect=...): each read, and the wait for
    # a pooled connection, may take `total_s`; the whole call is bounded by the caller.
    return aiohttp.ClientTimeout(total=None, connect=total_s, sock_connect=connect_s,
                                 sock_read=total_s)


@contextlib.contextmanager
def mapped_errors(*, streaming: bool = False) -> Iterator[None]:
    """Translate aiohttp's exceptions into ours (TimeoutError: aiohttp's own timeouts)."""
    try:
        yield
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        cls = classify_transport_error(exc, streaming=streaming)
        raise cls(str(exc) or repr(exc)) from exc


@contextlib.asynccontextmanager
async def open_post(
    config: Config, url: str, body: Any, headers: Mapping[str, str], auth: DataAuth | None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST `body` as JSON and yield the open response, its body unread; an error status
    raises first (`error_from_response`, from at most `ERROR_BODY_MAX_BYTES` of its body)."""
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    # Names in lower case, so that a configured "Content-Type" replaces ours, not joins it.
    sent = {"host": urlsplit(url).netloc, "content-type": JSON_TYPE,
            **{name.lower(): value for name, value in headers.items()}}
    if auth is not None:
        sent.update((name.lower(), value)
                    for name, value in auth.headers_for("POST", url, sent).items())
    with mapped_errors():
        response = await data_session(config.get_verify_tls()).post(
            url, data=content, headers=sent,
            timeout=_timeout(config.get_timeout_s(), config.get_connect_timeout_s()))
    try:
        if response.status >= 400:
            prefix = await _body_prefix(response, ERROR_BODY_MAX_BYTES)
            raise error_from_response(response.status, prefix, response.headers)
        yield response
    finally:
        response.release()  # back to the pool when read to its end, else closed


async def _body_prefix(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    with mapped_errors():
        return await response.content.read(max_bytes)


async def read_limited(response: aiohttp.ClientResponse, max_bytes: int | None) -> bytes:
    """The decoded body. Past `max_bytes` it raises `ResponseTooLargeError` holding no more
    than that; a declared Content-Length over it raises before the first byte is read."""
    if max_bytes is not None:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large("response body", max_bytes)
    parts: list[bytes] = []
    async for piece in _pieces(response, max_bytes, "response body", streaming=False):
        parts.append(piece)
    return b"".join(parts)


async def _pieces(response: aiohttp.ClientResponse, max_bytes: int | None, what: str, *,
                  streaming: bool) -> AsyncIterator[bytes]:
    """The body as it comes, decoded (aiohttp decompresses), counted against `max_bytes`."""
    size = 0
    read = response.content.readany
    while True:
        with mapped_errors(streaming=streaming):
            piece = await read()
        if not piece:
            return
        size += len(piece)
        if max_bytes is not None and size > max_bytes:
            raise too_large(what, max_bytes)
        yield piece


def too_large(what: str, max_bytes: int) -> ResponseTooLargeError:
    return ResponseTooLargeError(f"{what} over the limit of {max_bytes} bytes")


async def sse_events(
    response: aiohttp.ClientResponse, max_bytes: int | None
) -> AsyncIterator[ServerSentEvent]:
    """The server-sent events of a streaming response, in order; its body is counted
    against `max_bytes`."""
    decoder = SSEDecoder()
    async for piece in _pieces(response, max_bytes, "stream", streaming=True):
        for event in decoder.feed(piece):
            yield event


class SSEDecoder:
    """Server-sent events from a body's pieces, as the HTML standard reads them: lines end
    in LF, CRLF or CR; `data` lines join with LF; a blank line ends an event; a line that
    starts with `:` is a comment. Pieces may split anywhere, within a character too."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._rest = ""  # the unfinished line
        self._after_cr = False  # the last piece ended in CR: a LF next is part of its CRLF
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, piece: bytes) -> list[ServerSentEvent]:
        text = self._text.decode(piece)
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the second half of a CRLF split between pieces
        if text:
            self._after_cr = text.endswith("\r")
        text = self._rest + text
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._rest = text.split("\n")
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not (self._data or self._event or self._id is not None or self._retry is not None):
            return None
        event = ServerSentEvent(event=self._event or "message", data="\n".join(self._data),
                                id=self._id or "", retry=self._retry)
        self._event, self._data, self._retry = "", [], None
        return event

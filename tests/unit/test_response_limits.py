"""Limits on one answer, read over real HTTP from a small server on a loopback port: bodies
are read in pieces and counted decoded, streams are capped in bytes and events, a deadline
bounds a whole call."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from httpx_sse import ServerSentEvent

from modelproxy.aio_transport import read_limited, sse_events
from modelproxy.errors import DeadlineExceededError, LimitExceededError, ResponseTooLargeError
from modelproxy.sse import limited_events
from modelproxy.transport import deadline

PIECE = 1024
T = TypeVar("T")
SSE_TYPE = {"content-type": "text/event-stream"}

# What the server answers next: headers, and the body's pieces.
Answer = tuple[Mapping[str, str], list[bytes]]


class Upstream:
    """Answers every request with the pieces it is given, one write each."""

    def __init__(self) -> None:
        self.answer: Answer = ({}, [])
        self.hang = False  # after the headers, send nothing more

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers, pieces = self.answer
        response = web.StreamResponse(headers=headers)
        if "content-length" not in headers:
            response.enable_chunked_encoding()
        await response.prepare(request)
        if self.hang:
            await asyncio.sleep(30)
        for piece in pieces:
            await response.write(piece)
        await response.write_eof()
        return response


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    upstream = Upstream()
    app = web.Application()
    app.router.add_post("/", upstream.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield upstream, str(server.make_url("/"))
    finally:
        await server.close()


async def answer(served: tuple[Upstream, str], pieces: list[bytes],
                 read: Callable[[aiohttp.ClientResponse], Awaitable[T]], **headers: str) -> T:
    """Serve `pieces` with `headers`, and return what `read` makes of the response."""
    upstream, url = served
    upstream.answer = (headers, pieces)
    async with aiohttp.ClientSession() as session, session.post(url) as response:
        return await read(response)


def test_limit_errors_are_never_retried() -> None:
    assert issubclass(ResponseTooLargeError, LimitExceededError)
    assert issubclass(DeadlineExceededError, LimitExceededError)
    assert not ResponseTooLargeError.retryable
    assert not DeadlineExceededError.retryable


async def test_a_body_within_the_limit_is_read_whole(upstream: tuple[Upstream, str]) -> None:
    pieces = [b"x" * PIECE] * 10
    assert await answer(upstream, pieces, lambda r: read_limited(r, 10 * PIECE)) == b"".join(pieces)
    assert await answer(upstream, pieces, lambda r: read_limited(r, None)) == b"".join(pieces)


async def test_a_body_past_the_limit_stops_at_the_limit(upstream: tuple[Upstream, str]) -> None:
    with pytest.raises(ResponseTooLargeError, match="response body over the limit of 10240"):
        await answer(upstream, [b"x" * PIECE] * 1000, lambda r: read_limited(r, 10 * PIECE))


async def test_a_declared_length_past_the_limit_is_refused_unread(
    upstream: tuple[Upstream, str],
) -> None:
    upstream[0].hang = True  # reading the body would wait 30 s for it
    try:
        with pytest.raises(ResponseTooLargeError):
            await asyncio.wait_for(answer(upstream, [], lambda r: read_limited(r, PIECE),
                                          **{"content-length": str(1000 * PIECE)}), 5)
    finally:
        upstream[0].hang = False


async def test_a_compressed_body_counts_decoded(upstream: tuple[Upstream, str]) -> None:
    bomb = gzip.compress(b"\0" * 1024 * 1024)  # ~1 KB on the wire
    with pytest.raises(ResponseTooLargeError):
        await answer(upstream, [bomb], lambda r: read_limited(r, 100 * PIECE),
                     **{"content-encoding": "gzip"})


def sse(count: int) -> bytes:
    return b"".join(b'data: {"n": %d}\n\n' % i for i in range(count))


def events(max_bytes: int | None, max_events: int | None,
           ) -> Callable[[aiohttp.ClientResponse], Awaitable[list[ServerSentEvent]]]:
    """A reader of a response's events, within these limits."""
    async def read(response: aiohttp.ClientResponse) -> list[ServerSentEvent]:
        return [e async for e in limited_events(sse_events(response, max_bytes), max_events)]
    return read


async def test_a_stream_within_its_limits_is_read_whole(upstream: tuple[Upstream, str]) -> None:
    got = await answer(upstream, [sse(50)], events(10_000, 50), **SSE_TYPE)
    assert [e.data for e in got] == [f'{{"n": {i}}}' for i in range(50)]


async def test_a_stream_past_its_bytes_stops_there(upstream: tuple[Upstream, str]) -> None:
    padding = b": keep-alive padding " * 50 + b"\n"  # comments only: no event
    with pytest.raises(ResponseTooLargeError, match="stream over the limit of 10240 bytes"):
        await answer(upstream, [padding] * 1000, events(10 * PIECE, None), **SSE_TYPE)


async def test_a_compressed_stream_counts_decoded(upstream: tuple[Upstream, str]) -> None:
    bomb = gzip.compress(b": padding\n" * 100_000)  # ~1 MB of comments, ~2 KB on the wire
    with pytest.raises(ResponseTooLargeError, match="stream over the limit of 10240 bytes"):
        await answer(upstream, [bomb], events(10 * PIECE, None),
                     **SSE_TYPE, **{"content-encoding": "gzip"})


async def test_a_stream_past_its_events_stops_there(upstream: tuple[Upstream, str]) -> None:
    with pytest.raises(ResponseTooLargeError, match="stream over the limit of 10 events"):
        await answer(upstream, [sse(50)], events(None, 10), **SSE_TYPE)


async def test_no_limit_adds_no_layer() -> None:
    async def source() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(data="x")

    events_in = source()
    assert limited_events(events_in, None) is events_in


async def test_a_deadline_bounds_the_whole_block() -> None:
    async def drip() -> None:
        for _ in range(1000):  # each read quick: only a total deadline ends it soon
            await asyncio.sleep(0.01)

    started = asyncio.get_running_loop().time()
    with pytest.raises(DeadlineExceededError, match=r"attempt still running after 0\.2 s"):
        async with deadline(0.2, "attempt"):
            await drip()
    assert 0.2 <= asyncio.get_running_loop().time() - started < 1


async def test_a_timeout_from_within_is_not_the_deadline() -> None:
    with pytest.raises(TimeoutError) as info:
        async with deadline(10, "attempt"):
            raise TimeoutError("inner")
    assert not isinstance(info.value, DeadlineExceededError)
    async with deadline(None, "attempt"):
        await asyncio.sleep(0)

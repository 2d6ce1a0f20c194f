"""Limits on one answer, on in-memory responses (pure): bodies are read in pieces and
counted decoded, streams are capped in bytes and events, a deadline bounds a whole call."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import httpx
import pytest
from httpx_sse import EventSource, ServerSentEvent

from modelproxy.errors import DeadlineExceededError, LimitExceededError, ResponseTooLargeError
from modelproxy.sse import limited_events
from modelproxy.transport import deadline, limited_response, read_body

PIECE = 1024


class Pieces(httpx.AsyncByteStream):
    """`count` pieces of `piece`, counting how many were taken."""

    def __init__(self, count: int, piece: bytes = b"x" * PIECE) -> None:
        self.count = count
        self.piece = piece
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.taken += 1
            yield self.piece


def response(stream: httpx.AsyncByteStream, **headers: str) -> httpx.Response:
    request = httpx.Request("POST", "http://upstream/v1/chat/completions")
    return httpx.Response(200, headers=headers, stream=stream, request=request)


def test_limit_errors_are_never_retried() -> None:
    assert issubclass(ResponseTooLargeError, LimitExceededError)
    assert issubclass(DeadlineExceededError, LimitExceededError)
    assert not ResponseTooLargeError.retryable
    assert not DeadlineExceededError.retryable


async def test_a_body_within_the_limit_is_read_whole() -> None:
    assert await read_body(response(Pieces(10)), 10 * PIECE) == b"x" * 10 * PIECE
    assert await read_body(response(Pieces(10))) == b"x" * 10 * PIECE  # no limit


async def test_a_body_past_the_limit_stops_at_the_limit() -> None:
    body = Pieces(1000)
    with pytest.raises(ResponseTooLargeError, match="response body over the limit of 10240"):
        await read_body(response(body), 10 * PIECE)
    assert body.taken == 11  # the piece that passed the limit, and not one more


async def test_a_declared_length_past_the_limit_is_refused_unread() -> None:
    body = Pieces(1000)
    with pytest.raises(ResponseTooLargeError):
        await read_body(response(body, **{"content-length": str(1000 * PIECE)}), PIECE)
    assert body.taken == 0


async def test_a_compressed_body_counts_decoded() -> None:
    bomb = gzip.compress(b"\0" * 1024 * 1024)  # ~1 KB on the wire
    wire = response(Pieces(1, bomb), **{"content-encoding": "gzip"})
    with pytest.raises(ResponseTooLargeError):
        await read_body(wire, 100 * PIECE)


def sse(count: int) -> bytes:
    return b"".join(b'data: {"n": %d}\n\n' % i for i in range(count))


async def events(view: httpx.Response, max_events: int | None) -> list[ServerSentEvent]:
    return [e async for e in limited_events(EventSource(view).aiter_sse(), max_events)]


async def test_a_stream_within_its_limits_is_read_whole() -> None:
    original = response(Pieces(1, sse(50)), **{"content-type": "text/event-stream"})
    got = await events(limited_response(original, 10_000, "stream"), 50)
    assert [e.data for e in got] == [f'{{"n": {i}}}' for i in range(50)]


async def test_a_stream_past_its_bytes_stops_there() -> None:
    body = Pieces(1000, b": keep-alive padding " * 50 + b"\n")  # comments only: no event
    original = response(body, **{"content-type": "text/event-stream"})
    with pytest.raises(ResponseTooLargeError, match="stream over the limit of 10240 bytes"):
        await events(limited_response(original, 10 * PIECE, "stream"), None)
    assert body.taken <= 11


async def test_a_compressed_stream_counts_decoded() -> None:
    bomb = gzip.compress(b": padding\n" * 100_000)  # ~1 MB of comments, ~2 KB on the wire
    original = response(Pieces(1, bomb), **{"content-type": "text/event-stream",
                                            "content-encoding": "gzip"})
    with pytest.raises(ResponseTooLargeError, match="stream over the limit of 10240 bytes"):
        await events(limited_response(original, 10 * PIECE, "stream"), None)


async def test_a_stream_past_its_events_stops_there() -> None:
    original = response(Pieces(1, sse(50)), **{"content-type": "text/event-stream"})
    with pytest.raises(ResponseTooLargeError, match="stream over the limit of 10 events"):
        await events(original, 10)


def test_no_limit_adds_no_layer() -> None:
    original = response(Pieces(1), **{"content-type": "text/event-stream"})
    assert limited_response(original, None, "stream") is original
    source = EventSource(original).aiter_sse()
    assert limited_events(source, None) is source


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

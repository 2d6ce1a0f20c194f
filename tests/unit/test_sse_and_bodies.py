"""SSE decoding and request bodies (include_usage only where it belongs, Q10)."""

from __future__ import annotations

import json

import pytest
from httpx_sse import ServerSentEvent

from modelproxy import ServerError, StreamInterruptedError
from modelproxy.aio_transport import SSEDecoder
from modelproxy.data import chat_body, responses_body
from modelproxy.sse import chat_chunks, decode_chat_event, response_events


def sse(data: object, event: str = "message") -> ServerSentEvent:
    return ServerSentEvent(event=event, data=data if isinstance(data, str) else json.dumps(data))


async def feed(events):
    for event in events:
        yield event


CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "hi "}, "finish_reason": None}]}
USAGE = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


async def test_chat_stream_decodes_until_done():
    chunks = [c async for c in chat_chunks(feed([sse(CHUNK), sse(USAGE), sse("[DONE]")]))]
    assert [c.text for c in chunks] == ["hi ", ""]
    assert chunks[1].usage is not None
    assert chunks[1].usage.total_tokens == 5
    assert chunks[1].finish_reason is None


async def test_chat_stream_without_done_is_interrupted():
    with pytest.raises(StreamInterruptedError):
        _ = [c async for c in chat_chunks(feed([sse(CHUNK)]))]


async def test_in_band_error_raises_server_error():
    with pytest.raises(ServerError, match="overloaded"):
        _ = [c async for c in chat_chunks(feed([sse({"error": {"message": "overloaded"}})]))]


def test_done_marker_is_none():
    assert decode_chat_event(sse("[DONE]")) is None


async def test_responses_stream_ends_at_completed():
    events = [
        sse({"type": "response.created", "response": {"id": "r", "status": "in_progress"}}),
        sse({"type": "response.output_text.delta", "delta": "he"}),
        sse({"delta": "llo"}, event="response.output_text.delta"),
        sse({"type": "response.completed", "response": {
            "id": "r", "status": "completed",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "hello"}]}],
            "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}}}),
    ]
    decoded = [e async for e in response_events(feed(events))]
    assert "".join(e.text for e in decoded) == "hello"
    final = decoded[-1].response
    assert final is not None
    assert final.output_text == "hello"


async def test_responses_stream_cut_is_interrupted():
    with pytest.raises(StreamInterruptedError):
        _ = [e async for e in response_events(feed([sse({"type": "response.created"})]))]


def test_include_usage_only_for_streaming_chat():
    streamed = chat_body([{"role": "user", "content": "x"}], "m", stream=True, temperature=0)
    assert streamed["stream_options"] == {"include_usage": True}
    assert streamed["temperature"] == 0
    plain = chat_body([], "m", stream=False, stream_options={"include_usage": True})
    assert "stream_options" not in plain
    assert "stream_options" not in responses_body("hi", "m", stream=True)


SSE_TEXT = (
    ": a comment\r\n"
    "event: message\r\n"
    'data: {"a": "é"}\r\n'
    "\r\n"
    "data: one\n"
    "data: two\n"
    "id: 7\n"
    "\n"
    "retry: 50\r"
    "data: [DONE]\r"
    "\r"
)
SSE_EVENTS = [("message", '{"a": "é"}', ""), ("message", "one\ntwo", "7"),
              ("message", "[DONE]", "7")]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_sse_decoder_reads_events_however_the_body_is_split(size: int) -> None:
    body = SSE_TEXT.encode()
    decoder = SSEDecoder()
    events = [event for start in range(0, len(body), size)
              for event in decoder.feed(body[start:start + size])]
    assert [(e.event, e.data, e.id) for e in events] == SSE_EVENTS
    assert events[-1].retry == 50


def test_sse_decoder_holds_an_unfinished_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: half") == []
    assert decoder.feed(b"\n") == []
    assert [e.data for e in decoder.feed(b"\n")] == ["half"]

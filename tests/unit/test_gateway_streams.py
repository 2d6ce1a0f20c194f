"""The gateway's stream pieces, pure: which text of each attempt reaches the client, the chat
chunks around it, and the typed events of a streamed response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.responses_stream import ResponseEvents
from gateway.sse_relay import (
    DONE,
    ChatChunks,
    Pieces,
    StreamDiverged,
    StreamEnd,
    TextRelay,
    final_attempt_text,
)
from producer.jobs import StreamEvent


def feed(relay: TextRelay, spec: str) -> list[str]:
    """What is sent of each delta; `spec` has the attempts' deltas, "|" between deltas and
    "||" between attempts."""
    sent: list[str] = []
    for attempt, deltas in enumerate(spec.split("||")):
        if attempt:
            relay.restart()
        sent += [relay.add(delta) for delta in deltas.split("|")]
    return sent


@pytest.mark.parametrize(("spec", "sent"), [
    ("Hello| world", ["Hello", " world"]),
    ("He|llo||He|ll|o|!", ["He", "llo", "", "", "", "!"]),
    ("abc||a|bcd", ["abc", "", "d"]),
    ("ab||ab", ["ab", ""]),
    ("ab||a||abc", ["ab", "", "c"]),  # two retries
])
def test_only_new_text_of_a_retry_is_sent(spec: str, sent: list[str]) -> None:
    relay = TextRelay()
    assert feed(relay, spec) == sent
    assert relay.sent == "".join(sent)


@pytest.mark.parametrize("spec", ["Hello||Help", "ab||abd||abc", "abc||x"])
def test_a_retry_that_differs_from_what_was_sent_is_refused(spec: str) -> None:
    relay = TextRelay()
    with pytest.raises(StreamDiverged):
        feed(relay, spec)


def event(i: int, attempt: int, kind: str, text: str) -> StreamEvent:
    return StreamEvent(str(i), attempt, kind, text,  # type: ignore[arg-type]
                       {"finish_reason": "stop"} if kind == "done" else {"text": text})


async def batches(*items: tuple[int, str, str], size: int = 1,
                  ) -> AsyncIterator[list[StreamEvent]]:
    """The events of `items`, `size` in each batch."""
    listed = [event(i, *item) for i, item in enumerate(items)]
    for start in range(0, len(listed), size):
        yield listed[start:start + size]


RETRIED = ((1, "delta", "Hel"), (1, "delta", "lo"), (1, "error", ""), (2, "restart", ""),
           (2, "delta", "Hello"), (2, "delta", " you"), (2, "done", ""))
END = StreamEnd({"finish_reason": "stop"})


@pytest.mark.parametrize("size", [1, 2, 7])
async def test_final_attempt_text_skips_repeats_and_errors(size: int) -> None:
    got = [piece async for pieces in final_attempt_text(batches(*RETRIED, size=size),
                                                        TextRelay())
           for piece in pieces]
    assert got == ["Hel", "lo", " you", END]


@pytest.mark.parametrize(("size", "sent"), [
    (4, [["Hel", "lo"], [" you", END]]),
    (2, [["Hel", "lo"], [" you"], [END]]),  # [error, restart] sends nothing
])
async def test_the_pieces_of_a_batch_come_together(size: int, sent: list[Pieces]) -> None:
    assert [pieces async for pieces in final_attempt_text(batches(*RETRIED, size=size),
                                                          TextRelay())] == sent


async def test_a_job_that_ends_without_done_ends_the_text() -> None:
    stream = batches((1, "delta", "Hi"), (1, "error", ""))
    assert [pieces async for pieces in final_attempt_text(stream, TextRelay())] == [["Hi"]]


def frames(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines()
            if line.startswith("data: {")]


@pytest.mark.parametrize("include_usage", [True, False])
def test_chat_chunks_end_with_usage_when_asked_and_done(include_usage: bool) -> None:
    chunks = ChatChunks("chatcmpl-1", 7, "m", include_usage)
    done = {"finish_reason": "stop", "usage": {"total_tokens": 3}}
    raw = chunks.start() + chunks.text("Hi") + chunks.end(done, {}, "Hi")
    assert raw.endswith(DONE)
    sent = frames(raw)
    assert [c["choices"][0]["delta"] for c in sent[:3]] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}, {}]
    assert sent[2]["choices"][0]["finish_reason"] == "stop"
    if include_usage:
        assert sent[-1]["choices"] == []
        assert sent[-1]["usage"] == {"total_tokens": 3}
        assert all(c["usage"] is None for c in sent[:-1])
    else:
        assert len(sent) == 3
        assert all("usage" not in c for c in sent)


def test_response_events_are_numbered_and_end_as_the_response_did() -> None:
    stream = ResponseEvents("job1", "m", 5)
    final = {"id": "resp_upstream", "object": "response", "status": "incomplete",
             "output": [{"type": "message", "id": "msg_upstream", "content": []}]}
    raw = stream.start() + stream.text("Hi") + stream.end({}, final, "Hi")
    sent = frames(raw)
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    assert [e["type"] for e in sent] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.incomplete"]
    assert sent[-1]["response"]["id"] == sent[0]["response"]["id"] == "resp_job1"
    assert sent[-1]["response"]["output"][0]["id"] == sent[2]["item"]["id"] == "msg_job1"
    assert b"[DONE]" not in raw


def test_a_failed_response_stream_ends_with_response_failed() -> None:
    stream = ResponseEvents("job1", "m", 5)
    sent = frames(stream.start() + stream.error({"code": "x", "message": "boom"}))
    assert sent[-1]["type"] == "response.failed"
    assert sent[-1]["response"]["error"] == {"code": "x", "message": "boom"}


@pytest.mark.parametrize("text", ["Hi", "", 'quote " and \\ and \n', "ünï 🙂", "\x00\x01"])
@pytest.mark.parametrize("include_usage", [True, False])
def test_a_text_chunk_is_the_chunk_of_its_dict(text: str, include_usage: bool) -> None:
    chunks = ChatChunks("chatcmpl-\x00", 7, "m\x00", include_usage)
    assert chunks.text(text) == chunks._chunk([  # the frame built from its dict
        {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])


@pytest.mark.parametrize("text", ["Hi", 'quote " and \n', "\x00\x01"])
def test_a_delta_event_is_the_event_of_its_dict(text: str) -> None:
    stream, by_dict = ResponseEvents("job1", "m", 5), ResponseEvents("job1", "m", 5)
    for _ in range(3):
        assert stream.text(text) == by_dict._event(  # the frame built from its dict
            "response.output_text.delta", delta=text, logprobs=[], item_id="msg_job1",
            output_index=0, content_index=0)

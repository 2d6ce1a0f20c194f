"""Pure decoding of server-sent events into typed chunks (fed `httpx_sse.ServerSentEvent`s).

A chat stream ends with `data: [DONE]`; a Responses stream ends with `response.completed`.
A stream that stops before its end marker is an interrupted stream, never a silent success.
`limited_events` caps how many events one stream may send.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from httpx_sse import ServerSentEvent

from modelproxy.errors import ResponseTooLargeError, ServerError, StreamInterruptedError
from modelproxy.inference import ChatCompletionChunk, ResponseStreamEvent

DONE = "[DONE]"
RESPONSE_END_EVENTS = frozenset({"response.completed", "response.incomplete"})
RESPONSE_ERROR_EVENTS = frozenset({"error", "response.failed"})
ERROR_KEY = '"error"'  # in the text of every in-band error object


@dataclass(frozen=True)
class StreamError:
    """An error object sent inside the stream (some gateways do this instead of a status)."""

    message: str


def decode_chat_event(event: ServerSentEvent) -> ChatCompletionChunk | StreamError | None:
    """One SSE event of a chat stream: a chunk, an in-band error, or None for [DONE]."""
    data = event.data
    if data.strip() == DONE:
        return None
    if ERROR_KEY in data:  # a rare key: only then the slower look at the decoded object
        payload = json.loads(data)
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            return StreamError(str(payload["error"].get("message", "stream error")))
    # Straight from the JSON text: half the CPU of json.loads + model_validate per chunk.
    return ChatCompletionChunk.model_validate_json(data)


def decode_response_event(event: ServerSentEvent) -> ResponseStreamEvent:
    payload = json.loads(event.data)
    if "type" not in payload and event.event and event.event != "message":
        payload["type"] = event.event
    return ResponseStreamEvent.model_validate(payload)


def limited_events(
    events: AsyncIterator[ServerSentEvent], max_events: int | None
) -> AsyncIterator[ServerSentEvent]:
    """The events, until one past `max_events` raises `ResponseTooLargeError` (None: no cap).
    Every event counts, with text or not: each costs a decode and, in a queue, a write."""
    return events if max_events is None else _counted(events, max_events)


async def _counted(
    events: AsyncIterator[ServerSentEvent], max_events: int
) -> AsyncIterator[ServerSentEvent]:
    count = 0
    async for event in events:
        count += 1
        if count > max_events:
            raise ResponseTooLargeError(f"stream over the limit of {max_events} events")
        yield event


async def chat_chunks(events: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ChatCompletionChunk]:
    async for event in events:
        if not event.data:
            continue
        decoded = decode_chat_event(event)
        if decoded is None:
            return
        if isinstance(decoded, StreamError):
            raise ServerError(decoded.message, status_code=500)
        yield decoded
    raise StreamInterruptedError("chat stream ended before [DONE]")


async def response_events(
    events: AsyncIterator[ServerSentEvent],
) -> AsyncIterator[ResponseStreamEvent]:
    async for event in events:
        if not event.data or event.data.strip() == DONE:
            continue
        decoded = decode_response_event(event)
        if decoded.type in RESPONSE_ERROR_EVENTS:
            message = str((decoded.model_extra or {}).get("message", "response failed"))
            raise ServerError(message, status_code=500)
        yield decoded
        if decoded.type in RESPONSE_END_EVENTS:
            return
    raise StreamInterruptedError("responses stream ended before response.completed")

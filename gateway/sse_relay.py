"""A job's chunk stream as Server-Sent Events: only the final attempt's text, each character
once, and chat completions in OpenAI's `chat.completion.chunk` format.

A stream may restart: an attempt cut mid-stream is retried, and the new attempt streams again
from its first token. The client must not get the old attempt's text twice, nor a mix of
two texts. `TextRelay` keeps the text already sent; the new attempt's text is held back
while it is a prefix of what was sent, and only what goes past it is sent. A new attempt
whose text differs from what was sent cannot be mended: the stream ends with an error
(`StreamDiverged`), never with text the client would take for a whole reply. A model that
answers a prompt the same way each time (temperature 0, or a deterministic upstream) makes a
retry invisible to the client.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from producer.jobs import StreamEvent

DONE = b"data: [DONE]\n\n"
DIVERGED_CODE = "stream_restarted_differently"


class StreamDiverged(Exception):
    def __init__(self) -> None:
        super().__init__("the reply was retried after part of it was sent, and the retry "
                         "differs from what was sent; call again")


@dataclass
class TextRelay:
    """What to send of each attempt's text; see the module docstring."""

    sent: str = ""
    _attempt_chars: int = 0  # the current attempt's text so far, in characters

    def restart(self) -> None:
        """A new attempt begins: its text starts from nothing."""
        self._attempt_chars = 0

    def add(self, text: str) -> str:
        """The part of the current attempt's new `text` to send ("" while it repeats what was
        sent); `StreamDiverged` when it contradicts what was sent."""
        start = self._attempt_chars
        self._attempt_chars += len(text)
        overlap = self.sent[start:start + len(text)]
        if not text.startswith(overlap):
            raise StreamDiverged
        new = text[len(overlap):]
        self.sent += new
        return new


@dataclass(frozen=True)
class StreamEnd:
    """The final attempt's `done`: its finish reason and usage."""

    data: dict[str, Any]


Pieces = list[str | StreamEnd]  # new text (never empty), maybe ending with the `StreamEnd`


async def final_attempt_text(batches: AsyncIterator[list[StreamEvent]],
                             relay: TextRelay) -> AsyncGenerator[Pieces, None]:
    """The pieces of each batch of events that has any, the last one ending with
    `StreamEnd` when the job succeeded; no `StreamEnd` when it ended otherwise (failed,
    cancelled). A batch is what arrived together: its text goes out in one write."""
    async for events in batches:
        pieces: Pieces = []
        for event in events:
            if event.kind == "restart":
                relay.restart()
            elif event.kind == "delta":
                new = relay.add(event.text)
                if new:
                    pieces.append(new)
            elif event.kind == "done":
                pieces.append(StreamEnd(event.data))
                yield pieces
                return
            # `error`: that attempt failed; a retry's `restart` or the job's end follows.
        if pieces:
            yield pieces


json_text = json.JSONEncoder(ensure_ascii=False).encode  # a str as a JSON string


def sse(data: Any, event: str | None = None) -> bytes:
    line = f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"
    return (f"event: {event}\n{line}" if event else line).encode()


def sse_error(error: dict[str, Any]) -> bytes:
    """An error after the stream began: the official clients raise it instead of taking a
    cut reply for a whole one, as they would on a bare close."""
    return sse({"error": error})


class Frames(Protocol):
    """The wire format of one stream (chat chunks, typed Responses events), as SSE bytes."""

    def start(self) -> bytes: ...

    def text(self, text: str) -> bytes: ...

    def end(self, done: dict[str, Any], result: dict[str, Any], text: str) -> bytes:
        """After the job succeeded: `done` is its stream's last entry, `result` its answer,
        `text` all that was sent."""

    def error(self, error: dict[str, Any]) -> bytes:
        """After a failure: OpenAI's error object; the stream ends there."""


@dataclass(frozen=True)
class ChatChunks:
    """The chunks of one streamed chat completion (`Frames`)."""

    id: str
    created: int
    model: str
    include_usage: bool

    @functools.cached_property
    def _text_frame(self) -> tuple[bytes, bytes]:
        """A text chunk's bytes before and after its text: the frame sent per token is put
        together around the text, not encoded from a dict each time."""
        marker = json_text("\x00").encode()  # content is the last key that varies
        before, _, after = self._chunk([{"index": 0, "delta": {"content": "\x00"},
                                         "logprobs": None, "finish_reason": None}]
                                       ).rpartition(marker)
        return before, after

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk",
                                 "created": self.created, "model": self.model,
                                 "choices": choices, **extra}
        if self.include_usage:
            chunk.setdefault("usage", None)
        return sse(chunk)

    def start(self) -> bytes:
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}])

    def text(self, text: str) -> bytes:
        before, after = self._text_frame
        return before + json_text(text).encode() + after

    def end(self, done: dict[str, Any], result: dict[str, Any], text: str) -> bytes:
        """The last chunk, the usage chunk when asked for (`choices: []`), `[DONE]`."""
        last = self._chunk([{"index": 0, "delta": {}, "logprobs": None,
                             "finish_reason": done.get("finish_reason") or "stop"}])
        if self.include_usage:
            last += self._chunk([], usage=done.get("usage") or result.get("usage"))
        return last + DONE

    def error(self, error: dict[str, Any]) -> bytes:
        return sse_error(error)

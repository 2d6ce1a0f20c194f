"""The data plane's answers: the bodies and SSE frames of chat completions and the Responses
API, and the embeddings body, built with the emulator's own models (`openai_models`), and what
differs between the two generating APIs (`Api`).

A stream sends one frame per token. Token frames reuse one validated chunk whose text alone
changes, so a long reply costs a `json.dumps` per token, not a model per token.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from emulator.embeddings import to_base64
from emulator.openai_models import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    ChunkDelta,
    CompletionUsage,
    ContentPartEvent,
    EmbeddingList,
    EmbeddingObject,
    EmbeddingUsage,
    EncodingFormat,
    FinishReason,
    IncompleteDetails,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    OutputTextDeltaEvent,
    OutputTextDoneEvent,
    ResponseLifecycleEvent,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
)
from emulator.openai_requests import InferenceRequest, parse_chat, parse_responses

FrameKind = Literal["meta", "token", "final"]
DONE_FRAME = b"data: [DONE]\n\n"
_START_EVENTS: tuple[Literal["response.created", "response.in_progress"], ...] = (
    "response.created",
    "response.in_progress",
)
_END_EVENTS: dict[ResponseStatus, Literal["response.completed", "response.incomplete"]] = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
}


@dataclass(frozen=True)
class Reply:
    """Everything a body or stream needs; `pieces` are one token each."""

    id: str
    created: int
    model: str
    pieces: list[str]
    finish_reason: FinishReason
    prompt_tokens: int
    include_usage: bool

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    @property
    def final_status(self) -> ResponseStatus:
        """A response cut by max_output_tokens is `incomplete`, as OpenAI answers it."""
        return "incomplete" if self.finish_reason == "length" else "completed"


class Frame(NamedTuple):
    data: bytes
    kind: FrameKind  # "token" frames are paced; a cut always lands before the "final" one


def new_reply(
    prefix: str,
    model: str,
    *,
    pieces: list[str],
    finish_reason: FinishReason,
    prompt_tokens: int,
    include_usage: bool,
) -> Reply:
    reply_id = f"{prefix}{secrets.token_hex(12)}"
    return Reply(
        reply_id, int(time.time()), model, pieces, finish_reason, prompt_tokens, include_usage
    )


# json.dumps, not pydantic's JSON: it escapes lone surrogates ("\ud800"), which a model name
# taken from a request may hold and UTF-8 cannot.
def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def json_bytes(value: Any) -> bytes:
    return _dumps(value).encode()


def sse_data(value: Any) -> bytes:
    return f"data: {_dumps(value)}\n\n".encode()


def sse_event(event: str, value: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {_dumps(value)}\n\n".encode()


# -- chat completions ------------------------------------------------------------------------


def chat_usage(reply: Reply) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        total_tokens=reply.prompt_tokens + reply.completion_tokens,
    )


def chat_completion(reply: Reply) -> dict[str, Any]:
    choice = ChatChoice(
        index=0,
        message=AssistantMessage(content=reply.text),
        finish_reason=reply.finish_reason,
    )
    return ChatCompletion(
        id=reply.id,
        created=reply.created,
        model=reply.model,
        choices=[choice],
        usage=chat_usage(reply),
    ).model_dump()


def chat_frames(reply: Reply) -> Iterator[Frame]:
    """Role chunk, one chunk per token, the finish chunk, the usage chunk if asked, [DONE]."""
    # Without include_usage no chunk has the key; with it, every one (null until the last).
    without = None if reply.include_usage else {"usage"}

    def chunk(delta: ChunkDelta, finish: FinishReason | None = None) -> dict[str, Any]:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish)
        return ChatCompletionChunk(
            id=reply.id, created=reply.created, model=reply.model, choices=[choice]
        ).model_dump(exclude=without)

    yield Frame(sse_data(chunk(ChunkDelta(role="assistant", content=""))), "meta")
    token = chunk(ChunkDelta(content=""))
    delta = token["choices"][0]["delta"]
    for piece in reply.pieces:
        delta["content"] = piece
        yield Frame(sse_data(token), "token")
    yield Frame(sse_data(chunk(ChunkDelta(), reply.finish_reason)), "meta")
    if reply.include_usage:
        last = ChatCompletionChunk(
            id=reply.id, created=reply.created, model=reply.model, usage=chat_usage(reply),
            choices=[],
        )
        yield Frame(sse_data(last.model_dump()), "meta")
    yield Frame(DONE_FRAME, "final")


# -- responses -------------------------------------------------------------------------------


def _message(reply: Reply, status: ResponseStatus) -> OutputMessage:
    content = [] if status == "in_progress" else [OutputText(text=reply.text)]
    return OutputMessage(id=f"msg_{reply.id[5:]}", status=status, content=content)


def _response(reply: Reply, status: ResponseStatus) -> ResponseObject:
    """The response in `status`: output and usage only once finished."""
    if status == "in_progress":
        return ResponseObject(
            id=reply.id, created_at=reply.created, status=status, model=reply.model,
            output=[], usage=None,
        )
    usage = ResponseUsage(
        input_tokens=reply.prompt_tokens,
        output_tokens=reply.completion_tokens,
        total_tokens=reply.prompt_tokens + reply.completion_tokens,
    )
    cut = IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
    return ResponseObject(
        id=reply.id, created_at=reply.created, status=status, incomplete_details=cut,
        model=reply.model, output=[_message(reply, status)], usage=usage,
    )


def response_object(reply: Reply) -> dict[str, Any]:
    """The finished response (the non-streamed answer)."""
    return _response(reply, reply.final_status).model_dump()


def _sse(event: Any) -> bytes:
    data: dict[str, Any] = event.model_dump()
    return sse_event(data["type"], data)


def response_frames(reply: Reply) -> Iterator[Frame]:
    """The typed events of a streamed response, each with its `sequence_number`; the last is
    `response.completed`, or `response.incomplete` when max_output_tokens cut it."""
    sequence = itertools.count()
    started = _response(reply, "in_progress")
    item = _message(reply, "in_progress")
    where: dict[str, Any] = {"item_id": item.id, "output_index": 0, "content_index": 0}
    for kind in _START_EVENTS:
        event = ResponseLifecycleEvent(type=kind, sequence_number=next(sequence), response=started)
        yield Frame(_sse(event), "meta")
    added = OutputItemEvent(
        type="response.output_item.added", sequence_number=next(sequence), output_index=0,
        item=item,
    )
    yield Frame(_sse(added), "meta")
    part = ContentPartEvent(
        type="response.content_part.added", sequence_number=next(sequence),
        part=OutputText(text=""), **where,
    )
    yield Frame(_sse(part), "meta")
    token = OutputTextDeltaEvent(sequence_number=0, delta="", **where).model_dump()
    for piece in reply.pieces:
        token["sequence_number"] = next(sequence)
        token["delta"] = piece
        yield Frame(sse_event(token["type"], token), "token")
    yield from _response_tail(reply, sequence, where)


def _response_tail(
    reply: Reply, sequence: Iterator[int], where: dict[str, Any]
) -> Iterator[Frame]:
    status = reply.final_status
    finished = _response(reply, status)
    message = finished.output[0]
    text = OutputTextDoneEvent(sequence_number=next(sequence), text=reply.text, **where)
    yield Frame(_sse(text), "meta")
    part = ContentPartEvent(
        type="response.content_part.done", sequence_number=next(sequence),
        part=message.content[0], **where,
    )
    yield Frame(_sse(part), "meta")
    done = OutputItemEvent(
        type="response.output_item.done", sequence_number=next(sequence), output_index=0,
        item=message,
    )
    yield Frame(_sse(done), "meta")
    end = ResponseLifecycleEvent(
        type=_END_EVENTS[status], sequence_number=next(sequence), response=finished
    )
    yield Frame(_sse(end), "final")


# -- embeddings ------------------------------------------------------------------------------


def embedding_list(
    model: str, vectors: list[list[float]], encoding: EncodingFormat | None, prompt_tokens: int
) -> dict[str, Any]:
    """The embeddings answer: one vector per input, floats or (base64) their float32 bytes."""
    encode = to_base64 if encoding == "base64" else list
    data = [
        EmbeddingObject(index=index, embedding=encode(vector))
        for index, vector in enumerate(vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)
    return EmbeddingList(data=data, model=model, usage=usage).model_dump()


@dataclass(frozen=True)
class Api:
    """What differs between chat completions and responses."""

    id_prefix: str
    parse: Callable[[dict[str, Any]], InferenceRequest]
    body: Callable[[Reply], dict[str, Any]]
    frames: Callable[[Reply], Iterator[Frame]]


CHAT_API = Api("chatcmpl-", parse_chat, chat_completion, chat_frames)
RESPONSES_API = Api("resp_", parse_responses, response_object, response_frames)

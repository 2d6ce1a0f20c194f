"""Typed OpenAI-compatible inference payloads (chat completions, the Responses API and
embeddings).

Field names are the wire's own (snake_case); unknown fields are kept. A whole answer also
carries the upstream's `request_id` (from the answer's headers, never dumped with its fields).
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Answer(_Open):
    """A whole answer: its fields, and the id the upstream gave its request."""

    _request_id: str | None = PrivateAttr(default=None)

    @property
    def request_id(self) -> str | None:
        """The upstream's id of the request (`modelproxy.errors.request_id_of`), if it sent one."""
        return self._request_id

    def with_request_id(self, request_id: str | None) -> Self:
        self._request_id = request_id
        return self


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatMessage(_Open):
    role: str = "assistant"
    content: str | None = None


class ChatChoice(_Open):
    index: int = 0
    message: ChatMessage = Field(default_factory=ChatMessage)
    finish_reason: str | None = None


class ChatCompletion(_Answer):
    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[ChatChoice] = Field(default_factory=list)
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return "".join(choice.message.content or "" for choice in self.choices[:1])

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None


class ChunkDelta(_Open):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(_Open):
    index: int = 0
    delta: ChunkDelta = Field(default_factory=ChunkDelta)
    finish_reason: str | None = None


class ChatCompletionChunk(_Open):
    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    # Empty in the final usage chunk: consumers must not index choices[0] blindly.
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return "".join(choice.delta.content or "" for choice in self.choices if choice.index == 0)

    @property
    def finish_reason(self) -> str | None:
        return next((c.finish_reason for c in self.choices if c.finish_reason), None)


class ResponseUsage(_Open):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class ResponseObject(_Answer):
    id: str = ""
    object: str = "response"
    status: str | None = None
    model: str = ""
    output: list[dict[str, Any]] = Field(default_factory=list)
    usage: ResponseUsage | None = None

    @property
    def output_text(self) -> str:
        """The concatenated `output_text` parts of the assistant messages."""
        parts: list[str] = []
        for item in self.output:
            if item.get("type") != "message":
                continue
            for content in item.get("content") or []:
                if content.get("type") == "output_text":
                    parts.append(str(content.get("text", "")))
        return "".join(parts)


class ResponseStreamEvent(_Open):
    type: str
    sequence_number: int | None = None
    delta: str | None = None
    response: ResponseObject | None = None

    @property
    def text(self) -> str:
        return self.delta or "" if self.type == "response.output_text.delta" else ""


class EmbeddingUsage(_Open):
    prompt_tokens: int = 0
    total_tokens: int = 0


class Embedding(_Open):
    object: str = "embedding"
    index: int = 0
    # A string when the request asked for encoding_format "base64".
    embedding: list[float] | str = Field(default_factory=list)

    @property
    def vector(self) -> list[float]:
        """The floats, decoded from base64 (little-endian float32, as OpenAI sends) if need be."""
        if isinstance(self.embedding, list):
            return self.embedding
        raw = base64.b64decode(self.embedding, validate=True)
        if len(raw) % 4:
            raise ValueError(f"a base64 embedding of {len(raw)} bytes is not float32 values")
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))


class EmbeddingResponse(_Answer):
    object: str = "list"
    data: list[Embedding] = Field(default_factory=list)
    model: str = ""
    usage: EmbeddingUsage | None = None

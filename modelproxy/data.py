"""Data plane: OpenAI-compatible inference (chat, responses, embeddings) through one proxy.

Every real request is authenticated at send time: AGENTRUN4 signature with AK/SK, else the
inbound API key, else nothing (Q8, Q9). `include_usage` is set only for streaming chat (Q10).
`ResponseLimits` caps what one answer may bring: bodies are read in pieces and counted, so
an answer past a cap fails with `ResponseTooLargeError` holding no more than the cap.
Every answer tells the upstream's request id: a whole one as its `request_id`, a stream as
its `AnswerStream.request_id`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import aiohttp
from httpx_sse import ServerSentEvent

from modelproxy.aio_transport import DataAuth, open_post, read_limited, sse_events
from modelproxy.auth import AgentrunRamAuth, ApiKeyAuth
from modelproxy.config import Config
from modelproxy.errors import request_id_of
from modelproxy.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    EmbeddingResponse,
    ResponseObject,
    ResponseStreamEvent,
)
from modelproxy.sse import chat_chunks, limited_events, response_events

ItemT = TypeVar("ItemT")
AnswerT = TypeVar("AnswerT", ChatCompletion, ResponseObject, EmbeddingResponse)


def chat_body(
    messages: list[dict[str, Any]], model: str, *, stream: bool, **kwargs: Any
) -> dict[str, Any]:
    """The chat-completions request body; usage is requested only on streams."""
    body: dict[str, Any] = {**kwargs, "model": model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {**(kwargs.get("stream_options") or {}), "include_usage": True}
    else:
        body.pop("stream_options", None)
    return body


def responses_body(
    input_: str | list[dict[str, Any]], model: str, *, stream: bool, **kwargs: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {**kwargs, "model": model, "input": input_, "stream": stream}
    body.pop("stream_options", None)
    return body


# A text, texts, one token array, or token arrays (OpenAI's four forms of `input`).
EmbeddingInput = str | list[str] | list[int] | list[list[int]]


def embeddings_body(input_: EmbeddingInput, model: str, **kwargs: Any) -> dict[str, Any]:
    """The embeddings request body. Options such as `dimensions`, `encoding_format` ("float"
    or "base64") and `user` pass through; one given as None is left out, as not given."""
    options = {key: value for key, value in kwargs.items() if value is not None}
    return {**options, "model": model, "input": input_}


def data_auth(config: Config) -> DataAuth | None:
    if config.has_credentials():
        return AgentrunRamAuth(
            config.get_access_key_id(),
            config.get_access_key_secret(),
            config.get_region_id(),
            config.get_security_token(),
        )
    if config.api_key:
        return ApiKeyAuth(config.api_key, config.get_api_key_header())
    return None


@dataclass(frozen=True)
class ResponseLimits:
    """Caps on one answer (None: none). Bytes are counted decoded, as they would be held."""

    max_body_bytes: int | None = None  # a non-streamed answer's body
    max_stream_bytes: int | None = None  # a stream's body, all its events together
    max_stream_events: int | None = None  # a stream's SSE events


NO_LIMITS = ResponseLimits()


class AnswerStream(AsyncIterator[ItemT], Generic[ItemT]):
    """A streamed answer: its items, and the upstream's `request_id` once the answer has
    begun (None before the first item, or when the server sent none). `async for` runs the
    items' own generator (`__aiter__` hands it out): nothing is added per item."""

    def __init__(
        self, items: Callable[[AnswerStream[ItemT]], AsyncGenerator[ItemT, None]]
    ) -> None:
        self.request_id: str | None = None
        self._items = items(self)

    def __aiter__(self) -> AsyncIterator[ItemT]:
        return self._items

    async def __anext__(self) -> ItemT:
        return await anext(self._items)

    async def aclose(self) -> None:
        await self._items.aclose()


class DataAPI:
    """Inference calls for one proxy and one resolved `Config`."""

    def __init__(
        self, proxy_name: str, config: Config, limits: ResponseLimits = NO_LIMITS
    ) -> None:
        self.proxy_name = proxy_name
        self._config = config
        self._limits = limits
        self._base_url: str | None = None
        self._auth: DataAuth | None = None
        self._auth_resolved = False

    def base_url(self) -> str:
        """Resolved on first use (the endpoint may come from the environment), then kept:
        a worker reuses one `DataAPI` per proxy for every job."""
        if self._base_url is None:
            name = quote(self.proxy_name, safe="")
            self._base_url = f"{self._config.get_data_endpoint()}/models/{name}/v1"
        return self._base_url

    def auth(self) -> DataAuth | None:
        """`data_auth` of the config, resolved on first use like `base_url`."""
        if not self._auth_resolved:
            self._auth, self._auth_resolved = data_auth(self._config), True
        return self._auth

    async def chat(self, body: dict[str, Any]) -> ChatCompletion:
        return await self._post("/chat/completions", body, ChatCompletion)

    def chat_stream(self, body: dict[str, Any]) -> AnswerStream[ChatCompletionChunk]:
        return AnswerStream(partial(self._chat_chunks, body))

    async def responses(self, body: dict[str, Any]) -> ResponseObject:
        return await self._post("/responses", body, ResponseObject)

    def responses_stream(self, body: dict[str, Any]) -> AnswerStream[ResponseStreamEvent]:
        return AnswerStream(partial(self._response_events, body))

    async def embeddings(self, body: dict[str, Any]) -> EmbeddingResponse:
        return await self._post("/embeddings", body, EmbeddingResponse)

    async def _chat_chunks(
        self, body: dict[str, Any], stream: AnswerStream[ChatCompletionChunk]
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        async with self._stream("/chat/completions", body) as response:
            stream.request_id = request_id_of(response.headers)
            async for chunk in chat_chunks(self._events(response)):
                yield chunk

    async def _response_events(
        self, body: dict[str, Any], stream: AnswerStream[ResponseStreamEvent]
    ) -> AsyncGenerator[ResponseStreamEvent, None]:
        async with self._stream("/responses", body) as response:
            stream.request_id = request_id_of(response.headers)
            async for event in response_events(self._events(response)):
                yield event

    async def _post(self, path: str, body: dict[str, Any], answer: type[AnswerT]) -> AnswerT:
        """The JSON answer as `answer`, with the request id its headers gave."""
        async with open_post(self._config, self.base_url() + path, body,
                             self._config.get_headers(), self.auth()) as response:
            content = await read_limited(response, self._limits.max_body_bytes)
        # Parsed and validated in one pass by pydantic-core (bad JSON: a ValidationError).
        return answer.model_validate_json(content).with_request_id(
            request_id_of(response.headers))

    def _stream(self, path: str, body: dict[str, Any],
                ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        headers = {**self._config.get_headers(), "accept": "text/event-stream"}
        return open_post(self._config, self.base_url() + path, body, headers, self.auth())

    def _events(self, response: aiohttp.ClientResponse) -> AsyncIterator[ServerSentEvent]:
        limits = self._limits
        return limited_events(sse_events(response, limits.max_stream_bytes),
                              limits.max_stream_events)

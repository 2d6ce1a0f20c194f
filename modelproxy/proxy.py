"""The `ModelProxy` resource: the seed page's high-level API, async first with sync twins.

Each returned object keeps the `Config` it was fetched with, so its later calls (refresh,
wait, inference) go to the same account and region (spec Q2). Sync methods are thin shells
that run the async method on the portal loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal, Self, overload

from pydantic import PrivateAttr

from modelproxy.config import Config
from modelproxy.control import ControlAPI
from modelproxy.data import DataAPI, EmbeddingInput, chat_body, embeddings_body, responses_body
from modelproxy.errors import ConfigError, WaitTimeoutError
from modelproxy.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    EmbeddingResponse,
    ResponseObject,
    ResponseStreamEvent,
)
from modelproxy.models import (
    BaseInfo,
    ModelProxyCreateInput,
    ModelProxyListInput,
    ModelProxyPage,
    ModelProxyProps,
    ModelProxyUpdateInput,
    ProxyMode,
    Status,
    model_name_for,
)
from modelproxy.portal import iterate_sync, run_sync

LIST_PAGE_SIZE = 50
WAIT_BACKOFF = 1.5
WAIT_MAX_INTERVAL_S = 30.0

Messages = list[dict[str, Any]]


class ModelProxy(ModelProxyProps):
    """A ModelProxy, with its control-plane and data-plane operations."""

    _config: Config = PrivateAttr(default_factory=Config)

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def _bound(cls, data: dict[str, Any], config: Config) -> ModelProxy:
        proxy = cls.model_validate(data)
        proxy._config = config
        return proxy

    def set_config(self, config: Config) -> Self:
        self._config = config
        return self

    def _merged(self, config: Config | None) -> Config:
        return Config.with_configs(self._config, config)

    def _name(self) -> str:
        if not self.model_proxy_name:
            raise ConfigError("this ModelProxy has no model_proxy_name")
        return self.model_proxy_name

    def _replace_with(self, other: ModelProxy) -> Self:
        """Overwrite every field, extras included (the SDK lost extras on refresh, Q16)."""
        for name in type(self).model_fields:
            setattr(self, name, getattr(other, name))
        if self.__pydantic_extra__ is not None:
            self.__pydantic_extra__.clear()
            self.__pydantic_extra__.update(other.__pydantic_extra__ or {})
        return self

    # ---- class methods --------------------------------------------------------------------

    @classmethod
    async def create_async(
        cls, input: ModelProxyCreateInput, config: Config | None = None
    ) -> ModelProxy:
        """Create a proxy; returns its first snapshot (normally CREATING)."""
        resolved = Config.with_configs(config)
        data = await ControlAPI(resolved).create(input.to_wire())
        return cls._bound(data, resolved)

    @classmethod
    def create(cls, input: ModelProxyCreateInput, config: Config | None = None) -> ModelProxy:
        return run_sync(cls.create_async(input, config))

    @classmethod
    async def get_by_name_async(
        cls, model_proxy_name: str, config: Config | None = None
    ) -> ModelProxy:
        resolved = Config.with_configs(config)
        return cls._bound(await ControlAPI(resolved).get(model_proxy_name), resolved)

    @classmethod
    def get_by_name(cls, model_proxy_name: str, config: Config | None = None) -> ModelProxy:
        return run_sync(cls.get_by_name_async(model_proxy_name, config))

    @classmethod
    async def update_by_name_async(
        cls, model_proxy_name: str, input: ModelProxyUpdateInput, config: Config | None = None
    ) -> ModelProxy:
        """Send only the wire-updatable fields that are set (spec Q5)."""
        resolved = Config.with_configs(config)
        body = ModelProxyUpdateInput.model_validate(input.model_dump()).to_wire()
        return cls._bound(await ControlAPI(resolved).update(model_proxy_name, body), resolved)

    @classmethod
    def update_by_name(
        cls, model_proxy_name: str, input: ModelProxyUpdateInput, config: Config | None = None
    ) -> ModelProxy:
        return run_sync(cls.update_by_name_async(model_proxy_name, input, config))

    @classmethod
    async def delete_by_name_async(
        cls,
        model_proxy_name: str | None = None,
        config: Config | None = None,
        *,
        model_Proxy_name: str | None = None,  # noqa: N803 - the seed page's spelling
    ) -> ModelProxy:
        """Delete by name; returns the server's snapshot (normally DELETING)."""
        name = model_proxy_name or model_Proxy_name
        if not name:
            raise ConfigError("delete_by_name needs the proxy name")
        resolved = Config.with_configs(config)
        return cls._bound(await ControlAPI(resolved).delete(name), resolved)

    @classmethod
    def delete_by_name(
        cls,
        model_proxy_name: str | None = None,
        config: Config | None = None,
        *,
        model_Proxy_name: str | None = None,  # noqa: N803 - the seed page's spelling
    ) -> ModelProxy:
        return run_sync(
            cls.delete_by_name_async(model_proxy_name, config, model_Proxy_name=model_Proxy_name)
        )

    @classmethod
    async def list_page_async(
        cls, input: ModelProxyListInput | None = None, config: Config | None = None
    ) -> tuple[list[ModelProxy], int | None]:
        """One page: its proxies and the server's `total`."""
        resolved = Config.with_configs(config)
        query = (input or ModelProxyListInput()).to_wire()
        page = ModelProxyPage.model_validate(await ControlAPI(resolved).list_page(query))
        proxies = [cls._bound(item.to_wire(), resolved) for item in page.items]
        return proxies, page.total

    @classmethod
    async def list_all_async(
        cls,
        *,
        proxy_mode: ProxyMode | str | None = None,
        status: Status | str | None = None,
        workspace_id: str | None = None,
        config: Config | None = None,
    ) -> list[ModelProxy]:
        """Every proxy across pages, until `total` is reached or a page is empty (Q12)."""
        filters = ModelProxyListInput(
            proxy_mode=proxy_mode, status=status, workspace_id=workspace_id
        )
        found: dict[str, ModelProxy] = {}
        page_number, seen = 1, 0
        while True:
            page_input = filters.model_copy(
                update={"page_number": page_number, "page_size": LIST_PAGE_SIZE}
            )
            items, total = await cls.list_page_async(page_input, config)
            seen += len(items)
            for item in items:
                found.setdefault(item.model_proxy_id or f"name:{item.model_proxy_name}", item)
            if not items or (total is not None and seen >= total):
                return list(found.values())
            if total is None and len(items) < LIST_PAGE_SIZE:
                return list(found.values())
            page_number += 1

    @classmethod
    def list_all(
        cls,
        *,
        proxy_mode: ProxyMode | str | None = None,
        status: Status | str | None = None,
        workspace_id: str | None = None,
        config: Config | None = None,
    ) -> list[ModelProxy]:
        return run_sync(
            cls.list_all_async(
                proxy_mode=proxy_mode, status=status, workspace_id=workspace_id, config=config
            )
        )

    # ---- instance methods -----------------------------------------------------------------

    async def update_async(
        self, input: ModelProxyUpdateInput, config: Config | None = None
    ) -> Self:
        updated = await self.update_by_name_async(self._name(), input, self._merged(config))
        return self._replace_with(updated)

    def update(self, input: ModelProxyUpdateInput, config: Config | None = None) -> Self:
        return run_sync(self.update_async(input, config))

    async def get_async(self, config: Config | None = None) -> Self:
        return self._replace_with(await self.get_by_name_async(self._name(), self._merged(config)))

    def get(self, config: Config | None = None) -> Self:
        return run_sync(self.get_async(config))

    async def refresh_async(self, config: Config | None = None) -> Self:
        return await self.get_async(config)

    def refresh(self, config: Config | None = None) -> Self:
        return run_sync(self.refresh_async(config))

    async def delete_async(self, config: Config | None = None) -> Self:
        """Delete; `self` takes the server's snapshot (normally DELETING)."""
        snapshot = await self.delete_by_name_async(self._name(), self._merged(config))
        return self._replace_with(snapshot)

    def delete(self, config: Config | None = None) -> Self:
        return run_sync(self.delete_async(config))

    async def wait_until_ready_or_failed_async(
        self,
        callback: Callable[[Self], None] | None = None,
        interval_seconds: float = 5,
        timeout_seconds: float = 300,
        config: Config | None = None,
    ) -> Self:
        """Poll until READY or *_FAILED (None and unknown statuses keep waiting), with
        backoff from `interval_seconds` up to 30 s. Returns self; check `status` and
        `status_reason`. Raises `WaitTimeoutError` after `timeout_seconds`."""
        deadline = time.monotonic() + timeout_seconds
        delay_s = interval_seconds
        while True:
            await self.refresh_async(config)
            if callback is not None:
                callback(self)
            if Status.is_final_status(self.status):
                return self
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise WaitTimeoutError(
                    f"proxy {self.model_proxy_name} still {self.status} "
                    f"after {timeout_seconds} s"
                )
            await asyncio.sleep(min(delay_s, remaining_s))
            delay_s = min(delay_s * WAIT_BACKOFF, max(interval_seconds, WAIT_MAX_INTERVAL_S))

    def wait_until_ready_or_failed(
        self,
        callback: Callable[[Self], None] | None = None,
        interval_seconds: float = 5,
        timeout_seconds: float = 300,
        config: Config | None = None,
    ) -> Self:
        return run_sync(
            self.wait_until_ready_or_failed_async(
                callback, interval_seconds, timeout_seconds, config
            )
        )

    # ---- data plane -----------------------------------------------------------------------

    def model_info(self, config: Config | None = None) -> BaseInfo:
        """Base URL and model name for OpenAI-compatible clients. Auth is not a static
        header here: use this object's inference methods, which sign every request."""
        data = DataAPI(self._name(), self._merged(config))
        return BaseInfo(model=model_name_for(self), base_url=data.base_url())

    def _data(self, config: Config | None) -> DataAPI:
        return DataAPI(self._name(), self._merged(config))

    async def _chat(
        self, messages: Messages, model: str | None, stream: bool, config: Config | None,
        kwargs: dict[str, Any],
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        body = chat_body(messages, model or model_name_for(self), stream=stream, **kwargs)
        if stream:
            return self._data(config).chat_stream(body)
        return await self._data(config).chat(body)

    async def _respond(
        self, messages: str | Messages, model: str | None, stream: bool, config: Config | None,
        kwargs: dict[str, Any],
    ) -> ResponseObject | AsyncIterator[ResponseStreamEvent]:
        body = responses_body(messages, model or model_name_for(self), stream=stream, **kwargs)
        if stream:
            return self._data(config).responses_stream(body)
        return await self._data(config).responses(body)

    @overload
    async def completions_async(
        self, messages: Messages, model: str | None = None, stream: Literal[False] = False,
        config: Config | None = None, **kwargs: Any,
    ) -> ChatCompletion: ...

    @overload
    async def completions_async(
        self, messages: Messages, model: str | None = None, *, stream: Literal[True],
        config: Config | None = None, **kwargs: Any,
    ) -> AsyncIterator[ChatCompletionChunk]: ...

    async def completions_async(
        self, messages: Messages, model: str | None = None, stream: bool = False,
        config: Config | None = None, **kwargs: Any,
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        """Chat completions; with `stream=True`, an async iterator of chunks."""
        return await self._chat(messages, model, stream, config, kwargs)

    @overload
    def completions(
        self, messages: Messages, model: str | None = None, stream: Literal[False] = False,
        config: Config | None = None, **kwargs: Any,
    ) -> ChatCompletion: ...

    @overload
    def completions(
        self, messages: Messages, model: str | None = None, *, stream: Literal[True],
        config: Config | None = None, **kwargs: Any,
    ) -> Iterator[ChatCompletionChunk]: ...

    def completions(
        self, messages: Messages, model: str | None = None, stream: bool = False,
        config: Config | None = None, **kwargs: Any,
    ) -> ChatCompletion | Iterator[ChatCompletionChunk]:
        result = run_sync(self._chat(messages, model, stream, config, kwargs))
        return result if isinstance(result, ChatCompletion) else iterate_sync(result)

    @overload
    async def responses_async(
        self, messages: str | Messages, model: str | None = None,
        stream: Literal[False] = False, config: Config | None = None, **kwargs: Any,
    ) -> ResponseObject: ...

    @overload
    async def responses_async(
        self, messages: str | Messages, model: str | None = None, *, stream: Literal[True],
        config: Config | None = None, **kwargs: Any,
    ) -> AsyncIterator[ResponseStreamEvent]: ...

    async def responses_async(
        self, messages: str | Messages, model: str | None = None, stream: bool = False,
        config: Config | None = None, **kwargs: Any,
    ) -> ResponseObject | AsyncIterator[ResponseStreamEvent]:
        """Responses API; `messages` is its `input` (a string or input items)."""
        return await self._respond(messages, model, stream, config, kwargs)

    @overload
    def responses(
        self, messages: str | Messages, model: str | None = None,
        stream: Literal[False] = False, config: Config | None = None, **kwargs: Any,
    ) -> ResponseObject: ...

    @overload
    def responses(
        self, messages: str | Messages, model: str | None = None, *, stream: Literal[True],
        config: Config | None = None, **kwargs: Any,
    ) -> Iterator[ResponseStreamEvent]: ...

    def responses(
        self, messages: str | Messages, model: str | None = None, stream: bool = False,
        config: Config | None = None, **kwargs: Any,
    ) -> ResponseObject | Iterator[ResponseStreamEvent]:
        result = run_sync(self._respond(messages, model, stream, config, kwargs))
        return result if isinstance(result, ResponseObject) else iterate_sync(result)

    async def aembedding(
        self, input: EmbeddingInput, model: str | None = None, config: Config | None = None,
        **kwargs: Any,
    ) -> EmbeddingResponse:
        """Embeddings of `input`: a text, texts, or token arrays. Options such as
        `dimensions`, `encoding_format` and `user` go into the request body."""
        body = embeddings_body(input, model or model_name_for(self), **kwargs)
        return await self._data(config).embeddings(body)

    async def embedding_async(
        self, input: EmbeddingInput, model: str | None = None, config: Config | None = None,
        **kwargs: Any,
    ) -> EmbeddingResponse:
        """`aembedding` under the `_async` name every other network method has."""
        return await self.aembedding(input, model, config, **kwargs)

    def embedding(
        self, input: EmbeddingInput, model: str | None = None, config: Config | None = None,
        **kwargs: Any,
    ) -> EmbeddingResponse:
        return run_sync(self.aembedding(input, model, config, **kwargs))

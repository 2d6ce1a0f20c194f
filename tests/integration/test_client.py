"""The ModelProxy client against the emulator over real sockets, sync and async side by side."""

from __future__ import annotations

import asyncio
import gc
import re
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from polling import until

from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from modelproxy import (
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CertificateError,
    Config,
    ConflictError,
    ModelProxy,
    ModelProxyCreateInput,
    ModelProxyUpdateInput,
    PermissionDeniedError,
    ProxyConfig,
    ProxyConfigEndpoint,
    ProxyConfigPolicies,
    ProxyConfigTokenRateLimiter,
    RateLimitedError,
    ResourceAlreadyExistError,
    ResourceNotExistError,
    ServerError,
    StreamInterruptedError,
)
from modelproxy.data import DataAPI, ResponseLimits, chat_body, embeddings_body, responses_body
from modelproxy.errors import DeadlineExceededError, ResponseTooLargeError
from modelproxy.transport import deadline

FLAVORS = ["sync", "async"]
MESSAGES = [{"role": "user", "content": "tell me about queues"}]


async def call(flavor: str, target: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call `method` (sync twin) or `method_async`, so each test runs both flavours."""
    if flavor == "sync":
        return getattr(target, method)(*args, **kwargs)
    return await getattr(target, f"{method}_async")(*args, **kwargs)


async def collect(flavor: str, stream: Any) -> list[Any]:
    if flavor == "sync":
        return list(stream)
    return [item async for item in stream]


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def proxy_input(name: str, policies: ProxyConfigPolicies | None = None,
                description: str = "test") -> ModelProxyCreateInput:
    return ModelProxyCreateInput(
        model_proxy_name=name,
        description=description,
        proxy_config=ProxyConfig(
            endpoints=[ProxyConfigEndpoint(model_names=["m1"], model_service_name="svc")],
            policies=policies,
        ),
    )


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0.2, update_delay_s=0.2, delete_delay_s=0.2)
    with EmulatorServer(settings=settings) as server:
        yield server


@pytest.fixture(scope="module")
def config(emulator: EmulatorServer) -> Config:
    return Config(control_endpoint=emulator.url, data_endpoint=emulator.url, timeout=10)


async def ready_proxy(flavor: str, config: Config, **kwargs: Any) -> ModelProxy:
    proxy = await call(flavor, ModelProxy, "create", proxy_input(unique(flavor), **kwargs),
                       config=config)
    await call(flavor, proxy, "wait_until_ready_or_failed", interval_seconds=0.05,
               timeout_seconds=10)
    assert proxy.status == "READY"
    return proxy


async def deleted(name: str, config: Config) -> bool:
    try:
        await ModelProxy.get_by_name_async(name, config=config)
    except ResourceNotExistError:
        return True
    return False


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_full_lifecycle(flavor: str, config: Config) -> None:
    name = unique(flavor)
    proxy = await call(flavor, ModelProxy, "create", proxy_input(name), config=config)
    assert proxy.status == "CREATING"
    seen: list[str | None] = []
    await call(flavor, proxy, "wait_until_ready_or_failed",
               callback=lambda p: seen.append(p.status), interval_seconds=0.05,
               timeout_seconds=10)
    assert seen[-1] == "READY"
    fetched = await call(flavor, ModelProxy, "get_by_name", name, config=config)
    assert fetched.model_proxy_id == proxy.model_proxy_id
    assert fetched.proxy_mode == "single"

    await call(flavor, proxy, "update", ModelProxyUpdateInput(description="changed"))
    assert proxy.status == "UPDATING"
    await call(flavor, proxy, "wait_until_ready_or_failed", interval_seconds=0.05,
               timeout_seconds=10)
    assert (proxy.status, proxy.description) == ("READY", "changed")
    assert proxy.last_updated_at is not None and proxy.created_at is not None
    assert proxy.last_updated_at > proxy.created_at
    assert proxy.proxy_config is not None  # a description-only update keeps the config

    await call(flavor, proxy, "refresh")
    await call(flavor, proxy, "get")
    await call(flavor, proxy, "delete")
    assert proxy.status == "DELETING"
    await until(lambda: deleted(name, config), 10, what=f"proxy {name} to be deleted")
    with pytest.raises(ResourceNotExistError):
        await call(flavor, ModelProxy, "get_by_name", name, config=config)
    with pytest.raises(ResourceNotExistError):
        await call(flavor, ModelProxy, "delete_by_name", model_Proxy_name=name, config=config)


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_update_and_delete_by_name(flavor: str, config: Config) -> None:
    proxy = await ready_proxy(flavor, config)
    name = proxy.model_proxy_name
    updated = await call(flavor, ModelProxy, "update_by_name", name,
                         ModelProxyUpdateInput(description="by name"), config=config)
    assert updated.description == "by name"
    with pytest.raises(ConflictError):  # still UPDATING
        await call(flavor, ModelProxy, "delete_by_name", name, config=config)
    await call(flavor, updated, "wait_until_ready_or_failed", interval_seconds=0.05,
               timeout_seconds=10)
    deleted = await call(flavor, ModelProxy, "delete_by_name", model_proxy_name=name,
                         config=config)
    assert deleted.status == "DELETING"


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_duplicate_create_and_validation(flavor: str, config: Config) -> None:
    proxy = await ready_proxy(flavor, config)
    with pytest.raises(ResourceAlreadyExistError) as info:
        await call(flavor, ModelProxy, "create", proxy_input(proxy.model_proxy_name or ""),
                   config=config)
    assert info.value.status_code == 500  # as the real service answers
    # Skip our own validation to see the server's answer to a bad type.
    bad = ModelProxyCreateInput.model_construct(model_proxy_name=unique(), cpu="lots", memory=1)
    with warnings.catch_warnings(), pytest.raises(BadRequestError, match="cpu"):
        warnings.simplefilter("ignore", UserWarning)  # pydantic: "lots" is not a number
        await call(flavor, ModelProxy, "create", bad, config=config)


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_create_failure_reports_status_reason(flavor: str, config: Config) -> None:
    proxy = await call(flavor, ModelProxy, "create",
                       proxy_input(unique(), description="x [emulator:fail-create]"),
                       config=config)
    await call(flavor, proxy, "wait_until_ready_or_failed", interval_seconds=0.05,
               timeout_seconds=10)
    assert proxy.status == "CREATE_FAILED"
    assert proxy.status_reason


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_list_all_pages_past_fifty(flavor: str, emulator: EmulatorServer) -> None:
    # A fresh emulator so `total` is exactly ours.
    with EmulatorServer(settings=EmulatorSettings(create_delay_s=0)) as server:
        cfg = Config(control_endpoint=server.url, data_endpoint=server.url)
        names = {unique(flavor) for _ in range(120)}
        await asyncio.gather(*(ModelProxy.create_async(proxy_input(n), config=cfg)
                               for n in names))
        listed = await call(flavor, ModelProxy, "list_all", config=cfg)
        assert {p.model_proxy_name for p in listed} == names
        ready = await call(flavor, ModelProxy, "list_all", status="READY", config=cfg)
        assert len(ready) == 120
        multi = await call(flavor, ModelProxy, "list_all", proxy_mode="multi", config=cfg)
        assert multi == []


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_chat_completions(flavor: str, config: Config) -> None:
    proxy = await ready_proxy(flavor, config)
    reply = await call(flavor, proxy, "completions", MESSAGES)
    again = await call(flavor, proxy, "completions", MESSAGES)
    assert reply.text and reply.text == again.text  # deterministic
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    chunks = await collect(flavor, await call(flavor, proxy, "completions", MESSAGES,
                                              stream=True))
    assert "".join(c.text for c in chunks) == reply.text
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_responses_api(flavor: str, config: Config) -> None:
    proxy = await ready_proxy(flavor, config)
    reply = await call(flavor, proxy, "responses", "tell me about queues")
    assert reply.output_text and reply.usage.output_tokens > 0
    events = await collect(flavor, await call(flavor, proxy, "responses",
                                              "tell me about queues", stream=True))
    assert "".join(e.text for e in events) == reply.output_text
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage == reply.usage


def test_model_info(config: Config) -> None:
    proxy = ModelProxy.create(proxy_input(unique()), config=config)
    info = proxy.model_info()
    assert info.model == "m1"
    assert info.base_url == f"{config.data_endpoint}/models/{proxy.model_proxy_name}/v1"


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_token_rate_limit_answers_429_with_retry_after(
    flavor: str, config: Config
) -> None:
    policies = ProxyConfigPolicies(token_rate_limiter=ProxyConfigTokenRateLimiter(tpm=60))
    proxy = await ready_proxy(flavor, config, policies=policies)
    with pytest.raises(RateLimitedError) as info:
        for _ in range(20):
            await call(flavor, proxy, "completions", MESSAGES)
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
    assert info.value.retryable


async def test_concurrency_limit_answers_429(emulator: EmulatorServer) -> None:
    settings = EmulatorSettings(create_delay_s=0, tpot_s=0.05)
    with EmulatorServer(settings=settings) as server:
        cfg = Config(control_endpoint=server.url, data_endpoint=server.url)
        proxy = await ready_proxy(
            "async", cfg, policies=ProxyConfigPolicies(concurrency_limit=1)
        )
        results = await asyncio.gather(
            *(proxy.completions_async(MESSAGES) for _ in range(4)), return_exceptions=True
        )
        limited = [r for r in results if isinstance(r, RateLimitedError)]
        assert 1 <= len(limited) <= 3


def set_faults(emulator: EmulatorServer, name: str, **faults: Any) -> None:
    response = httpx.put(f"{emulator.url}/_emulator/proxies/{name}/faults", json=faults)
    response.raise_for_status()


FAULTS: list[tuple[dict[str, Any], type[Exception], bool]] = [
    ({"error_500_rate": 1.0}, ServerError, False),
    ({"error_503_rate": 1.0}, ServerError, False),
    ({"error_429_rate": 1.0, "retry_after_s": 3}, RateLimitedError, False),
    ({"slow_rate": 1.0, "slow_s": 3}, APITimeoutError, False),
    ({"cut_stream_rate": 1.0, "cut_after_chunks": 2}, StreamInterruptedError, True),
]


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize(("faults", "error", "stream"), FAULTS)
async def test_injected_faults_are_classified(
    flavor: str, faults: dict[str, Any], error: type[Exception], stream: bool,
    emulator: EmulatorServer, config: Config,
) -> None:
    proxy = await ready_proxy(flavor, config)
    set_faults(emulator, proxy.model_proxy_name or "", **faults)
    short = Config(timeout=1)
    with pytest.raises(error) as info:
        if stream:
            await collect(flavor, await call(flavor, proxy, "completions", MESSAGES,
                                             stream=True, config=short))
        else:
            await call(flavor, proxy, "completions", MESSAGES, config=short)
    assert getattr(info.value, "retryable", False)
    if error is RateLimitedError:
        assert info.value.retry_after_s == 3  # type: ignore[attr-defined]


MIB = 1024 * 1024
RUNAWAY: list[tuple[dict[str, Any], ResponseLimits, bool, str]] = [
    ({"huge_body_rate": 1.0, "huge_body_bytes": 4 * MIB}, ResponseLimits(max_body_bytes=MIB),
     False, f"response body over the limit of {MIB} bytes"),
    ({"huge_body_rate": 1.0, "huge_body_bytes": 4 * MIB}, ResponseLimits(max_stream_bytes=MIB),
     True, f"stream over the limit of {MIB} bytes"),
    ({"endless_stream_rate": 1.0}, ResponseLimits(max_stream_bytes=MIB), True,
     f"stream over the limit of {MIB} bytes"),
    ({"endless_stream_rate": 1.0}, ResponseLimits(max_stream_events=100), True,
     "stream over the limit of 100 events"),
]


@pytest.mark.parametrize("kind", ["chat", "responses"])
@pytest.mark.parametrize(("faults", "limits", "stream", "message"), RUNAWAY)
async def test_runaway_answers_stop_at_the_limits(
    kind: str, faults: dict[str, Any], limits: ResponseLimits, stream: bool, message: str,
    emulator: EmulatorServer, config: Config,
) -> None:
    name = (await ready_proxy("async", config)).model_proxy_name or ""
    set_faults(emulator, name, **faults)
    data = DataAPI(name, config, limits)
    with pytest.raises(ResponseTooLargeError, match=message) as info:
        if kind == "chat" and stream:
            [c async for c in data.chat_stream(chat_body(MESSAGES, "m1", stream=True))]
        elif kind == "chat":
            await data.chat(chat_body(MESSAGES, "m1", stream=False))
        elif stream:
            [e async for e in data.responses_stream(responses_body("hi", "m1", stream=True))]
        else:
            await data.responses(responses_body("hi", "m1", stream=False))
    assert not info.value.retryable
    set_faults(emulator, name)  # the same limits pass an ordinary answer
    if stream:
        assert [c async for c in data.chat_stream(chat_body(MESSAGES, "m1", stream=True))]
    else:
        assert (await data.chat(chat_body(MESSAGES, "m1", stream=False))).text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_drip_outlives_no_deadline(
    stream: bool, emulator: EmulatorServer, config: Config
) -> None:
    name = (await ready_proxy("async", config)).model_proxy_name or ""
    set_faults(emulator, name, drip_rate=1.0, drip_s=0.2)  # far under the read timeout
    data = DataAPI(name, config)
    with pytest.raises(DeadlineExceededError, match="call still running after 1 s"):
        async with deadline(1, "call"):
            if stream:
                [c async for c in data.chat_stream(chat_body(MESSAGES, "m1", stream=True))]
            else:
                await data.chat(chat_body(MESSAGES, "m1", stream=False))


async def test_every_answer_tells_the_upstream_request_id(config: Config) -> None:
    """The emulator's `x-request-id` (`req_` and 32 hex digits, one per request): on a whole
    answer, on a stream once it has begun, and on an error."""
    name = (await ready_proxy("async", config)).model_proxy_name or ""
    data = DataAPI(name, config)
    answers = [await data.chat(chat_body(MESSAGES, "m1", stream=False)),
               await data.responses(responses_body("hi", "m1", stream=False)),
               await data.embeddings(embeddings_body("hi", "m1"))]
    ids = [answer.request_id for answer in answers]
    streams = [data.chat_stream(chat_body(MESSAGES, "m1", stream=True)),
               data.responses_stream(responses_body("hi", "m1", stream=True))]
    for stream in streams:
        assert stream.request_id is None  # not begun
        assert [item async for item in stream]
        ids.append(stream.request_id)
    with pytest.raises(BadRequestError) as refused:
        await data.chat(chat_body(MESSAGES, "not-served", stream=False))
    ids.append(refused.value.request_id)
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", str(request_id)) for request_id in ids), ids
    assert len(set(ids)) == len(ids)
    assert "request_id" not in answers[0].model_dump()


CREDENTIALS = {"AKIDTEST": "test-secret"}


@pytest.fixture(scope="module")
def signed_emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0)
    with EmulatorServer(settings=settings, credentials=CREDENTIALS) as server:
        yield server


def with_auth(server: EmulatorServer, **auth: Any) -> Config:
    return Config(control_endpoint=server.url, data_endpoint=server.url, **auth)


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_signed_requests_accepted_on_both_planes(
    flavor: str, signed_emulator: EmulatorServer
) -> None:
    cfg = with_auth(signed_emulator, access_key_id="AKIDTEST", access_key_secret="test-secret")
    proxy = await ready_proxy(flavor, cfg)
    reply = await call(flavor, proxy, "completions", MESSAGES)
    assert reply.text
    chunks = await collect(flavor, await call(flavor, proxy, "completions", MESSAGES,
                                              stream=True))
    assert chunks


BAD_AUTH: list[tuple[dict[str, Any], type[Exception]]] = [
    ({}, AuthenticationError),
    ({"access_key_id": "AKIDTEST", "access_key_secret": "wrong"}, PermissionDeniedError),
    ({"access_key_id": "NOPE", "access_key_secret": "test-secret"}, PermissionDeniedError),
]


@pytest.mark.parametrize(("auth", "error"), BAD_AUTH)
async def test_bad_auth_refused_on_both_planes(
    auth: dict[str, Any], error: type[Exception], signed_emulator: EmulatorServer
) -> None:
    good = with_auth(signed_emulator, access_key_id="AKIDTEST", access_key_secret="test-secret")
    proxy = await ready_proxy("async", good)
    bad = with_auth(signed_emulator, **auth)
    with pytest.raises(error):
        await ModelProxy.get_by_name_async(proxy.model_proxy_name or "", config=bad)
    proxy.set_config(bad)
    with pytest.raises(error):
        await proxy.completions_async(MESSAGES)


async def test_https_with_the_emulator_certificate() -> None:
    with EmulatorServer(settings=EmulatorSettings(create_delay_s=0), tls=True) as server:
        assert server.url.startswith("https://")
        cfg = Config(control_endpoint=server.url, data_endpoint=server.url,
                     verify_tls=str(server.ca_path))
        proxy = await ready_proxy("async", cfg)
        assert (await proxy.completions_async(MESSAGES)).text
        untrusted = Config(control_endpoint=server.url)
        with pytest.raises(CertificateError) as info:
            await ModelProxy.get_by_name_async(proxy.model_proxy_name or "", config=untrusted)
        assert not info.value.retryable
    # asyncio's server side leaks the transport of a refused TLS handshake; collect it here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_config_is_bound_to_returned_objects(config: Config) -> None:
    proxy = ModelProxy.create(proxy_input(unique()), config=config)
    # No config passed: the object remembers where it came from (spec Q2).
    proxy.wait_until_ready_or_failed(interval_seconds=0.05, timeout_seconds=10)
    assert proxy.status == "READY"


Callback = Callable[[ModelProxy], None]

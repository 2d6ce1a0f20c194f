"""The client's embeddings against the emulator over real sockets, sync and async side by side:
input forms, both encodings, auth, policies, faults, limits and bad input."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from emulator.embeddings import unit_vector
from emulator.openai_models import EmbeddingList
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from modelproxy import (
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    Config,
    EmbeddingResponse,
    ModelProxy,
    ModelProxyCreateInput,
    PermissionDeniedError,
    ProxyConfig,
    ProxyConfigEndpoint,
    ProxyConfigPolicies,
    ProxyConfigTokenRateLimiter,
    RateLimitedError,
    ServerError,
)
from modelproxy.data import DataAPI, ResponseLimits, embeddings_body
from modelproxy.errors import ResponseTooLargeError

FLAVORS = ["sync", "async"]
CREDENTIALS = {"AKIDTEST": "test-secret"}
API_KEY = "sk-embed"
MODEL = "emb-1"


async def call(flavor: str, target: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call `method` (sync twin) or `method_async`, so each test runs both flavours."""
    if flavor == "sync":
        return getattr(target, method)(*args, **kwargs)
    return await getattr(target, f"{method}_async")(*args, **kwargs)


def proxy_input(policies: ProxyConfigPolicies | None = None) -> ModelProxyCreateInput:
    return ModelProxyCreateInput(
        model_proxy_name=f"emb-{uuid.uuid4().hex[:10]}",
        model_type="text-embedding",
        proxy_config=ProxyConfig(
            endpoints=[ProxyConfigEndpoint(model_names=[MODEL, "emb-2"])], policies=policies
        ),
    )


async def ready_proxy(
    flavor: str, config: Config, policies: ProxyConfigPolicies | None = None
) -> ModelProxy:
    proxy = await call(flavor, ModelProxy, "create", proxy_input(policies), config=config)
    await call(flavor, proxy, "wait_until_ready_or_failed", interval_seconds=0.05,
               timeout_seconds=10)
    assert proxy.status == "READY"
    return proxy


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0.1, embedding_dimensions={MODEL: 64})
    with EmulatorServer(settings=settings) as server:
        yield server


@pytest.fixture(scope="module")
def config(emulator: EmulatorServer) -> Config:
    return Config(control_endpoint=emulator.url, data_endpoint=emulator.url, timeout=10)


def set_faults(emulator: EmulatorServer, name: str, **faults: Any) -> None:
    response = httpx.put(f"{emulator.url}/_emulator/proxies/{name}/faults", json=faults)
    response.raise_for_status()


# -- answers -------------------------------------------------------------------------------


INPUTS: list[tuple[Any, list[Any], int]] = [
    ("tell me about queues", ["tell me about queues"], 4),
    (["a queue", "a stack"], ["a queue", "a stack"], 4),
    ([101, 102, 103], [[101, 102, 103]], 3),
    ([[101, 102], [103]], [[101, 102], [103]], 3),
]


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize(("input_", "items", "tokens"), INPUTS)
async def test_embedding(
    flavor: str, input_: Any, items: list[Any], tokens: int, config: Config
) -> None:
    proxy = await ready_proxy(flavor, config)
    answer = await call(flavor, proxy, "embedding", input_)
    assert isinstance(answer, EmbeddingResponse)
    assert (answer.object, answer.model) == ("list", MODEL)
    assert [e.index for e in answer.data] == list(range(len(items)))
    # The model's dimensions (64, set for it), and the emulator's vector for each input.
    assert [e.embedding for e in answer.data] == [unit_vector(MODEL, i, 64) for i in items]
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens


async def test_the_seed_names(config: Config) -> None:
    proxy = await ready_proxy("async", config)
    sync = proxy.embedding(input="queues", model="emb-2")
    async_answer = await proxy.aembedding(input="queues", model="emb-2")
    assert async_answer.model_dump() == sync.model_dump()
    assert async_answer.request_id != sync.request_id  # answers to two requests
    assert sync.model == "emb-2"
    assert len(sync.data[0].vector) == 256  # a model without its own setting: the default


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_both_encodings_carry_the_same_vector(flavor: str, config: Config) -> None:
    proxy = await ready_proxy(flavor, config)
    floats = await call(flavor, proxy, "embedding", ["a", "b"], dimensions=8)
    packed = await call(flavor, proxy, "embedding", ["a", "b"], dimensions=8,
                        encoding_format="base64")
    assert all(isinstance(e.embedding, str) for e in packed.data)
    assert [e.vector for e in packed.data] == [e.vector for e in floats.data]
    assert [len(e.vector) for e in floats.data] == [8, 8]
    # The client kept all the emulator sent: the emulator's own answer model takes it back.
    for answer in (floats, packed):
        EmbeddingList.model_validate(answer.model_dump())


async def test_data_api_embeddings(emulator: EmulatorServer, config: Config) -> None:
    name = (await ready_proxy("async", config)).model_proxy_name or ""
    data = DataAPI(name, config)
    answer = await data.embeddings(embeddings_body("hi", "emb-2", dimensions=4, user="u1"))
    assert len(answer.data[0].vector) == 4
    set_faults(emulator, name, huge_body_rate=1.0, huge_body_bytes=1024 * 1024)
    limited = DataAPI(name, config, ResponseLimits(max_body_bytes=64 * 1024))
    with pytest.raises(ResponseTooLargeError):
        await limited.embeddings(embeddings_body("hi", "emb-2"))


# -- errors --------------------------------------------------------------------------------


BAD_INPUT: list[tuple[Any, dict[str, Any], str]] = [
    ("", {}, "input"),
    ([], {}, "input"),
    (["a"] * 2049, {}, "input"),
    ([1, "a"], {}, "input[1]"),
    ([[1], [1.5]], {}, "input[1][0]"),
    ("a", {"dimensions": 65}, "dimensions"),  # emb-1 has 64
    ("a", {"dimensions": 0}, "dimensions"),
    ("a", {"encoding_format": "hex"}, "encoding_format"),
    ("a", {"model": "not-served"}, "model"),
]


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize(("input_", "options", "param"), BAD_INPUT)
async def test_bad_input_is_a_bad_request(
    flavor: str, input_: Any, options: dict[str, Any], param: str, config: Config
) -> None:
    proxy = await ready_proxy(flavor, config)
    with pytest.raises(BadRequestError) as info:
        await call(flavor, proxy, "embedding", input_, **options)
    error = info.value
    assert not error.retryable
    assert error.response_body["error"]["param"] == param
    assert error.request_id  # the emulator's x-acs-request-id


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_token_rate_limit_counts_prompt_tokens(flavor: str, config: Config) -> None:
    policies = ProxyConfigPolicies(token_rate_limiter=ProxyConfigTokenRateLimiter(tpm=10))
    proxy = await ready_proxy(flavor, config, policies)
    await call(flavor, proxy, "embedding", [1] * 10)
    with pytest.raises(RateLimitedError) as info:
        await call(flavor, proxy, "embedding", "one more")
    assert info.value.retryable
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0


FAULTS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"error_503_rate": 1.0}, ServerError),
    ({"error_429_rate": 1.0, "retry_after_s": 3}, RateLimitedError),
    ({"slow_rate": 1.0, "slow_s": 3}, APITimeoutError),
]


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize(("faults", "error"), FAULTS)
async def test_injected_faults_are_classified(
    flavor: str, faults: dict[str, Any], error: type[Exception], emulator: EmulatorServer,
    config: Config,
) -> None:
    proxy = await ready_proxy(flavor, config)
    set_faults(emulator, proxy.model_proxy_name or "", **faults)
    with pytest.raises(error) as info:
        await call(flavor, proxy, "embedding", "queues", config=Config(timeout=1))
    assert getattr(info.value, "retryable", False)


# -- auth ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0)
    with EmulatorServer(settings=settings, credentials=CREDENTIALS, api_keys=[API_KEY]) as server:
        yield server


def with_auth(server: EmulatorServer, **auth: Any) -> Config:
    return Config(control_endpoint=server.url, data_endpoint=server.url, **auth)


SIGNED = {"access_key_id": "AKIDTEST", "access_key_secret": "test-secret"}


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("auth", [SIGNED, {"api_key": API_KEY}], ids=["signed", "api-key"])
async def test_authenticated_embeddings(
    flavor: str, auth: dict[str, Any], guarded_emulator: EmulatorServer
) -> None:
    proxy = await ready_proxy(flavor, with_auth(guarded_emulator, **SIGNED))
    proxy.set_config(with_auth(guarded_emulator, **auth))
    answer = await call(flavor, proxy, "embedding", "queues")
    assert answer.data and answer.usage is not None


BAD_AUTH: list[tuple[dict[str, Any], type[Exception]]] = [
    ({}, AuthenticationError),
    ({"api_key": "sk-wrong"}, AuthenticationError),
    ({"access_key_id": "AKIDTEST", "access_key_secret": "wrong"}, PermissionDeniedError),
]


@pytest.mark.parametrize(("auth", "error"), BAD_AUTH)
async def test_bad_auth_is_refused(
    auth: dict[str, Any], error: type[Exception], guarded_emulator: EmulatorServer
) -> None:
    proxy = await ready_proxy("async", with_auth(guarded_emulator, **SIGNED))
    proxy.set_config(with_auth(guarded_emulator, **auth))
    with pytest.raises(error):
        await proxy.aembedding("queues")

"""The emulator's embeddings route over a real socket: vectors, dimensions, encodings, bad
input, auth, policies and faults."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from polling import wait_until

from emulator.embeddings import MAX_EMBEDDING_INPUTS
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings

CONTROL = "/2025-09-10/agents/model-proxies"
ROUTE = "POST /models/{name}/v1/embeddings"


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0, update_delay_s=0, delete_delay_s=0)
    with EmulatorServer(settings) as running:
        yield running


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def create_proxy(
    client: httpx.Client, name: str, policies: dict[str, Any] | None = None,
    mode: str = "single",
) -> None:
    config: dict[str, Any] = {"endpoints": [{"modelNames": ["emb-small", "emb-large"]}]}
    if policies is not None:
        config["policies"] = policies
    body = {"modelProxyName": name, "modelType": "text-embedding", "proxyMode": mode,
            "proxyConfig": config}
    assert client.post(CONTROL, json=body).status_code == 200


def put_settings(client: httpx.Client, **changes: Any) -> None:
    assert client.put("/_emulator/settings", json=changes).status_code == 200


def put_faults(client: httpx.Client, name: str, **faults: Any) -> None:
    assert client.put(f"/_emulator/proxies/{name}/faults", json=faults).status_code == 200


def embed(client: httpx.Client, name: str, input_: Any = "hello world", **body: Any
          ) -> httpx.Response:
    return client.post(f"/models/{name}/v1/embeddings", json={"input": input_, **body})


def vectors(response: httpx.Response) -> list[list[float]]:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    return [decoded(item["embedding"]) for item in data]


def decoded(embedding: list[float] | str) -> list[float]:
    if isinstance(embedding, list):
        return embedding
    raw = base64.b64decode(embedding)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    return error


# -- answers -------------------------------------------------------------------------------


def test_embedding(client: httpx.Client) -> None:
    create_proxy(client, "e1")
    response = embed(client, "e1", ["Hello, world!", "queues"])
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == "emb-small"  # the default of a single proxy
    assert all(item["object"] == "embedding" for item in body["data"])
    first, second = vectors(response)
    assert len(first) == len(second) == 256  # the default dimensions
    assert norm(first) == pytest.approx(1.0, abs=1e-6)
    assert first != second
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}  # 4 + 1


def test_vectors_are_deterministic_per_model_and_input(client: httpx.Client) -> None:
    create_proxy(client, "e1")
    create_proxy(client, "e2")
    [alone] = vectors(embed(client, "e1", "queues"))
    assert vectors(embed(client, "e1", ["x", "queues"]))[1] == alone  # position is no input
    assert vectors(embed(client, "e2", "queues")) == [alone]  # same model, another proxy
    assert vectors(embed(client, "e1", "queues", model="emb-large")) != [alone]


def test_token_arrays(client: httpx.Client) -> None:
    create_proxy(client, "e1")
    one = embed(client, "e1", [1, 2, 3])
    assert len(vectors(one)) == 1
    assert one.json()["usage"]["prompt_tokens"] == 3
    many = embed(client, "e1", [[1, 2, 3], [4]])
    assert vectors(many)[0] == vectors(one)[0]
    assert many.json()["usage"]["prompt_tokens"] == 4


def test_dimensions_come_from_the_model(client: httpx.Client) -> None:
    create_proxy(client, "e1")
    put_settings(client, embedding_dimensions={"emb-large": 1024}, default_embedding_dimensions=8)
    assert len(vectors(embed(client, "e1", model="emb-large"))[0]) == 1024
    assert len(vectors(embed(client, "e1"))[0]) == 8
    assert client.get("/_emulator/settings").json()["embedding_dimensions"] == {"emb-large": 1024}


def test_dimensions_shorten_the_vector(client: httpx.Client) -> None:
    create_proxy(client, "e1")
    [full] = vectors(embed(client, "e1"))
    [short] = vectors(embed(client, "e1", dimensions=16))
    head = full[:16]
    assert short == pytest.approx([x / norm(head) for x in head], abs=1e-6)
    assert len(vectors(embed(client, "e1", dimensions=256))[0]) == 256


def test_base64_carries_the_same_floats(client: httpx.Client) -> None:
    create_proxy(client, "e1")
    floats = embed(client, "e1", ["a", "b"], encoding_format="float")
    packed = embed(client, "e1", ["a", "b"], encoding_format="base64")
    assert all(isinstance(item["embedding"], str) for item in packed.json()["data"])
    assert vectors(packed) == vectors(floats) == vectors(embed(client, "e1", ["a", "b"]))


def test_multi_mode_serves_the_proxy_name(client: httpx.Client) -> None:
    create_proxy(client, "multi", mode="multi")
    assert embed(client, "multi").json()["model"] == "multi"
    assert embed(client, "multi", model="emb-large").json()["model"] == "emb-large"


def test_a_full_batch(client: httpx.Client) -> None:
    create_proxy(client, "e1")
    texts = [f"text {i}" for i in range(MAX_EMBEDDING_INPUTS)]
    answer = embed(client, "e1", texts, dimensions=4, encoding_format="base64")
    assert len(vectors(answer)) == MAX_EMBEDDING_INPUTS


# -- bad input -----------------------------------------------------------------------------


BAD_INPUT: list[tuple[dict[str, Any], str]] = [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["a", ""]}, "input[1]"),
    ({"input": ["a"] * (MAX_EMBEDDING_INPUTS + 1)}, "input"),
    ({"input": [1, 2.5]}, "input[1]"),
    ({"input": [[1], ["a"]]}, "input[1][0]"),
    ({"input": "a", "dimensions": 0}, "dimensions"),
    ({"input": "a", "dimensions": 257}, "dimensions"),  # the model has 256
    ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "a", "model": "not-served"}, "model"),
]


@pytest.mark.parametrize(("body", "param"), BAD_INPUT)
def test_bad_input_is_400(client: httpx.Client, body: dict[str, Any], param: str) -> None:
    create_proxy(client, "e1")
    error = error_of(client.post("/models/e1/v1/embeddings", json=body), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_unknown_proxy_is_404(client: httpx.Client) -> None:
    assert error_of(embed(client, "nope"), 404)["code"] == "model_proxy_not_found"


def test_not_json_is_400_or_415(client: httpx.Client) -> None:
    create_proxy(client, "e1")
    url = "/models/e1/v1/embeddings"
    assert client.post(url, content=b"{").status_code == 400
    assert client.post(url, content=b"input=a", headers={"content-type": "text/plain"}
                       ).status_code == 415


# -- auth, policies, faults, stats ---------------------------------------------------------


def test_data_auth_is_required_when_configured() -> None:
    settings = EmulatorSettings(create_delay_s=0)
    with (
        EmulatorServer(settings, api_keys=["sk-test"]) as running,
        httpx.Client(base_url=running.url) as http,
    ):
        create_proxy(http, "e1")
        assert embed(http, "e1").status_code == 401
        http.headers["Authorization"] = "Bearer sk-wrong"
        assert embed(http, "e1").status_code == 401
        http.headers["Authorization"] = "Bearer sk-test"
        assert embed(http, "e1").status_code == 200


def test_prompt_tokens_count_against_the_token_limit(client: httpx.Client) -> None:
    create_proxy(client, "tl", {"tokenRateLimiter": {"tpm": 60}})
    tokens = [1] * 50
    assert embed(client, "tl", tokens).status_code == 200
    assert embed(client, "tl", tokens).status_code == 200  # 10 left: admitted, overdrawn
    refused = embed(client, "tl", tokens)
    error_of(refused, 429)
    assert "tpm=60" in refused.json()["error"]["message"]
    assert 40_000 <= int(refused.headers["retry-after-ms"]) <= 41_000  # 40 owed, +1, at 1/s
    stats = client.get("/_emulator/stats").json()
    assert stats["by_proxy"]["tl"] == {"200": 2, "429": 1}
    assert stats["by_route"][ROUTE] == {"200": 2, "429": 1}


def test_concurrency_limit(client: httpx.Client, server: EmulatorServer) -> None:
    create_proxy(client, "cl", {"concurrencyLimit": 1})
    put_settings(client, ttft_s=1.0)  # one forward pass holds the slot this long
    with (
        httpx.Client(base_url=server.url, timeout=10) as other,
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(embed, other, "cl")
        wait_until(lambda: client.get("/_emulator/stats").json()["in_flight"] == 1, 5,
                   what="the first request to be in flight")
        refused = embed(client, "cl")
        assert first.result().status_code == 200
    assert "concurrency" in error_of(refused, 429)["message"]
    put_settings(client, ttft_s=0.0)
    assert embed(client, "cl").status_code == 200


@pytest.mark.parametrize(
    ("faults", "status"),
    [({"error_500_rate": 1.0}, 500), ({"error_503_rate": 1.0}, 503),
     ({"error_429_rate": 1.0, "retry_after_s": 2.5}, 429)],
)
def test_injected_errors(client: httpx.Client, faults: dict[str, Any], status: int) -> None:
    create_proxy(client, "f")
    put_faults(client, "f", **faults)
    response = embed(client, "f")
    error_of(response, status)
    if status == 429:
        assert response.headers["retry-after-ms"] == "2500"
    assert client.get("/_emulator/stats").json()["events"][f"injected_{status}"] == 1


def test_slow_answer_times_the_client_out(client: httpx.Client) -> None:
    create_proxy(client, "f")
    put_faults(client, "f", slow_rate=1.0, slow_s=1.0)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/models/f/v1/embeddings", json={"input": "a"}, timeout=0.3)


def test_huge_body_fault_pads_the_answer(client: httpx.Client) -> None:
    create_proxy(client, "f")
    put_faults(client, "f", huge_body_rate=1.0, huge_body_bytes=100_000)
    response = embed(client, "f")
    assert len(response.content) == 100_000
    assert len(vectors(response)) == 1  # still the answer, led by a `padding` member

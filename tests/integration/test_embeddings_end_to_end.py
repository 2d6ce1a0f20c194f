"""Embeddings jobs end to end: a real `celery worker` process, a Redis-protocol server (the
embedded Valkey, and the machine's Redis 7 with jemalloc when it runs), the emulator over
HTTP. Every vector is checked against a direct call to the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from stack import Stack

from core.contract import JobKind, JobStatus
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from modelproxy.data import DataAPI, embeddings_body
from producer.client import AsyncClient

pytestmark = pytest.mark.timeout(180)

NATIVE_DIMENSIONS = 1536
MODEL = "m1"  # the model of `Stack.proxy`
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0.1, update_delay_s=0.1, delete_delay_s=0.1,
                                default_embedding_dimensions=NATIVE_DIMENSIONS)
    with EmulatorServer(settings=settings) as server:
        yield server


@pytest.fixture(scope="module")
def shared_stack(any_redis_url: str, emulator: EmulatorServer,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from workers import WorkerProcess, worker_env

    stack = Stack.create(any_redis_url, emulator.url)
    log = tmp_path_factory.mktemp("workers") / "embeddings.log"
    worker = WorkerProcess(worker_env(stack.settings, emulator.url), log, "embeddings")
    worker.start()
    yield stack
    worker.stop()


@pytest.fixture(scope="module")
async def stack(shared_stack: Stack) -> AsyncIterator[Stack]:
    yield shared_stack
    await shared_stack.close()


@pytest.fixture
async def mpq(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.settings) as client:
        yield client


async def direct(stack: Stack, proxy: str, input_: Any, **params: Any) -> dict[str, Any]:
    """What the emulator answers for the same request, called without the queue."""
    body = embeddings_body(input_, MODEL, **params)
    answer = await DataAPI(proxy, stack.config).embeddings(body)
    return {"data": [{"object": "embedding", "index": item.index, "embedding": item.embedding}
                     for item in answer.data],
            "model": answer.model,
            "usage": answer.usage.model_dump() if answer.usage else None}


def batch_lines() -> tuple[list[str], dict[str, dict[str, Any]]]:
    """50 good lines (1-16 inputs, every third asking for base64, half for 256 dimensions,
    two of token ids), with four bad ones at lines 8, 21, 34 and 47."""
    bodies: dict[str, dict[str, Any]] = {}
    for i in range(50):
        body: dict[str, Any] = {"input": [f"text {i}-{j}" for j in range(1 + i * 7 % 16)]}
        if i % 3 == 0:
            body["encoding_format"] = "base64"
        if i % 2 == 0:
            body["dimensions"] = 256
        bodies[f"e-{i}"] = body
    bodies["e-10"]["input"] = [[1, 2, 3], [4, 5]]
    bodies["e-11"]["input"] = [7, 8, 9]
    lines = [json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                         "body": body}) for custom_id, body in bodies.items()]
    bad = {8: {"input": ""}, 21: {"input": ["a", ""]}, 34: {"input": "a", "dimensions": 0},
           47: {"input": "a", "encoding_format": "hex"}}
    for line_no, body in bad.items():
        lines.insert(line_no - 1, json.dumps({"custom_id": f"bad-{line_no}", "method": "POST",
                                              "url": "/v1/embeddings", "body": body}))
    return lines, bodies


async def test_a_batch_of_embeddings_matches_direct_calls(stack: Stack,
                                                          mpq: AsyncClient) -> None:
    proxy = await stack.proxy()
    lines, bodies = batch_lines()
    batch, refused = await mpq.submit_batch(lines, proxy)
    assert [(error.line_no, error.custom_id) for error in refused] == [
        (8, "bad-8"), (21, "bad-21"), (34, "bad-34"), (47, "bad-47")]
    assert [error.reason for error in refused][1:] == [
        '"body.input[1]" must be a non-empty string, not ""',
        '"body.dimensions" must be a positive integer, not 0',
        '"body.encoding_format" must be "float" or "base64", not "hex"']
    done = await batch.wait(timeout=90)
    assert (done.total, done.counts.get(JobStatus.SUCCEEDED), done.invalid) == (50, 50, 4)
    rows = {row["custom_id"]: row async for row in batch.results()}
    assert sorted(rows) == sorted(bodies)
    for custom_id, body in bodies.items():
        answer = rows[custom_id]["response"]["body"]
        params = {k: v for k, v in body.items() if k != "input"}
        assert answer == {"object": "list", **await direct(stack, proxy, body["input"], **params)}
        vector = answer["data"][0]["embedding"]
        base64_asked = body.get("encoding_format") == "base64"
        assert isinstance(vector, str) if base64_asked else isinstance(vector, list)
    errors = [row async for row in batch.errors()]
    assert [row["error"]["line"] for row in errors] == [8, 21, 34, 47]


@pytest.mark.parametrize(("count", "dimensions"), [(1, 1536), (4, 256), (16, 256), (16, 1536)])
async def test_stored_vectors_cost_about_their_float32_bytes(
    stack: Stack, mpq: AsyncClient, count: int, dimensions: int
) -> None:
    proxy = await stack.proxy()
    job = await mpq.embed(proxy, [f"memory {i}" for i in range(count)], dimensions=dimensions)
    record = await job.result(60)
    raw = 4 * dimensions * count
    vectors = await stack.redis.memory_usage(stack.store.keys.job_vectors(job.id), samples=0)
    whole = await stack.redis.memory_usage(stack.store.keys.job(job.id), samples=0)
    print(f"\n{count} x {dimensions}: vectors {vectors} B for {raw} B raw "
          f"({vectors / raw:.3f}), record {whole} B")
    assert vectors <= 1.1 * raw
    stored = await stack.store.load(job.id)
    assert stored is not None
    assert len(json.dumps(stored.result)) < 200  # the record holds no vector
    assert len(await job.embeddings()) == count
    assert record.result is not None
    assert len(record.result["data"][0]["embedding"]) == dimensions


async def test_python_api_returns_each_encoding(stack: Stack, mpq: AsyncClient) -> None:
    proxy = await stack.proxy()
    texts = ["queues", "workers", "vectors"]
    floats = await mpq.embed(proxy, texts)
    encoded = await mpq.embed(proxy, texts, model=MODEL, encoding_format="base64")
    tokens = await mpq.embed(proxy, [[5, 6], [7]], dimensions=8)
    expected = await direct(stack, proxy, texts)
    assert await floats.embeddings(60) == [item["embedding"] for item in expected["data"]]
    expected = await direct(stack, proxy, texts, encoding_format="base64")
    assert await encoded.embeddings(60) == [item["embedding"] for item in expected["data"]]
    record = await tokens.result(60)
    assert record.result == {"object": "list",
                             **await direct(stack, proxy, [[5, 6], [7]], dimensions=8)}
    assert record.usage == record.result["usage"]
    with pytest.raises(ValueError, match="non-empty string"):
        await mpq.embed(proxy, ["a", ""])


def mpq_cli(stack: Stack, *args: str, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPQ_", "REDIS_URL"))}
    env.update(stack.settings.environment())
    return subprocess.run([sys.executable, "-m", "producer.cli", "embed", *args], cwd=REPO,
                          env=env, input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=120, check=False)


async def test_mpq_embed_with_arguments_and_stdin(stack: Stack) -> None:
    proxy = await stack.proxy()
    given = mpq_cli(stack, proxy, "first text", "second text", "--dimensions", "16")
    assert given.returncode == 0, given.stderr
    rows = [json.loads(row) for row in given.stdout.splitlines()]
    expected = await direct(stack, proxy, ["first text", "second text"], dimensions=16)
    assert rows == [{"index": item["index"], "embedding": item["embedding"]}
                    for item in expected["data"]]
    piped = mpq_cli(stack, proxy, "--encoding-format", "base64",
                    stdin="one\r\ntwo\n\nthree\n")
    assert piped.returncode == 0, piped.stderr
    expected = await direct(stack, proxy, ["one", "two", "three"], encoding_format="base64")
    assert [json.loads(row) for row in piped.stdout.splitlines()] == [
        {"index": item["index"], "embedding": item["embedding"]} for item in expected["data"]]
    empty = mpq_cli(stack, proxy, stdin="\n\n")
    assert (empty.returncode, empty.stdout) == (2, "")
    assert "no text" in empty.stderr
    missing = mpq_cli(stack, "no-such-proxy", "text")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


async def test_embeddings_are_retried_after_a_500(stack: Stack) -> None:
    proxy = await stack.proxy()
    stack.faults(proxy, error_500_rate=1.0)
    (job,) = await stack.submit(JobKind.EMBEDDINGS, proxy, {"input": ["again", "and again"]})
    await stack.wait(job.id, until=frozenset({JobStatus.RETRYING}))
    stack.faults(proxy)
    done = await stack.wait(job.id)
    assert done.status == JobStatus.SUCCEEDED, done.errors
    assert done.attempt >= 2
    assert "ServerError" in done.errors[0]
    (blob,) = await stack.store.load_vectors([job.id])
    assert blob is not None
    assert len(blob) == 2 * 4 * NATIVE_DIMENSIONS

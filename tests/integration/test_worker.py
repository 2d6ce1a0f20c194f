"""The worker end to end: real `celery worker` processes, a real Redis-protocol server, the
emulator over HTTP. One shared worker serves most tests; each test has its own proxy."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from polling import until
from stack import Stack

from core.contract import ChunkEntry, JobKind, JobRecord, JobStatus
from core.dispatch import cancel_batch, publish
from core.settings import Settings
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from modelproxy import Config, ModelProxy, ResourceNotExistError
from producer.client import AsyncClient

pytestmark = pytest.mark.timeout(180)

# The emulator's `x-request-id` (emulator/data_routes.py); its `x-acs-request-id` is a UUID.
MODEL_REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")


def assert_answered(record: JobRecord) -> None:
    """A success keeps the upstream's request id, and no error answer."""
    assert MODEL_REQUEST_ID.fullmatch(record.upstream_request_id or ""), record
    assert (record.upstream_status, record.upstream_error) == (None, None)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0.1, update_delay_s=0.1, delete_delay_s=0.1,
                                tpot_s=0.005)
    with EmulatorServer(settings=settings) as server:
        yield server


@pytest.fixture(scope="module")
def shared_stack(any_redis_url: str, emulator: EmulatorServer) -> Iterator[Stack]:
    from workers import WorkerProcess, worker_env

    stack = Stack.create(any_redis_url, emulator.url)
    worker = WorkerProcess(worker_env(stack.settings, emulator.url),
                           _log_dir() / f"shared-{stack.settings.key_prefix[:-1]}.log",
                           "shared")
    worker.start()
    yield stack
    worker.stop()


def _log_dir() -> Any:
    import tempfile
    from pathlib import Path
    path = Path(tempfile.gettempdir()) / "mpq-test-workers"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
async def stack(shared_stack: Stack) -> AsyncIterator[Stack]:
    yield shared_stack
    await shared_stack.close()


async def test_chat_job_end_to_end(stack: Stack) -> None:
    proxy = await stack.proxy()
    job = await stack.chat(proxy)
    done = await stack.wait(job.id)
    assert done.status == JobStatus.SUCCEEDED, done.errors
    direct = await (await ModelProxy.get_by_name_async(proxy, config=stack.config)
                    ).completions_async([{"role": "user", "content": "hello queue"}])
    assert done.result is not None
    assert done.result["choices"][0]["message"]["content"] == direct.text
    assert done.usage == direct.usage.model_dump()  # type: ignore[union-attr]
    assert done.attempt == 1
    assert done.worker
    assert_answered(done)
    assert done.upstream_request_id != direct.request_id  # one id per request


async def test_streamed_chunks_arrive_in_order_with_a_done_entry(stack: Stack) -> None:
    proxy = await stack.proxy()
    job = await stack.chat(proxy, stream=True, max_tokens=30)
    done = await stack.wait(job.id)
    assert done.status == JobStatus.SUCCEEDED, done.errors
    chunks = await stack.chunks(job.id)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert {c.attempt for c in chunks} == {1}
    assert chunks[-1].kind == "done"
    text = "".join(c.payload()["text"] for c in chunks if c.kind == "delta")
    assert done.result is not None
    assert text == done.result["choices"][0]["message"]["content"]
    assert chunks[-1].payload()["usage"] == done.usage
    assert_answered(done)


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_job(stack: Stack, stream: bool) -> None:
    proxy = await stack.proxy()
    job = (await stack.submit(JobKind.RESPONSES, proxy, {"input": "hi", "stream": stream}))[0]
    done = await stack.wait(job.id)
    assert done.status == JobStatus.SUCCEEDED, done.errors
    assert done.result is not None
    assert done.result["status"] == "completed"
    assert done.usage is not None
    assert done.usage["total_tokens"] > 0
    assert_answered(done)


async def test_management_jobs(stack: Stack) -> None:
    name = f"mgmt-{time.monotonic_ns()}"
    spec = {"modelProxyName": name, "proxyConfig": {"endpoints": [{"modelNames": ["m1"]}]}}

    async def run(kind: JobKind, **request: Any) -> Any:
        job = (await stack.submit(kind, name, {"name": name, **request}))[0]
        return await stack.wait(job.id)

    created = await run(JobKind.MGMT_CREATE, input=spec)
    assert created.status == JobStatus.SUCCEEDED, created.errors
    assert created.result["status"] == "CREATING"
    waited = await run(JobKind.MGMT_WAIT, interval_s=0.05, timeout_s=10)
    assert waited.result["status"] == "READY"
    again = await run(JobKind.MGMT_CREATE, input=spec)  # same spec: idempotent success
    assert again.status == JobStatus.SUCCEEDED, again.errors
    other = await run(JobKind.MGMT_CREATE, input={**spec, "description": "different"})
    assert other.status == JobStatus.FAILED
    assert "description" in (other.error or "")
    updated = await run(JobKind.MGMT_UPDATE, input={"description": "new"})
    assert updated.result["description"] == "new"
    await run(JobKind.MGMT_WAIT, interval_s=0.05, timeout_s=10)
    got = await run(JobKind.MGMT_GET)
    assert got.result["description"] == "new"
    listed = await run(JobKind.MGMT_LIST)
    assert name in {p["modelProxyName"] for p in listed.result["items"]}
    deleted = await run(JobKind.MGMT_DELETE)
    assert deleted.result["status"] == "DELETING"
    await until(lambda: _gone(name, stack.config), 10, what=f"proxy {name} to be deleted")
    gone = await run(JobKind.MGMT_DELETE)  # 404 is success
    assert (gone.status, gone.result["status"]) == (JobStatus.SUCCEEDED, "DELETED")
    missing = await run(JobKind.MGMT_GET)
    assert missing.status == JobStatus.FAILED
    assert missing.attempt == 1  # 404 is never retried


async def test_retryable_fault_is_retried_then_succeeds(stack: Stack) -> None:
    proxy = await stack.proxy()
    stack.faults(proxy, error_500_rate=1.0)
    job = await stack.chat(proxy)
    await stack.wait(job.id, until=frozenset({JobStatus.RETRYING}))
    stack.faults(proxy)
    done = await stack.wait(job.id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.attempt >= 2
    assert "ServerError" in done.errors[0]
    assert_answered(done)  # the last attempt's answer, not the 500s before it


SERVICE_UNAVAILABLE = {"message": "service unavailable (injected fault)",
                       "type": "server_error", "param": None, "code": "service_unavailable"}


@pytest.mark.parametrize(
    ("faults", "expected", "status", "upstream_error"),
    [({"error_503_rate": 1.0}, "ServerError", 503, SERVICE_UNAVAILABLE),
     ({"slow_rate": 1.0, "slow_s": 5}, "APITimeoutError", None, None)],
)
async def test_exhausted_attempts_fail_with_the_upstream_message(
    stack: Stack, faults: dict[str, Any], expected: str, status: int | None,
    upstream_error: dict[str, Any] | None,
) -> None:
    """The record keeps the last answer of the upstream, if there was one (no timeout has)."""
    proxy = await stack.proxy()
    stack.faults(proxy, **faults)
    job = await stack.chat(proxy)
    done = await stack.wait(job.id, timeout_s=60)
    assert done.status == JobStatus.FAILED
    assert len(done.errors) == stack.settings.max_attempts
    assert all(expected in error for error in done.errors)
    assert done.error == done.errors[-1]
    assert (done.upstream_status, done.upstream_error) == (status, upstream_error)
    assert (done.upstream_request_id is None) is (status is None)
    assert done.upstream_request_id is None or MODEL_REQUEST_ID.fullmatch(
        done.upstream_request_id)


async def test_bad_request_fails_at_once(stack: Stack) -> None:
    """The upstream's 400 is kept whole: status, OpenAI error object, request id."""
    proxy = await stack.proxy()
    job = await stack.chat(proxy, model="not-served-here")
    done = await stack.wait(job.id)
    assert done.status == JobStatus.FAILED
    assert done.attempt == 1
    assert "BadRequestError" in (done.error or "")
    assert done.upstream_status == 400
    assert done.upstream_error is not None
    assert done.upstream_error["code"] == "model_not_found"
    assert done.upstream_error["type"] == "invalid_request_error"
    assert done.upstream_error["param"] == "model"
    assert "not-served-here" in done.upstream_error["message"]
    assert MODEL_REQUEST_ID.fullmatch(done.upstream_request_id or ""), done


async def test_batch_lines_carry_what_the_upstream_said(stack: Stack) -> None:
    """Through the producer's batch: a success has the upstream's request id, a line the
    upstream refused has its answer (status, error object, request id) and no `error`."""
    proxy = await stack.proxy()
    lines = [json.dumps({"custom_id": custom_id, "method": "POST",
                         "url": "/v1/chat/completions",
                         "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]}})
             for custom_id, model in (("ok", "m1"), ("refused", "nope"))]
    async with AsyncClient(stack.settings) as client:
        batch, invalid = await client.submit_batch(lines, proxy)
        assert not invalid
        await batch.wait(timeout=30, interval_s=0.05)
        results = [line async for line in batch.results()]
        errors = [line async for line in batch.errors()]
    assert [line["custom_id"] for line in results] == ["ok"]
    assert results[0]["response"]["status_code"] == 200
    assert MODEL_REQUEST_ID.fullmatch(results[0]["response"]["request_id"])
    assert [(line["custom_id"], line["error"]) for line in errors] == [("refused", None)]
    response = errors[0]["response"]
    assert response["status_code"] == 400
    assert MODEL_REQUEST_ID.fullmatch(response["request_id"])
    assert response["body"]["error"]["code"] == "model_not_found"


async def test_retry_after_is_honoured_and_the_cooldown_is_shared(stack: Stack) -> None:
    proxy = await stack.proxy()
    stack.faults(proxy, error_429_rate=1.0, retry_after_s=2)
    first = await stack.chat(proxy)
    failed = await stack.wait(first.id, until=frozenset({JobStatus.RETRYING}))
    failed_at = time.time()
    stack.faults(proxy)
    second = await stack.chat(proxy)  # a new job must also wait out the cool-down
    done_first, done_second = await stack.wait(first.id), await stack.wait(second.id)
    assert done_first.status == done_second.status == JobStatus.SUCCEEDED
    assert "RateLimitedError" in failed.errors[0]
    assert done_first.started_at is not None and done_second.finished_at is not None
    assert done_first.started_at >= failed_at + 1.5  # the retry waited for Retry-After
    assert done_second.finished_at >= failed_at + 1.5  # its permit waited out the cool-down
    assert stack.emulator_stats()["by_proxy"][proxy].get("429") == 1


async def test_cut_stream_is_retried_as_a_new_attempt(stack: Stack) -> None:
    proxy = await stack.proxy()
    stack.faults(proxy, cut_stream_rate=1.0, cut_after_chunks=3)
    job = await stack.chat(proxy, stream=True)
    await stack.wait(job.id, until=frozenset({JobStatus.RETRYING}))
    stack.faults(proxy)
    done = await stack.wait(job.id)
    assert done.status == JobStatus.SUCCEEDED
    chunks = await stack.chunks(job.id)
    first = [c for c in chunks if c.attempt == 1]
    final = [c for c in chunks if c.attempt == done.attempt]
    assert first[-1].kind == "error"
    assert final[-1].kind == "done"
    text = "".join(c.payload()["text"] for c in final if c.kind == "delta")
    assert done.result is not None
    assert text == done.result["choices"][0]["message"]["content"]


async def test_cancel_stops_a_running_stream(stack: Stack) -> None:
    proxy = await stack.proxy()
    with stack.emulator_settings(tpot_s=0.05, default_completion_tokens=400):
        job = await stack.chat(proxy, stream=True)
        await stack.wait(job.id, until=frozenset({JobStatus.RUNNING}))
        await until(lambda: stack.chunks(job.id), 10, what="the stream's first chunks")
        assert await stack.store.cancel(job.id)
        cancelled_at = time.monotonic()
        chunks = await until(lambda: _stopped(stack, job.id), 1.2,
                             what="the attempt to stop within a second")
    assert chunks[-1].kind == "delta"  # its `error` came after the cancel: refused
    count = len(chunks)
    await asyncio.sleep(0.5)  # on purpose: nothing more is appended meanwhile
    assert len(await stack.chunks(job.id)) == count
    record = await stack.store.load(job.id)
    assert record is not None
    assert record.status == JobStatus.CANCELLED
    assert time.monotonic() - cancelled_at < 3


ROUND_TRIP_SLACK_S = 0.3  # a cancel's stop may take a round trip or two past one check


async def test_cancel_stops_a_running_stream_within_the_default_check(
    redis_url: str, emulator: EmulatorServer, start_worker: Callable[..., Any]
) -> None:
    """A worker on the default `cancel_check_s` (and lease) stops a stream cancelled from
    the producer API within one check plus a round trip, whatever the phase of its check:
    seven streams are cancelled a third of a check apart (over more than the bound, so a
    slower check cannot pass by a lucky phase), each timed on the Redis clock from just before
    its cancel until its attempt ended (its message acked). Nothing reaches a stream after its
    cancel: the chunk writes of a final job are refused, and a refused write stops the attempt
    at its next chunk; a chunk every 2 s leaves the stop to the cancel check."""
    defaults = {name: Settings.model_fields[name].default for name in ("cancel_check_s",
                                                                       "lease_s")}
    check_s = defaults["cancel_check_s"]
    stack = Stack.create(redis_url, emulator.url, **defaults)
    client = AsyncClient(stack.settings, celery=stack.celery)
    try:
        proxy = await stack.proxy()
        start_worker(stack.settings, emulator.url)
        with stack.emulator_settings(tpot_s=2.0, default_completion_tokens=100):  # ~200 s
            jobs = [await client.chat(proxy, [{"role": "user", "content": f"long {i}"}],
                                      stream=True) for i in range(7)]
            for job in jobs:
                await until(lambda job=job: stack.chunks(job.id), 10,
                            what=f"job {job.id}'s first chunks")
            cancelled_ms, stopped_ms = [], []
            for job in jobs:
                cancelled_ms.append(await _redis_ms(stack))
                assert await job.cancel()
                stopped_ms.append(asyncio.ensure_future(_stopped_at_ms(stack, job.id)))
                await asyncio.sleep(check_s / 3)  # on purpose: the next meets another phase
            ended_ms = await asyncio.gather(*stopped_ms)
        stops_s = []
        for job, at_ms, end_ms in zip(jobs, cancelled_ms, ended_ms, strict=True):
            stops_s.append((end_ms - at_ms) / 1000)
            last_id, _ = (await stack.store.read_chunks(job.id))[-1]
            assert int(last_id.split("-")[0]) <= end_ms
            assert await job.status() == JobStatus.CANCELLED
        print(f"cancel_check_s={check_s}: streams stopped {stops_s} s after the cancel")
        assert max(stops_s) <= check_s + ROUND_TRIP_SLACK_S, stops_s
    finally:
        await client.aclose()
        await stack.close()


async def _redis_ms(stack: Stack) -> int:
    seconds, micros = await stack.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_duplicate_delivery_writes_one_final_state(stack: Stack) -> None:
    proxy = await stack.proxy()
    jobs = await stack.submit(JobKind.CHAT, proxy, {"messages": [
        {"role": "user", "content": "x"}]}, batch_id="dup" + proxy[-8:], count=5)
    await asyncio.to_thread(publish, stack.celery, jobs * 3)  # every job delivered 4 times
    for job in jobs:
        assert (await stack.wait(job.id)).status == JobStatus.SUCCEEDED
    await until(lambda: _no_delivery_left(stack, [j.id for j in jobs]), 10,
                what="the duplicate deliveries to be consumed")
    batch = await stack.store.batch("dup" + proxy[-8:])
    assert batch is not None
    assert batch.counts[JobStatus.SUCCEEDED] == 5
    assert sum(batch.counts.values()) == 5
    events = await stack.store.read_batch_events("dup" + proxy[-8:])
    assert len(events) == 5
    records = [await stack.store.load(j.id) for j in jobs]
    assert all(r is not None and r.attempt == 1 for r in records)


async def test_cancel_a_queued_batch(redis_url: str, emulator: EmulatorServer,
                                     start_worker: Callable[..., Any]) -> None:
    stack = Stack.create(redis_url, emulator.url)
    try:
        proxy = await stack.proxy()
        jobs = await stack.submit(JobKind.CHAT, proxy, {"messages": []}, batch_id="b1",
                                  count=20)
        assert await cancel_batch(stack.store, "b1") == 20
        start_worker(stack.settings, emulator.url)  # starts after the cancel: skips all
        await until(lambda: _no_delivery_left(stack, [j.id for j in jobs]), 10,
                    what="the worker to consume the cancelled jobs' messages")
        batch = await stack.store.batch("b1")
        assert batch is not None
        assert batch.counts[JobStatus.CANCELLED] == 20
        assert batch.status == "finished"
        assert stack.emulator_stats()["by_proxy"].get(proxy) is None  # nothing was called
    finally:
        await stack.close()


async def _gone(name: str, config: Config) -> bool:
    try:
        await ModelProxy.get_by_name_async(name, config=config)
    except ResourceNotExistError:
        return True
    return False


async def _stopped(stack: Stack, job_id: str) -> list[ChunkEntry] | None:
    """The job's chunks once its attempt has ended (no delivery left: tasks ack late)."""
    if not await _no_delivery_left(stack, [job_id]):
        return None
    return await stack.chunks(job_id)


async def _stopped_at_ms(stack: Stack, job_id: str) -> int:
    """When (Redis clock) the job's attempt was seen ended."""
    await until(lambda: _no_delivery_left(stack, [job_id]), 10, 0.01,
                what=f"job {job_id}'s attempt to stop")
    return await _redis_ms(stack)


async def _no_delivery_left(stack: Stack, job_ids: list[str]) -> bool:
    """No message of these jobs is queued or held by a worker (tasks ack late)."""
    messages = await stack.broker_messages()
    return not any(job_id in messages for job_id in job_ids)


def _json(data: str) -> Any:
    return json.loads(data)


def _config(url: str) -> Config:
    return Config(control_endpoint=url, data_endpoint=url)

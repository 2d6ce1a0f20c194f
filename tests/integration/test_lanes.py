"""Priority lanes with real workers: a job without a batch starts before the batch lines
still queued, on the Redis broker and on RabbitMQ, and a requeued batch line stays in its
lane."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from stack import Stack
from test_publish import RABBITMQ_URL, rabbitmq_answers
from workers import WorkerProcess

from core.contract import JobKind, JobRecord, JobStatus
from core.dispatch import INFERENCE_QUEUE, REDIS_PRIORITIES, Lane, enqueue
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings

pytestmark = pytest.mark.timeout(120)

SLOTS = 3
LINES = 12
SLOW_S = 1.0  # every answer of the test's proxy takes this long
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello lanes"}]}


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(settings=EmulatorSettings(create_delay_s=0.05)) as server:
        yield server


@pytest.fixture(params=["redis", "rabbitmq"])
async def stack(request: pytest.FixtureRequest, redis_url: str,
                emulator: EmulatorServer) -> AsyncIterator[Stack]:
    overrides: dict[str, Any] = {}
    if request.param == "rabbitmq":
        if not os.environ.get("CI") and not rabbitmq_answers():
            pytest.skip(f"no RabbitMQ at {RABBITMQ_URL} (it is required when CI is set)")
        # The messages go through RabbitMQ (queue inference.lanes); the records stay on Redis.
        overrides["broker_url"] = RABBITMQ_URL
    created = Stack.create(redis_url, emulator.url, **overrides)
    yield created
    await created.close()


async def running(stack: Stack, records: list[JobRecord], count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        loaded = [await stack.store.load(r.id) for r in records]
        if sum(1 for r in loaded if r is not None and r.started_at is not None) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} jobs started")


async def test_interactive_job_starts_before_the_queued_batch_lines(
    stack: Stack, start_worker: Callable[..., WorkerProcess],
) -> None:
    proxy = await stack.proxy()
    stack.faults(proxy, slow_rate=1.0, slow_s=SLOW_S)
    start_worker(stack.settings, stack.emulator_url, slots=SLOTS, queues=INFERENCE_QUEUE)
    lines = await enqueue(stack.store, stack.celery, [
        JobRecord(kind=JobKind.CHAT, proxy=proxy, request=CHAT, custom_id=f"line-{i}")
        for i in range(LINES)], "b-lanes")
    await running(stack, lines, SLOTS)  # every slot holds a batch line

    [single] = await enqueue(stack.store, stack.celery,
                             [JobRecord(kind=JobKind.CHAT, proxy=proxy, request=CHAT)])
    done = await stack.wait(single.id, timeout_s=30)
    assert done.status == JobStatus.SUCCEEDED
    assert done.started_at is not None

    finished = [await stack.wait(r.id, timeout_s=60) for r in lines]
    started = sorted(r.started_at or 0.0 for r in finished)
    # Only the lines already running when it came started before it: it took the first
    # slot that freed up, ahead of the nine lines still queued.
    assert sum(1 for at in started if at < done.started_at) == SLOTS, (started, done)
    assert done.started_at - done.created_at < SLOW_S + 0.8


async def test_a_requeued_batch_line_keeps_its_lane(
    redis_url: str, emulator: EmulatorServer, start_worker: Callable[..., WorkerProcess],
) -> None:
    """A 429 sends the line back through the broker in a message of its own with a
    countdown: the new message has the batch lane's priority, so kombu puts it in that
    lane's list (and a restore of it would too)."""
    stack = Stack.create(redis_url, emulator.url)
    try:
        proxy = await stack.proxy()
        stack.faults(proxy, error_429_rate=1.0, retry_after_s=3.0)
        start_worker(stack.settings, emulator.url, slots=2)
        [line] = await enqueue(stack.store, stack.celery,
                               [JobRecord(kind=JobKind.CHAT, proxy=proxy, request=CHAT)], "b-rq")
        retry = await retry_message(stack, line.id)
        assert retry["properties"]["priority"] == REDIS_PRIORITIES[Lane.BATCH]
        stack.faults(proxy)
        assert (await stack.wait(line.id, timeout_s=30)).status == JobStatus.SUCCEEDED
    finally:
        await stack.close()


async def retry_message(stack: Stack, job_id: str) -> dict[str, Any]:
    """The first message that runs the job again after a countdown, queued or held by the
    worker (unacked)."""
    keys = stack.store.keys
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        held = [json.loads(v)[0] for v in await stack.redis.hvals(keys.broker_unacked())]
        queued = [json.loads(m) for lane in Lane for m in await stack.redis.lrange(
            keys.broker_queue(INFERENCE_QUEUE, REDIS_PRIORITIES[lane]), 0, -1)]
        for message in (*held, *queued):
            if job_id in message["headers"].get("argsrepr", "") and \
                    message["headers"].get("eta"):
                return dict(message)
        await asyncio.sleep(0.05)
    raise AssertionError("no retry message")

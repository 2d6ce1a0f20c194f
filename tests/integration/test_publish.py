"""Publishing jobs: the pipelined Redis path writes the messages `send_task` would, real
workers run them from the right queues, and other brokers (RabbitMQ) use `send_task`."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from kombu import Connection
from stack import Stack
from workers import WorkerProcess

from core import dispatch
from core.contract import JobKind, JobRecord, JobStatus
from core.dispatch import (
    INFERENCE_QUEUE,
    LINES_TASK,
    MANAGEMENT_QUEUE,
    REDIS_PRIORITIES,
    TASK_NAMES,
    Lane,
    enqueue,
    job_summary,
)
from core.internals.kombu_messages import read_queued
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings

pytestmark = pytest.mark.timeout(180)

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello queue"}]}
# What differs between two messages of the same job: the task id and kombu's delivery tag.
TASK_IDS = (("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id"),
            ("properties", "delivery_tag"))
EVENT_IDS = ("uuid", "root_id", "clock", "timestamp")


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(settings=EmulatorSettings(create_delay_s=0.05)) as server:
        yield server


@pytest.fixture
async def stack(redis_url: str, emulator: EmulatorServer) -> AsyncIterator[Stack]:
    created = Stack.create(redis_url, emulator.url)
    yield created
    await created.close()


def jobs(proxy: str, chats: int) -> list[JobRecord]:
    """``chats`` chat jobs and one management job (a list: it needs no proxy of its own)."""
    records = [JobRecord(kind=JobKind.CHAT, proxy=proxy, request=CHAT, custom_id=f"line-{i}")
               for i in range(chats)]
    return [*records, JobRecord(kind=JobKind.MGMT_LIST, proxy=proxy, request={})]


def forbid(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make one publishing path fail loudly, to prove the other one ran."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{name} must not be used here")
    monkeypatch.setattr(dispatch, name, refuse)


def broker_key(stack: Stack, name: str, lane: Lane = Lane.INTERACTIVE) -> str:
    return stack.store.keys.broker_queue(name, REDIS_PRIORITIES[lane])


def queued(stack: Stack, queue: str, lane: Lane = Lane.INTERACTIVE) -> list[dict[str, Any]]:
    """The messages waiting in a Redis queue's lane, oldest first, decoded by kombu's
    channel."""
    client = redis.Redis.from_url(stack.settings.redis_url or "")
    try:
        raw = client.lrange(broker_key(stack, queue, lane), 0, -1)
    finally:
        client.close()
    return [json.loads(item) for item in reversed(raw)]


def decoded(stack: Stack, envelope: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Body and headers as a worker's kombu channel reads them."""
    with stack.celery.connection_for_read() as connection:
        message = connection.default_channel.message_to_python(json.loads(json.dumps(envelope)))
        return message.decode(), message.headers


def comparable(stack: Stack, envelope: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The message with its body decoded, its job id as "JOB" and without its task id."""
    body, _ = decoded(stack, envelope)
    text = json.dumps({**envelope, "body": body}).replace(job_id, "JOB")
    copy: dict[str, Any] = json.loads(text)
    for outer, inner in TASK_IDS:
        copy[outer].pop(inner)
    return copy


async def wait_all(stack: Stack, records: list[JobRecord], timeout_s: float = 60) -> None:
    for record in records:
        done = await stack.wait(record.id, timeout_s=timeout_s)
        assert done.status == JobStatus.SUCCEEDED, (record.kind, done.errors)
        assert done.attempt == 1


async def test_pipelined_messages_are_routed_summarised_and_run(
    stack: Stack, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    forbid(monkeypatch, "send_each")
    # Jobs that name their batch, a message each (as the orphan sweep sends them).
    records = await enqueue(stack.store, stack.celery, [
        r.model_copy(update={"batch_id": "b1"}) for r in jobs(await stack.proxy(), 200)])

    # Batch lines, all in the batch lane's lists (kombu's key for their priority).
    assert queued(stack, INFERENCE_QUEUE) == queued(stack, MANAGEMENT_QUEUE) == []
    inference = queued(stack, INFERENCE_QUEUE, Lane.BATCH)
    management = queued(stack, MANAGEMENT_QUEUE, Lane.BATCH)
    with stack.celery.producer_or_acquire() as producer:
        assert broker_key(stack, INFERENCE_QUEUE, Lane.BATCH) == stack.settings.key_prefix + \
            "broker:" + producer.channel._q_for_pri(INFERENCE_QUEUE, 9)
    assert [m["headers"]["task"] for m in management] == [TASK_NAMES[JobKind.MGMT_LIST]]
    assert len(inference) == 200
    for record, message in zip(records, [*inference, *management], strict=True):
        body, headers = decoded(stack, message)
        assert body[0] == [record.id]
        assert headers["argsrepr"] == job_summary(record)
        assert message["properties"]["priority"] == REDIS_PRIORITIES[Lane.BATCH]
        assert message["properties"]["delivery_info"]["routing_key"] == (
            MANAGEMENT_QUEUE if record.kind.is_management else INFERENCE_QUEUE)

    start_worker(stack.settings, emulator.url)
    await wait_all(stack, records)
    batch = await stack.store.batch("b1")
    assert batch is not None
    assert batch.status == "finished"


async def test_fed_lines_are_pipelined_summarised_and_run(
    stack: Stack, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A batch submitted whole waits in its flow; the feeder's messages carry several lines
    each, in the batch lane, named in their summary."""
    forbid(monkeypatch, "send_each")
    records = await enqueue(stack.store, stack.celery, jobs(await stack.proxy(), 20)[:-1],
                            "b2")
    assert queued(stack, INFERENCE_QUEUE, Lane.BATCH) == []  # nothing until it is fed
    await stack.store.feed.register_worker("publisher", 100, ttl_s=5)
    fed = await stack.store.feed.take(1000, 8)
    dispatch.publish_lines(stack.celery, fed)
    messages = queued(stack, INFERENCE_QUEUE, Lane.BATCH)
    assert [len(m.job_ids) for m in fed] == [8, 8, 4]
    for message, lines in zip(messages, fed, strict=True):
        body, headers = decoded(stack, message)
        assert headers["task"] == LINES_TASK
        assert body[0] == [lines.job_ids, "b2", lines.proxy, 1]
        assert headers["argsrepr"] == dispatch.lines_summary(
            "b2", lines.proxy, 1, lines.job_ids, 1.0)
        assert message["properties"]["priority"] == REDIS_PRIORITIES[Lane.BATCH]
    assert [i for m in fed for i in m.job_ids] == [r.id for r in records]
    start_worker(stack.settings, emulator.url)
    await wait_all(stack, records)


@contextlib.contextmanager
def sent_events(stack: Stack) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Collect the task-sent events published on this stack's broker keys."""
    client = redis.Redis.from_url(stack.settings.redis_url or "")
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.psubscribe(f"{stack.settings.key_prefix}broker:/*.celeryev/task.sent")
    assert pubsub.get_message(timeout=2) is not None  # the subscription is confirmed

    def collect() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while len(events) < 2 and time.monotonic() < deadline:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                events.append(json.loads(message["data"]))
        return events

    try:
        yield collect
    finally:
        pubsub.close()
        client.close()


async def test_pipelined_and_send_task_messages_are_the_same(
    stack: Stack, emulator: EmulatorServer, start_worker: Callable[..., WorkerProcess],
) -> None:
    proxy = await stack.proxy()
    fast, slow = (JobRecord(kind=JobKind.CHAT, proxy=proxy, request=CHAT) for _ in range(2))
    await stack.store.create_jobs([fast, slow])
    with sent_events(stack) as collect, stack.celery.producer_or_acquire() as producer:
        dispatch.send_each(stack.celery, producer, [dispatch.message_for(slow)])
        message = dispatch.message_for(fast)
        routes = dispatch.direct_routes(stack.celery, producer, [message.task])
        assert routes is not None
        dispatch.write_pipelined(stack.celery, producer, [message], routes)
        events = collect()

    by_send_task, pipelined = queued(stack, INFERENCE_QUEUE)
    assert decoded(stack, pipelined)[0][0] == [fast.id]
    # What the orphan sweep reads from a queued message, as kombu's channel would.
    for envelope, job in ((pipelined, fast), (by_send_task, slow)):
        read = read_queued(json.dumps(envelope))
        assert read is not None and (read.args, read.eta) == ([job.id], None)
    assert pipelined["headers"]["argsrepr"] == job_summary(fast)
    assert comparable(stack, pipelined, fast.id) == comparable(stack, by_send_task, slow.id)

    assert len(events) == 2
    (slow_event, _), (fast_event, _) = (decoded(stack, event) for event in events)
    assert fast_event["uuid"] == pipelined["headers"]["id"]
    assert fast_event["args"] == job_summary(fast)
    slow_event["args"] = slow_event["args"].replace(slow.id, fast.id)
    assert {k: v for k, v in fast_event.items() if k not in EVENT_IDS} == {
        k: v for k, v in slow_event.items() if k not in EVENT_IDS}

    start_worker(stack.settings, emulator.url)
    await wait_all(stack, [fast, slow])


def rabbitmq_answers() -> bool:
    with contextlib.suppress(Exception), Connection(RABBITMQ_URL, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1)
        return True
    return False


async def test_rabbitmq_broker_uses_send_task(
    redis_url: str, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    if not os.environ.get("CI") and not rabbitmq_answers():
        pytest.skip(f"no RabbitMQ at {RABBITMQ_URL} (it is required when CI is set)")
    # The messages go through RabbitMQ; the records (and the worker's state) stay on Redis.
    stack = Stack.create(redis_url, emulator.url, broker_url=RABBITMQ_URL)
    try:
        forbid(monkeypatch, "write_pipelined")
        start_worker(stack.settings, emulator.url)
        records = await enqueue(stack.store, stack.celery, jobs(await stack.proxy(), 20))
        await wait_all(stack, records)
    finally:
        await stack.close()


def test_a_countdown_message_is_read_with_its_eta(stack: Stack) -> None:
    """A retry's message (send_task with a countdown, as `self.retry` sends it) names its
    job and its ETA: the orphan sweep's floor for requeued messages."""
    eta = datetime.now(UTC) + timedelta(seconds=7)
    stack.celery.send_task(dispatch.TASK_NAMES[JobKind.CHAT], args=["f" * 32], eta=eta)
    [message] = queued(stack, INFERENCE_QUEUE)
    read = read_queued(json.dumps(message))
    assert read is not None and read.args == ["f" * 32]
    assert read.eta is not None and abs((read.eta - eta).total_seconds()) < 0.001
    assert read_queued("not a message") is None
    assert read_queued(json.dumps({"body": "e30=", "headers": {}})) is None

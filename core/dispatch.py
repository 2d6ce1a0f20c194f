"""How jobs reach the workers: task names, queues and routing, and putting jobs on the queue.

Both sides import this: the producer to enqueue, the worker to register its tasks under
these names and to resend a job whose message was lost. It builds no Celery app: callers
pass theirs (core/celery_app.py makes one from settings).

A job's message carries only its id, with a one-line summary that Flower shows as the
task's args, never the request or a secret. On a Redis broker the messages are written in
bulk (core/internals/kombu_messages.py); on any other broker one `send_task` each.

Lanes: a job without a batch (the Python API's single jobs, `mpq chat`, the gateway's direct
calls) is *interactive*; a batch line is *batch*. Every worker takes a waiting interactive
message before any batch one, through the broker's message priorities within one queue
(the order between two queues is not reliable: kombu's Redis channel keeps the queues it
consumes in a set). kombu's Redis transport keeps a queue's messages of each priority step
in a list of their own and takes them lowest number first, so interactive messages go to
the queue's own list (priority 0) and batch lines to its priority-9 list. An AMQP queue
orders by priority, highest first, only when declared with `x-max-priority`, and keeps the
arguments it was first declared with: on such brokers the inference queue is a new one,
`inference.lanes`, and an `inference` queue from an older version is left as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from celery import Celery
from kombu.entity import Queue

from core.contract import JobKind, JobRecord
from core.embeddings import input_count
from core.internals.kombu_messages import Outgoing, direct_routes, write_pipelined
from core.store import JobStore

INFERENCE_QUEUE = "inference"
MANAGEMENT_QUEUE = "management"
QUEUES = (INFERENCE_QUEUE, MANAGEMENT_QUEUE)  # the first is Celery's default queue
REDIS_SCHEMES = frozenset({"redis", "rediss"})


class Lane(StrEnum):
    """Which jobs a worker takes first: interactive ones, then batch lines."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


# A lane's message priority: kombu's Redis transport takes the lowest number first (0 is a
# queue's own list), an AMQP queue with x-max-priority the highest.
REDIS_PRIORITIES: dict[Lane, int] = {Lane.INTERACTIVE: 0, Lane.BATCH: 9}
AMQP_PRIORITIES: dict[Lane, int] = {Lane.INTERACTIVE: 1, Lane.BATCH: 0}
AMQP_MAX_PRIORITY = 1  # RabbitMQ keeps one internal queue per level: two are enough
# Queues that take both lanes, by their name on an AMQP broker (see the module's doc).
AMQP_LANE_QUEUES = {INFERENCE_QUEUE: "inference.lanes"}

TASK_NAMES: dict[JobKind, str] = {
    JobKind.CHAT: "mpq.inference.chat",
    JobKind.RESPONSES: "mpq.inference.responses",
    JobKind.EMBEDDINGS: "mpq.inference.embeddings",
    JobKind.MGMT_CREATE: "mpq.management.create",
    JobKind.MGMT_UPDATE: "mpq.management.update",
    JobKind.MGMT_DELETE: "mpq.management.delete",
    JobKind.MGMT_GET: "mpq.management.get",
    JobKind.MGMT_LIST: "mpq.management.list",
    JobKind.MGMT_REFRESH: "mpq.management.refresh",
    JobKind.MGMT_WAIT: "mpq.management.wait",
}
REFRESH_TASK = "mpq.maintenance.refresh_proxies"

SUMMARY_TEXT_MAX = 40
KWARGSREPR = "{}"
# Records stored and published per round, the first round small: the first jobs start
# after ~35 ms, not after the whole input is stored (0.26 s for 5,000 lines).
ENQUEUE_FIRST_ROUND = 100
ENQUEUE_ROUND = 1_000


def queue_for(kind: JobKind) -> str:
    """Management jobs have their own queue, so people can scale the two apart."""
    return MANAGEMENT_QUEUE if kind.is_management else INFERENCE_QUEUE


def lane_of(record: JobRecord) -> Lane:
    """A batch's lines wait behind every job that has no batch."""
    return Lane.BATCH if record.batch_id else Lane.INTERACTIVE


def is_redis_broker(url: str) -> bool:
    return url.split("://", 1)[0] in REDIS_SCHEMES


def message_priority(lane: Lane, *, redis: bool) -> int:
    return (REDIS_PRIORITIES if redis else AMQP_PRIORITIES)[lane]


def broker_queue_name(queue: str, *, redis: bool) -> str:
    """A queue's name on the broker: on AMQP brokers the inference queue with lanes has a
    name of its own (see the module's doc)."""
    return queue if redis else AMQP_LANE_QUEUES.get(queue, queue)


def broker_queue_names(queues: str, *, redis: bool) -> str:
    """A worker's `-Q` list (comma-separated queue names) as the broker names them."""
    return ",".join(broker_queue_name(q.strip(), redis=redis) for q in queues.split(","))


def declared_queues(*, redis: bool) -> list[Queue]:
    """Celery's `task_queues`. Redis needs no declaration for priorities; an AMQP queue
    with lanes is declared with x-max-priority."""
    return [Queue(name) if redis or name not in AMQP_LANE_QUEUES else
            Queue(broker_queue_name(name, redis=False),
                  queue_arguments={"x-max-priority": AMQP_MAX_PRIORITY})
            for name in QUEUES]


def task_routes(*, redis: bool = True) -> dict[str, dict[str, str]]:
    """Celery's `task_routes`: every task name to its queue."""
    routes = {name: {"queue": broker_queue_name(queue_for(kind), redis=redis)}
              for kind, name in TASK_NAMES.items()}
    routes[REFRESH_TASK] = {"queue": MANAGEMENT_QUEUE}
    return routes


def job_summary(record: JobRecord) -> str:
    """custom_id, proxy, model, inputs (embeddings), batch and job id — never the prompt or
    a secret. The short, telling parts come first: Flower's args column shows only the
    start."""
    parts = []
    if record.custom_id:
        parts.append(f"custom_id={record.custom_id[:SUMMARY_TEXT_MAX]}")
    parts.append(f"proxy={record.proxy}")
    model = record.request.get("model")
    if isinstance(model, str) and model:
        parts.append(f"model={model[:SUMMARY_TEXT_MAX]}")
    if record.kind == JobKind.EMBEDDINGS:
        parts.append(f"inputs={input_count(record.request.get('input'))}")
    if record.batch_id:
        parts.append(f"batch={record.batch_id}")
    else:
        parts.append(f"lane={Lane.INTERACTIVE}")  # a batch= says the other lane
    parts.append(f"job={record.id}")
    return " ".join(parts)


def message_for(record: JobRecord, *, redis: bool = True) -> Outgoing:
    return Outgoing(TASK_NAMES[record.kind], [record.id], job_summary(record), KWARGSREPR,
                    message_priority(lane_of(record), redis=redis))


def publish(celery: Celery, records: Sequence[JobRecord]) -> None:
    """Send one message per job over one producer connection, in its lane: pipelined on
    Redis."""
    if not records:
        return
    with celery.producer_or_acquire() as producer:
        redis = producer.connection.transport.driver_type == "redis"
        messages = [message_for(record, redis=redis) for record in records]
        routes = direct_routes(celery, producer, (m.task for m in messages))
        if routes is None:
            send_each(celery, producer, messages)
        else:
            write_pipelined(celery, producer, messages, routes)


def send_each(celery: Celery, producer: Any, messages: Sequence[Outgoing]) -> None:
    """The general path: `send_task` per job, for any broker."""
    for message in messages:
        celery.send_task(message.task, args=message.args, argsrepr=message.argsrepr,
                         kwargsrepr=message.kwargsrepr, priority=message.priority,
                         producer=producer)


async def enqueue(
    store: JobStore, celery: Celery, records: Sequence[JobRecord], batch_id: str | None = None
) -> list[JobRecord]:
    """Store the records and publish them in rounds: workers start on the first round while
    the others go in (a record always exists before its message).

    A batch cannot finish before the last round is in: with more than one round it is held
    open meanwhile, unless its producer holds it already (`open_batch`, then `seal_batch`
    after the last call). One round is written atomically and needs no hold.
    """
    several_rounds = len(records) > ENQUEUE_FIRST_ROUND
    held = batch_id is not None and several_rounds and await store.hold_batch(batch_id)
    stored: list[JobRecord] = []
    size = ENQUEUE_FIRST_ROUND
    while len(stored) < len(records):
        round_ = await store.create_jobs(records[len(stored):len(stored) + size], batch_id)
        await asyncio.to_thread(publish, celery, round_)
        stored += round_
        size = ENQUEUE_ROUND
    if held:
        assert batch_id is not None  # held only with a batch
        await store.seal_batch(batch_id)
    return stored


async def cancel_batch(store: JobStore, batch_id: str) -> int:
    """Cancel every job of a batch that is not final yet; returns how many were. The batch
    is sealed too: one whose producer died while adding jobs would never finish."""
    ids = await store.batch_job_ids(batch_id)
    results = await asyncio.gather(*(store.cancel(job_id) for job_id in ids))
    await store.seal_batch(batch_id)
    return sum(results)

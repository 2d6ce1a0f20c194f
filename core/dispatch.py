"""How jobs reach the workers: task names, queues and routing, and putting jobs on the queue.

Both sides import this: the producer to enqueue, the worker to register its tasks under
these names and to resend a job whose message was lost. It builds no Celery app: callers
pass theirs (core/celery_app.py makes one from settings).

A job's message carries only its id, with a one-line summary that Flower shows as the
task's args, never the request or a secret. A batch's lines are not published here: the
feeder gives them messages of several lines each (`LINES_TASK`, core/feed.py) as slots
free up. On a Redis broker the messages are written in bulk
(core/internals/kombu_messages.py); on any other broker one `send_task` each.

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
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from celery import Celery
from kombu.entity import Queue

from core.contract import JobKind, JobRecord
from core.embeddings import input_count
from core.feed import FedMessage
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
# Batch lines reach the workers several to a message (core/feed.py), whatever their kind.
LINES_TASK = "mpq.inference.lines"
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
    routes[LINES_TASK] = {"queue": broker_queue_name(INFERENCE_QUEUE, redis=redis)}
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


def lines_summary(batch_id: str, proxy: str, priority: int, job_ids: Sequence[str],
                  share: float | None = None) -> str:
    """A message of batch lines, for Flower: its batch, priority, share of the slots when
    it was sent, proxy and every job id (the orphan sweep finds the jobs a queued message
    names by their ids)."""
    shared = "" if share is None else f" share={share:.0%}"
    return (f"batch={batch_id} priority={priority}{shared} proxy={proxy} "
            f"lines={len(job_ids)} jobs={','.join(job_ids)}")


def lines_message(fed: FedMessage, *, redis: bool = True) -> Outgoing:
    return Outgoing(LINES_TASK, [fed.job_ids, fed.batch_id, fed.proxy, fed.priority],
                    lines_summary(fed.batch_id, fed.proxy, fed.priority, fed.job_ids,
                                  fed.share),
                    KWARGSREPR, message_priority(Lane.BATCH, redis=redis))


def publish(celery: Celery, records: Sequence[JobRecord]) -> None:
    """Send one message per job over one producer connection, in its lane: pipelined on
    Redis."""
    if records:
        publish_messages(celery, lambda redis: [message_for(r, redis=redis) for r in records])


def publish_lines(celery: Celery, fed: Sequence[FedMessage]) -> None:
    """Send the feeder's messages of batch lines, pipelined on Redis."""
    if fed:
        publish_messages(celery, lambda redis: [lines_message(m, redis=redis) for m in fed])


def publish_messages(celery: Celery, build: Callable[[bool], list[Outgoing]]) -> None:
    """Send the messages `build` makes for this broker (is it Redis?) over one producer
    connection."""
    with celery.producer_or_acquire() as producer:
        redis = producer.connection.transport.driver_type == "redis"
        messages = build(redis)
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


def _fed(record: JobRecord, batch_id: str | None) -> bool:
    """Does the feeder give this job its message (an inference line of a batch)?"""
    return batch_id is not None and not JobKind(record.kind).is_management


async def enqueue(
    store: JobStore, celery: Celery, records: Sequence[JobRecord], batch_id: str | None = None
) -> list[JobRecord]:
    """Store the records in rounds. Jobs without a batch are published with each round
    (a record always exists before its message); a batch's lines wait in its flows, and the
    feeder gives them their messages (core/feed.py), from the first round on.

    A batch cannot finish before the last round is in: with more than one round it is held
    open meanwhile, unless its producer holds it already (`open_batch`, then `seal_batch`
    after the last call). One round is written atomically and needs no hold.
    """
    several_rounds = len(records) > ENQUEUE_FIRST_ROUND
    held = batch_id is not None and several_rounds and await store.hold_batch(batch_id)
    stored: list[JobRecord] = []
    size = ENQUEUE_FIRST_ROUND
    while len(stored) < len(records):
        chunk = records[len(stored):len(stored) + size]
        # A batch's inference lines wait for the feeder (core/feed.py); anything else (a
        # management job in a batch, a job without one) is published with its round.
        fed = [r for r in chunk if _fed(r, batch_id)]
        sent = [r for r in chunk if not _fed(r, batch_id)]
        by_id = {r.id: r for r in await store.create_jobs(fed, batch_id, pending=True)} \
            if fed else {}
        if sent:
            published = await store.create_jobs(sent, batch_id)
            await asyncio.to_thread(publish, celery, published)
            by_id.update((r.id, r) for r in published)
        stored += [by_id[r.id] for r in chunk]
        size = ENQUEUE_ROUND
    if held:
        assert batch_id is not None  # held only with a batch
        await store.seal_batch(batch_id)
    return stored


async def cancel_batch(store: JobStore, batch_id: str) -> int:
    """Cancel every job of a batch that is not final yet; returns how many were. Its lines
    still pending end in a few script calls; only those given to the broker (a window's
    worth at most) are cancelled one by one. The batch is sealed too: one whose producer
    died while adding jobs would never finish."""
    cancelled = await store.feed.cancel_pending(batch_id, store.batch_templates())
    fed = await store.feed.in_flight(batch_id)
    results = await asyncio.gather(*(store.cancel(job_id) for job_id in fed))
    await store.seal_batch(batch_id)
    return cancelled + sum(results)

"""How jobs reach the workers: task names, queues and routing, and putting jobs on the queue.

Both sides import this: the producer to enqueue, the worker to register its tasks under
these names and to resend a job whose message was lost. It builds no Celery app: callers
pass theirs (core/celery_app.py makes one from settings).

A job's message carries only its id, with a one-line summary that Flower shows as the
task's args, never the request or a secret. On a Redis broker the messages are written in
bulk (core/internals/kombu_messages.py); on any other broker one `send_task` each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from celery import Celery

from core.contract import JobKind, JobRecord
from core.embeddings import input_count
from core.internals.kombu_messages import Outgoing, direct_routes, write_pipelined
from core.store import JobStore

INFERENCE_QUEUE = "inference"
MANAGEMENT_QUEUE = "management"
QUEUES = (INFERENCE_QUEUE, MANAGEMENT_QUEUE)  # the first is Celery's default queue

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


def task_routes() -> dict[str, dict[str, str]]:
    """Celery's `task_routes`: every task name to its queue."""
    routes = {name: {"queue": queue_for(kind)} for kind, name in TASK_NAMES.items()}
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
    parts.append(f"job={record.id}")
    return " ".join(parts)


def message_for(record: JobRecord) -> Outgoing:
    return Outgoing(TASK_NAMES[record.kind], [record.id], job_summary(record), KWARGSREPR)


def publish(celery: Celery, records: Sequence[JobRecord]) -> None:
    """Send one message per job over one producer connection: pipelined on Redis."""
    if not records:
        return
    messages = [message_for(record) for record in records]
    with celery.producer_or_acquire() as producer:
        routes = direct_routes(celery, producer, (m.task for m in messages))
        if routes is None:
            send_each(celery, producer, messages)
        else:
            write_pipelined(celery, producer, messages, routes)


def send_each(celery: Celery, producer: Any, messages: Sequence[Outgoing]) -> None:
    """The general path: `send_task` per job, for any broker."""
    for message in messages:
        celery.send_task(message.task, args=message.args, argsrepr=message.argsrepr,
                         kwargsrepr=message.kwargsrepr, producer=producer)


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

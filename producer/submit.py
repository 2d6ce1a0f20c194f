"""Putting jobs on the queue: records first (pipelined), then one small message per job
carrying only its id, with a one-line summary that Flower shows as the task's args."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from celery import Celery

from worker.contract import JobRecord
from worker.store import JobStore
from worker.tasks import TASK_NAMES

SUMMARY_TEXT_MAX = 40


def job_summary(record: JobRecord) -> str:
    """Job id, kind, proxy, model, batch and custom_id: never the prompt or a secret."""
    parts = [f"job={record.id}", f"proxy={record.proxy}"]
    model = record.request.get("model")
    if isinstance(model, str) and model:
        parts.append(f"model={model[:SUMMARY_TEXT_MAX]}")
    if record.batch_id:
        parts.append(f"batch={record.batch_id}")
    if record.custom_id:
        parts.append(f"custom_id={record.custom_id[:SUMMARY_TEXT_MAX]}")
    return " ".join(parts)


def publish(celery: Celery, records: Sequence[JobRecord]) -> None:
    """Send one message per job over one producer connection."""
    with celery.producer_or_acquire() as producer:
        for record in records:
            celery.send_task(
                TASK_NAMES[record.kind], args=[record.id], argsrepr=job_summary(record),
                kwargsrepr="{}", producer=producer,
            )


async def enqueue(
    store: JobStore, celery: Celery, records: Sequence[JobRecord], batch_id: str | None = None
) -> list[JobRecord]:
    """Store the records, then publish them (a record always exists before its message)."""
    stored = await store.create_jobs(records, batch_id)
    await asyncio.to_thread(publish, celery, stored)
    return stored


async def cancel_batch(store: JobStore, batch_id: str) -> int:
    """Cancel every job of a batch that is not final yet; returns how many were."""
    ids = await store.batch_job_ids(batch_id)
    results = await asyncio.gather(*(store.cancel(job_id) for job_id in ids))
    return sum(results)

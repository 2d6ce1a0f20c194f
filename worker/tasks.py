"""The Celery tasks: thin shells that run a job on the process's event loop.

Messages carry only the job id (and a summary for Flower via argsrepr), never the
request or a secret. A job that must run again later (retry, rate-limit wait, duplicate
delivery) goes back through the broker with `self.retry`, so Flower shows it as a retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from collections.abc import Sequence
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown
from redis.exceptions import RedisError

from core.contract import JobKind, JobStatus
from core.dispatch import (
    INFERENCE_QUEUE,
    LINES_TASK,
    REFRESH_TASK,
    TASK_NAMES,
    broker_queue_name,
    is_redis_broker,
    lines_message,
)
from core.feed import FedMessage
from modelproxy.portal import run_sync
from worker import feeder, orphans
from worker.app import app
from worker.refresh import refresh_with_lock
from worker.runner import WAITING, Outcome, run_job
from worker.runtime import Runtime, current_runtime, get_runtime

REDIS_RETRY_MAX_S = 10.0
logger = logging.getLogger(__name__)


class JobFailed(Exception):
    """The job ended failed: Flower shows the task as FAILURE with the upstream's message."""


class JobRetry(Exception):
    """This job runs again later (the message says why)."""


def execute(task: Task, job_id: str) -> dict[str, Any]:
    runtime = get_runtime()
    try:
        outcome = run_sync(run_job(runtime, job_id))
    except RedisError as exc:
        # The store is unreachable: the job's state is unknown here, so it goes back to
        # the broker and the next delivery decides from the record (claims are fenced).
        # Under requeue_max_delay_s like every requeue: the orphan sweep counts on it.
        countdown_s = min(2.0 ** min(task.request.retries, 5), REDIS_RETRY_MAX_S,
                          runtime.settings.requeue_max_delay_s)
        raise task.retry(countdown=countdown_s, max_retries=None,
                         exc=JobRetry(f"job store unavailable: {exc}"),
                         argsrepr=task.request.argsrepr) from exc
    if outcome.action == "later":
        countdown_s = min(outcome.delay_s, runtime.settings.requeue_max_delay_s)
        # argsrepr again: a retry is a new message, and Flower should keep the summary.
        raise task.retry(countdown=countdown_s, max_retries=None, exc=JobRetry(outcome.message),
                         argsrepr=task.request.argsrepr)
    if outcome.status == JobStatus.FAILED:
        raise JobFailed(outcome.message)
    return {"job_id": job_id, "status": outcome.status, "error": outcome.message or None}


def _register(kind: JobKind, name: str) -> None:
    def job_task(self: Task, job_id: str) -> dict[str, Any]:
        return execute(self, job_id)

    job_task.__name__ = job_task.__qualname__ = name.rsplit(".", 1)[-1]
    job_task.__doc__ = f"Run one {kind.value} job."
    # throws: an expected failure, logged in one line without a traceback.
    # max_retries=None: `self.retry` is how a job waits (backoff, permits, a busy lease), never
    # a budget (attempts are counted in the job record); Celery's default of 3 would drop the
    # message on the 4th wait and strand the job.
    app.task(name=name, bind=True, throws=(JobFailed,), max_retries=None)(job_task)


for _kind, _name in TASK_NAMES.items():
    _register(_kind, _name)


class LineSlots:
    """The process's slots for batch lines: as many as its pool has threads (`-c`, by
    default `MPQ_WORKER_SLOTS`). The feeder sends a little more than the slots of the live
    processes (core/feed.py); what is ahead waits here, unclaimed."""

    count: int | None = None  # the pool's size, once the worker is ready
    _semaphore: asyncio.Semaphore | None = None

    @classmethod
    def semaphore(cls, rt: Runtime) -> asyncio.Semaphore:
        if cls._semaphore is None:  # made on the process's one event loop
            cls._semaphore = asyncio.Semaphore(cls.count or rt.settings.worker_slots)
        return cls._semaphore


async def _run_line(rt: Runtime, job_id: str) -> Outcome:
    try:
        async with LineSlots.semaphore(rt):
            return await run_job(rt, job_id)
    finally:
        feeder.nudge()  # a slot is free: the feeder may send the next line at once


async def run_lines(rt: Runtime, job_ids: Sequence[str]) -> list[Outcome | BaseException]:
    """The lines of one message, side by side on the loop. Lines that found no permit go
    back to their flow, and their proxy pauses as long as the longest wait (core/feed.py)."""
    outcomes = await asyncio.gather(*(_run_line(rt, job_id) for job_id in job_ids),
                                    return_exceptions=True)
    waiting = [(job_id, o) for job_id, o in zip(job_ids, outcomes, strict=True)
               if isinstance(o, Outcome) and o.status == WAITING]
    if waiting:
        await rt.store.feed.give_back([job_id for job_id, _ in waiting],
                                      max(o.delay_s for _, o in waiting))
    return outcomes


def _decided(job_id: str, result: Outcome | BaseException) -> Outcome:
    """A line that raised: an unreachable job store runs it again later; anything else is
    logged, and the job is left to the orphan sweep, as a single job's task that raised."""
    if isinstance(result, Outcome):
        return result
    if isinstance(result, RedisError):
        return Outcome("later", "store unavailable", REDIS_RETRY_MAX_S)
    logger.error("job %s: unexpected error", job_id, exc_info=result)
    return Outcome("skip", "error")


@app.task(name=LINES_TASK, bind=True, max_retries=None)
def run_batch_lines(self: Task, job_ids: list[str], batch_id: str, proxy: str,
                    priority: int) -> dict[str, Any]:
    """Run a message of batch lines. A line to run again later (a retry's backoff, a busy
    lease, an unreachable job store) gets a message of its own; the others are done."""
    runtime = get_runtime()
    try:
        outcomes = run_sync(run_lines(runtime, job_ids))
    except RedisError as exc:  # giving lines back failed: every line is decided again
        raise self.retry(countdown=min(2.0 ** min(self.request.retries, 5), REDIS_RETRY_MAX_S),
                         exc=JobRetry(f"job store unavailable: {exc}"),
                         argsrepr=self.request.argsrepr) from exc
    statuses: dict[str, int] = {}
    for job_id, result in zip(job_ids, outcomes, strict=True):
        outcome = _decided(job_id, result)
        if outcome.action == "later" and outcome.status != WAITING:
            message = lines_message(FedMessage(batch_id, proxy, priority, None, [job_id]),
                                    redis=is_redis_broker(self.app.conf.broker_url))
            self.app.send_task(
                message.task, args=message.args, argsrepr=message.argsrepr,
                kwargsrepr=message.kwargsrepr, priority=message.priority,
                countdown=min(outcome.delay_s, runtime.settings.requeue_max_delay_s))
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
    return {"batch_id": batch_id, "lines": len(job_ids), "statuses": statuses}


@worker_ready.connect
def _freeze_startup_objects(**_: Any) -> None:
    """Keep Celery's, pydantic's and our start-up objects out of the cyclic GC's full
    collections: they stopped the event loop for 80-110 ms each (stream chunks waited)."""
    gc.collect()
    gc.freeze()


@worker_ready.connect
def _start_orphan_sweeper(**_: Any) -> None:
    """Find jobs whose broker message was lost (see worker/orphans.py)."""
    runtime = get_runtime()
    settings = runtime.settings
    run_sync(orphans.start(runtime, app, settings.orphan_check_s, settings.orphan_grace_s))


@worker_ready.connect
def _start_feeder(sender: Any = None, **_: Any) -> None:
    """Move batch lines into the broker as slots free up (worker/feeder.py); this process
    has as many slots as its pool has threads."""
    runtime = get_runtime()
    controller = getattr(sender, "controller", None)
    LineSlots.count = getattr(controller, "concurrency", None) or runtime.settings.worker_slots
    consumed = set(app.amqp.queues.consume_from)
    if consumed and not consumed & {broker_queue_name(INFERENCE_QUEUE, redis=redis)
                                    for redis in (True, False)}:
        return  # no batch line runs here (e.g. `--queues management`): not in the window
    run_sync(feeder.start(runtime, app, LineSlots.count))


@worker_shutdown.connect
def _flush_metrics(**_: Any) -> None:
    """Write the last second of counts on a graceful stop, and leave the feeder's window."""
    runtime = current_runtime()
    if runtime is not None:
        run_sync(feeder.stop(runtime))
        run_sync(runtime.metrics.aclose())


@app.task(name=REFRESH_TASK)
def refresh_proxies() -> dict[str, Any] | None:
    """Beat: refresh the proxy cache (one runner at a time, by a Redis lock)."""
    runtime = get_runtime()
    lock_ttl_s = max(runtime.settings.refresh_interval_s, 30.0)
    report = run_sync(refresh_with_lock(runtime.redis, runtime.keys, runtime.cache, lock_ttl_s))
    return None if report is None else dataclasses.asdict(report)

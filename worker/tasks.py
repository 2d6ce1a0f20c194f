"""The Celery tasks: thin shells that run a job on the process's event loop.

Messages carry only the job id (and a summary for Flower via argsrepr), never the
request or a secret. A job that must run again later (retry, rate-limit wait, duplicate
delivery) goes back through the broker with `self.retry`, so Flower shows it as a retry.
"""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown
from redis.exceptions import RedisError

from core.contract import JobKind, JobStatus
from core.dispatch import REFRESH_TASK, TASK_NAMES
from modelproxy.portal import run_sync
from worker import orphans
from worker.app import app
from worker.refresh import refresh_with_lock
from worker.runner import run_job
from worker.runtime import current_runtime, get_runtime

REDIS_RETRY_MAX_S = 10.0


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


@worker_shutdown.connect
def _flush_metrics(**_: Any) -> None:
    """Write the last second of counts on a graceful stop."""
    runtime = current_runtime()
    if runtime is not None:
        run_sync(runtime.metrics.aclose())


@app.task(name=REFRESH_TASK)
def refresh_proxies() -> dict[str, Any] | None:
    """Beat: refresh the proxy cache (one runner at a time, by a Redis lock)."""
    runtime = get_runtime()
    lock_ttl_s = max(runtime.settings.refresh_interval_s, 30.0)
    report = run_sync(refresh_with_lock(runtime.redis, runtime.keys, runtime.cache, lock_ttl_s))
    return None if report is None else dataclasses.asdict(report)

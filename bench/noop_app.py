"""A Celery app configured exactly like mpq's (`worker.app.celery_config`), with a task
that does nothing (Celery's own ceiling on this machine) and one that only sleeps (what
Celery's thread pool makes of tasks as long as the upstream's latency), for
`bench.throughput`.

    MPQ_REDIS_URL=… celery -A bench.noop_app worker --pool=threads -c 500

The task takes a job id like mpq's tasks do, so its messages are the same size.
"""

from __future__ import annotations

import time

from celery import Celery

from core.celery_app import celery_config
from core.settings import Settings

NOOP_TASK = "bench.noop"
SLEEP_TASK = "bench.sleep"


def create_noop_app(settings: Settings) -> Celery:
    celery = Celery("mpq-bench-noop")
    celery.conf.update(celery_config(settings))
    celery.task(name=NOOP_TASK)(noop)
    celery.task(name=SLEEP_TASK)(sleep)
    return celery


def noop(job_id: str) -> None:
    """Does nothing: what is left is Celery's own cost per task."""
    del job_id


def sleep(job_id: str, seconds: float) -> None:
    """Holds its thread like an mpq job waiting for its upstream, with no work."""
    del job_id
    time.sleep(seconds)


app = create_noop_app(Settings())

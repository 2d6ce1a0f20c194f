"""A Celery app configured exactly like mpq's (`worker.app.celery_config`), with one task
that does nothing: Celery's own ceiling on this machine, for `bench.throughput`.

    MPQ_REDIS_URL=… celery -A bench.noop_app worker --pool=threads -c 500

The task takes a job id like mpq's tasks do, so its messages are the same size.
"""

from __future__ import annotations

from celery import Celery

from worker.app import celery_config
from worker.settings import Settings

NOOP_TASK = "bench.noop"


def create_noop_app(settings: Settings) -> Celery:
    celery = Celery("mpq-bench-noop")
    celery.conf.update(celery_config(settings))
    celery.task(name=NOOP_TASK)(noop)
    return celery


def noop(job_id: str) -> None:
    """Does nothing: what is left is Celery's own cost per task."""
    del job_id


app = create_noop_app(Settings())

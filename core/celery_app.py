"""Celery's configuration, generated from `Settings` (the only place Celery is configured).

`create_app` builds an app when called and registers no task: the producer sends tasks by
name, and the worker's app (worker/app.py) loads its task module by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from core.dispatch import (
    QUEUES,
    REFRESH_TASK,
    broker_queue_name,
    broker_queue_names,
    declared_queues,
    is_redis_broker,
    task_routes,
)
from core.keys import Keys
from core.settings import Settings

# How often a worker sweeps for messages a dead worker left unacked (Redis broker).
RESTORE_INTERVAL_S = 5
# kombu's Redis transport with a repair for a broker that goes away.
REDIS_TRANSPORT = "core.internals.redis_broker:Transport"


def broker_transport(url: str) -> str | None:
    """Our transport class for redis:// and rediss:// brokers; None: kombu's choice."""
    return REDIS_TRANSPORT if is_redis_broker(url) else None


def broker_url(settings: Settings) -> str:
    url = settings.broker_url or settings.redis_url
    if not url:
        # Building the app must work without configuration (e.g. `mpq --help`);
        # connecting without it fails with this clear address instead of a default.
        return "redis://mpq-not-configured.invalid:6379/0"
    return url


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    return {
        # Short: a killed worker's jobs come back within a minute. Long-running jobs are
        # protected from double execution by their lease (worker/lease.py).
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": RESTORE_INTERVAL_S,
        "unacked_restore_throttle": 1,
        "global_keyprefix": Keys(settings.key_prefix).broker_prefix(),
    }


def consumed_queues(settings: Settings, queues: str) -> str:
    """A worker's `-Q` (queue names, comma-separated) as this broker names them."""
    return broker_queue_names(queues, redis=is_redis_broker(broker_url(settings)))


def celery_config(settings: Settings) -> dict[str, Any]:
    url = broker_url(settings)
    redis = is_redis_broker(url)
    return {
        "broker_url": url,
        "broker_transport": broker_transport(url),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": broker_transport_options(settings),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # results live in the job store
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "worker_pool": "threads",
        "worker_concurrency": settings.worker_slots,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_queues": declared_queues(redis=redis),
        "task_default_queue": broker_queue_name(QUEUES[0], redis=redis),
        "task_routes": task_routes(redis=redis),
        "beat_schedule": {
            "refresh-proxies": {"task": REFRESH_TASK, "schedule": settings.refresh_interval_s}
        },
    }


def create_app(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """An app for `settings`; ``include`` names task modules a worker imports at start."""
    celery = Celery("mpq", include=list(include))
    # Settings stay out of the app's configuration: workers report it to Flower, and it
    # would carry the Redis URL's password (Celery masks only its own URLs).
    celery.conf.update(celery_config(settings))
    return celery

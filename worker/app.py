"""The Celery app, configured from `Settings` (`celery -A worker.app worker` works)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

from worker.settings import Settings

INFERENCE_QUEUE = "inference"
MANAGEMENT_QUEUE = "management"
# How often a worker sweeps for messages a dead worker left unacked (Redis broker).
RESTORE_INTERVAL_S = 5
# kombu's Redis transport with a repair for a broker that goes away (see worker/broker.py).
REDIS_TRANSPORT = "worker.broker:Transport"


def broker_transport(url: str) -> str | None:
    """Our transport class for redis:// and rediss:// brokers; None: kombu's choice."""
    return REDIS_TRANSPORT if url.split("://", 1)[0] in ("redis", "rediss") else None


def broker_url(settings: Settings) -> str:
    url = settings.broker_url or settings.redis_url
    if not url:
        # Importing the app must work without configuration (e.g. `mpq --help`);
        # connecting without it fails with this clear address instead of a default.
        return "redis://mpq-not-configured.invalid:6379/0"
    return url


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings generated from ours (the only place Celery is configured)."""
    url = broker_url(settings)
    return {
        "broker_url": url,
        "broker_transport": broker_transport(url),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Short: a killed worker's jobs come back within a minute. Long-running jobs
            # are protected from double execution by their lease (worker/lease.py).
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
            "global_keyprefix": f"{settings.key_prefix}broker:",
        },
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
        "task_queues": [Queue(INFERENCE_QUEUE), Queue(MANAGEMENT_QUEUE)],
        "task_default_queue": INFERENCE_QUEUE,
        "task_routes": {
            "mpq.inference.*": {"queue": INFERENCE_QUEUE},
            "mpq.management.*": {"queue": MANAGEMENT_QUEUE},
            "mpq.maintenance.*": {"queue": MANAGEMENT_QUEUE},
        },
        "beat_schedule": {
            "refresh-proxies": {
                "task": "mpq.maintenance.refresh_proxies",
                "schedule": settings.refresh_interval_s,
            }
        },
    }


def create_app(settings: Settings) -> Celery:
    celery = Celery("mpq")
    celery.conf.update(celery_config(settings))
    celery.conf["mpq_settings"] = settings
    return celery


app = create_app(Settings())

import worker.tasks  # noqa: E402, F401 - registers the tasks on `app`

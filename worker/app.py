"""The worker's Celery app (`celery -A worker.app worker` works): configured from the
environment's `Settings`; its tasks are loaded by name when the worker starts."""

from __future__ import annotations

from core.celery_app import create_app
from core.settings import Settings

TASKS_MODULE = "worker.tasks"

app = create_app(Settings(), include=[TASKS_MODULE])

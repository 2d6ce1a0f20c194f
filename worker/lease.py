"""Run attempts under their leases. One keeper per process renews every running lease in
one pipelined round trip per `check_s`, and stops an attempt within `check_s` when its job
was cancelled or another attempt took over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from redis.exceptions import RedisError

from worker.store import JobStore

T = TypeVar("T")
logger = logging.getLogger(__name__)

LeaseKey = tuple[str, int]  # (job id, attempt)


class AttemptStopped(Exception):
    """The job was cancelled or superseded while this attempt ran."""


class LeaseKeeper:
    def __init__(self, store: JobStore, *, lease_s: float, check_s: float) -> None:
        self._store = store
        self._lease_s = lease_s
        self._interval_s = min(check_s, lease_s / 3)
        self._running: dict[LeaseKey, asyncio.Future[Any]] = {}
        self._stopped: set[LeaseKey] = set()
        self._keeper: asyncio.Task[None] | None = None

    async def run(self, job_id: str, attempt: int, work: Coroutine[Any, Any, T]) -> T:
        """Await `work`; raises `AttemptStopped` if the keeper had to stop it."""
        key = (job_id, attempt)
        task = asyncio.ensure_future(work)
        self._running[key] = task
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.ensure_future(self._keep())
        try:
            return await task
        except asyncio.CancelledError:
            if key in self._stopped:
                raise AttemptStopped(job_id) from None
            raise
        finally:
            self._running.pop(key, None)
            self._stopped.discard(key)
            if not task.done():
                task.cancel()

    async def _keep(self) -> None:
        while self._running:
            await asyncio.sleep(self._interval_s)
            keys = list(self._running)
            if not keys:
                continue
            try:
                alive = await self._store.renew_many(keys, self._lease_s)
            except RedisError as exc:
                # Keep working: if Redis stays away past the lease, fenced writes refuse us.
                logger.warning("lease renewal failed: %s", exc)
                continue
            for key, ok in zip(keys, alive, strict=True):
                task = self._running.get(key)
                if not ok and task is not None:
                    self._stopped.add(key)
                    task.cancel()

"""Run attempts under their leases. One keeper per process renews every running lease in
one pipelined round trip every `lease_s / 3`, and stops an attempt when its job was
cancelled (within `check_s`) or another attempt took over (at the next renewal).

Cancels are noticed without touching every lease: each one bumps a counter, which the
keeper reads every `check_s` (one GET, however many jobs run) and renews early when it
moved; a renewal refuses, and so stops, the attempts whose job is no longer theirs.

What an attempt holds besides its lease (a rate-limit permit's concurrency slot) is renewed
in the same round trip, with a TTL of `hold_ttl_s`: a long call keeps its slot, and the slot
of a dead worker frees soon after its renewals stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from core.store import JobStore

T = TypeVar("T")
logger = logging.getLogger(__name__)

LeaseKey = tuple[str, int]  # (job id, attempt)
# Queues one renewal command on the keeper's pipeline; its reply is true if still held.
Renewal = Callable[[Pipeline], Awaitable[None]]
# A hold outlives a missed renewal or two (they come every lease_s / 3) and a short Redis
# outage, yet frees within two leases once its worker is gone.
HOLD_TTL_LEASES = 2.0


class AttemptStopped(Exception):
    """The job was cancelled or superseded while this attempt ran."""


class LeaseKeeper:
    def __init__(self, store: JobStore, *, lease_s: float, check_s: float) -> None:
        self._store = store
        self._lease_s = lease_s
        self._renew_every_s = lease_s / 3
        self._check_s = min(check_s, self._renew_every_s)
        self._renewed_at = 0.0  # time.monotonic() of the last renewal
        self._cancels: int | None = None  # the counter as last read
        self._running: dict[LeaseKey, asyncio.Future[Any]] = {}
        self._holds: dict[LeaseKey, Renewal] = {}
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
            self._holds.pop(key, None)
            self._stopped.discard(key)
            if not task.done():
                task.cancel()

    @property
    def hold_ttl_s(self) -> float:
        """The TTL to give what an attempt holds with `holding`."""
        return self._lease_s * HOLD_TTL_LEASES

    @contextmanager
    def holding(self, job_id: str, attempt: int, renew: Renewal) -> Iterator[None]:
        """Renew what a running attempt holds (one thing, TTL `hold_ttl_s`) together with
        its lease, until the block ends."""
        key = (job_id, attempt)
        self._holds[key] = renew
        try:
            yield
        finally:
            self._holds.pop(key, None)

    async def _keep(self) -> None:
        while self._running:
            await asyncio.sleep(self._check_s)
            try:
                if self._running and await self._renewal_due():
                    await self._renew()
            except RedisError as exc:
                # Keep working: if Redis stays away past the lease, fenced writes refuse us.
                logger.warning("lease renewal failed: %s", exc)

    async def _renewal_due(self) -> bool:
        cancels = await self._store.cancels()
        moved, self._cancels = cancels != self._cancels, cancels
        return moved or time.monotonic() - self._renewed_at >= self._renew_every_s

    async def _renew(self) -> None:
        keys = list(self._running)
        holds = [(key, self._holds[key]) for key in keys if key in self._holds]
        replies = await self._store.renew_many(
            keys, self._lease_s, also=[renew for _, renew in holds]
        )
        self._renewed_at = time.monotonic()
        alive, held = replies[: len(keys)], replies[len(keys) :]
        for (key, renew), ok in zip(holds, held, strict=True):
            # A hold released while its renewal was on the way is not lost, only done.
            if not ok and self._holds.get(key) is renew:
                logger.warning("job %s attempt %d: its hold had expired before renewal", *key)
        for key, ok in zip(keys, alive, strict=True):
            task = self._running.get(key)
            if not ok and task is not None:
                self._stopped.add(key)
                task.cancel()

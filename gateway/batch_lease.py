"""One gateway process at a time works on a batch: it holds the batch's lease, a Redis lock
that expires `LEASE_S` after its last renewal. The holder renews it while it works; when its
process dies the lease runs out and another process's finalizer loop takes the batch over.
Every step is written so that it can be run again from the start after such a takeover."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from core.keys import Keys

logger = logging.getLogger(__name__)

LEASE_S = 15.0
RENEW_S = LEASE_S / 3


def lease_name(batch_id: str) -> str:
    return f"gw-batch-{batch_id}"


async def _renew(lock: Lock, batch_id: str) -> None:
    while True:
        await asyncio.sleep(RENEW_S)
        try:
            await lock.reacquire()
        except LockError:
            # Its work is written to survive this (compare-and-set on the status), but two
            # processes may now write the same files once: say so.
            logger.warning("lost the lease of batch %s while working on it", batch_id)
            return


@contextlib.asynccontextmanager
async def batch_lease(redis: aioredis.Redis, keys: Keys, batch_id: str) -> AsyncIterator[bool]:
    """Hold the batch's lease for the block (True), or not get it: another holds it (False)."""
    lock = Lock(redis, keys.lock(lease_name(batch_id)), timeout=LEASE_S, blocking=False,
                thread_local=False)
    if not await lock.acquire():
        yield False
        return
    renewal = asyncio.create_task(_renew(lock, batch_id))
    try:
        yield True
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        with contextlib.suppress(LockError):
            await lock.release()

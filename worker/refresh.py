"""The beat task's body: refresh the proxy cache, one refresher at a time cluster-wide.

Two beat processes (a failover left running, two workers running the task) would each list
every proxy; the lock makes the second one a no-op. The lock is redis-py's: ``SET key token
NX PX ttl`` to take it, and a compare-and-delete script to release it only while the token
is still ours, so a refresh that outlived its TTL never releases a successor's lock.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from core.keys import Keys
from worker.proxy_cache import ProxyCache, RefreshReport

logger = logging.getLogger(__name__)

REFRESH_LOCK = "refresh"


async def refresh_with_lock(
    redis: Redis, keys: Keys, cache: ProxyCache, lock_ttl_s: float
) -> RefreshReport | None:
    """Run `cache.refresh_all()` under the refresh lock; None when another holds it.

    Pick ``lock_ttl_s`` above the longest refresh: past it, another refresher may start.
    """
    if lock_ttl_s <= 0:
        raise ValueError(f"lock_ttl_s must be positive, got {lock_ttl_s}")
    lock = Lock(
        redis, keys.lock(REFRESH_LOCK), timeout=lock_ttl_s, blocking=False, thread_local=False
    )
    if not await lock.acquire():
        logger.debug("proxy refresh skipped: another refresher holds the lock")
        return None
    started = time.monotonic()
    try:
        report = await cache.refresh_all()
    finally:
        await _release(lock)
    logger.info(
        "proxy refresh: listed=%d ready=%d failed=%d vanished=%d elapsed_s=%.3f",
        report.listed,
        report.ready,
        report.failed,
        report.vanished,
        time.monotonic() - started,
    )
    return report


async def _release(lock: Lock) -> None:
    try:
        await lock.release()
    except LockError:
        # The TTL ran out mid-refresh; the key is gone or another refresher's now.
        logger.warning("proxy refresh outlived its %s s lock", lock.timeout)

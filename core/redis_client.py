"""The asyncio Redis client every mpq process uses: rides out a restart, waits for a free
connection, and pipelines each event-loop iteration's commands."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.internals.autopipeline import AutoPipelineRedis

REDIS_RETRIES = 20  # ~ a minute of backoff: a restarting Redis is waited for, not failed on
DEFAULT_REDIS_CONNECTIONS = 64


def redis_client(
    url: str, max_connections: int = DEFAULT_REDIS_CONNECTIONS, retries: int = REDIS_RETRIES,
    *, decode: bool = True,
) -> aioredis.Redis:
    """A client that rides out a Redis restart (reconnects with backoff), whose pool makes
    callers wait for a connection instead of failing when all are busy, and that sends each
    loop iteration's commands as one pipeline (core/internals/autopipeline.py). Replies are
    text unless `decode` is False (for content that is bytes, cut anywhere)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        decode_responses=decode,
        health_check_interval=10,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.1), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError],
    )
    return AutoPipelineRedis.from_pool(pool)

"""What one worker process shares across its jobs: the Redis client, store, limiter,
proxy cache and ModelProxy config, all used from the process's one event loop."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from modelproxy import Config
from worker.autopipeline import AutoPipelineRedis
from worker.chunks import ChunkSink
from worker.keys import Keys
from worker.lease import LeaseKeeper
from worker.metrics import MetricsRecorder, metrics_key
from worker.proxy_cache import ProxyCache
from worker.ratelimit import RateLimiter
from worker.settings import Settings
from worker.store import JobStore

REDIS_RETRIES = 20  # ~ a minute of backoff: a restarting Redis is waited for, not failed on
DEFAULT_REDIS_CONNECTIONS = 64


class NoRedisConfigured(RuntimeError):
    """Workers need a shared Redis: an embedded one per process would be useless."""


@dataclass
class Runtime:
    settings: Settings
    keys: Keys
    redis: aioredis.Redis
    store: JobStore
    chunks: ChunkSink
    limiter: RateLimiter
    cache: ProxyCache
    config: Config
    worker_name: str
    leases: LeaseKeeper
    metrics: MetricsRecorder


def redis_client(
    url: str, max_connections: int = DEFAULT_REDIS_CONNECTIONS, retries: int = REDIS_RETRIES
) -> aioredis.Redis:
    """A client that rides out a Redis restart (reconnects with backoff), whose pool makes
    callers wait for a connection instead of failing when all are busy, and that sends each
    loop iteration's commands as one pipeline (worker/autopipeline.py)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        decode_responses=True,
        health_check_interval=10,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.1), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError],
    )
    return AutoPipelineRedis.from_pool(pool)


def build_runtime(settings: Settings) -> Runtime:
    if not settings.redis_url:
        raise NoRedisConfigured("set MPQ_REDIS_URL (or REDIS_URL): workers share one Redis")
    keys = Keys(prefix=settings.key_prefix)
    # A slot uses at most one connection at a time; more than ~200 buys nothing on one loop.
    client = redis_client(settings.redis_url, min(settings.worker_slots, 200))
    api_key = settings.modelproxy_api_key
    config = Config(timeout=settings.request_timeout_s,
                    api_key=api_key.get_secret_value() if api_key else None)
    store = JobStore(client, keys, settings.result_ttl_s)
    return Runtime(
        settings=settings,
        keys=keys,
        redis=client,
        store=store,
        chunks=ChunkSink(store, settings.chunk_flush_ms),
        limiter=RateLimiter(client),
        cache=ProxyCache(client, keys, config, settings.proxy_cache_s),
        config=config,
        worker_name=f"{socket.gethostname()}:{os.getpid()}",
        leases=LeaseKeeper(store, lease_s=settings.lease_s, check_s=settings.cancel_check_s),
        metrics=MetricsRecorder(client, metrics_key(keys)),
    )


_lock = threading.Lock()
_runtime: Runtime | None = None


def current_runtime() -> Runtime | None:
    """This process's runtime if a job has built it (for shutdown hooks)."""
    return _runtime


def get_runtime() -> Runtime:
    """This process's runtime, built from the environment on first use."""
    global _runtime  # noqa: PLW0603 - one per process, like the event loop it serves
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(Settings())
        return _runtime

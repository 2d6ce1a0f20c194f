"""What one worker process shares across its jobs: the Redis client, store, limiter,
proxy cache and ModelProxy config, all used from the process's one event loop."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from core.keys import Keys
from core.redis_client import redis_client
from core.settings import Settings
from core.store import JobStore
from modelproxy import Config
from modelproxy.data import DataAPI
from worker.chunks import ChunkSink
from worker.lease import LeaseKeeper
from worker.metrics import MetricsRecorder
from worker.proxy_cache import ProxyCache
from worker.ratelimit import RateLimiter


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
    # One per proxy, its endpoint and auth resolved once (worker/inference.py).
    data_apis: dict[str, DataAPI] = field(default_factory=dict)


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
        metrics=MetricsRecorder(client, keys.metrics(), ttl_s=settings.result_ttl_s),
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

"""A producer's view of one isolated mpq deployment for tests: its own key prefix on a
shared Redis, the emulator, and helpers to submit jobs and wait for them."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis
from celery import Celery

from core.celery_app import create_app
from core.contract import FINAL, ChunkEntry, JobKind, JobRecord, JobStatus
from core.dispatch import enqueue
from core.keys import Keys
from core.redis_client import redis_client
from core.settings import Settings
from core.store import JobStore
from modelproxy import (
    Config,
    ModelProxy,
    ModelProxyCreateInput,
    ProxyConfig,
    ProxyConfigEndpoint,
    ProxyConfigPolicies,
)

FAST = {
    "backoff_base_s": 0.2, "backoff_max_s": 1.0, "max_attempts": 3, "lease_s": 3.0,
    "cancel_check_s": 0.2, "visibility_timeout_s": 10, "request_timeout_s": 3.0,
    "worker_slots": 50, "proxy_cache_s": 30.0, "default_cooldown_s": 0.5,
    "orphan_check_s": 1.0, "orphan_grace_s": 5.0,
}


def unique(prefix: str = "p") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Stack:
    settings: Settings
    emulator_url: str
    redis: aioredis.Redis
    store: JobStore
    celery: Celery
    config: Config
    proxies: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, redis_url: str, emulator_url: str, **overrides: Any) -> Stack:
        settings = Settings(
            redis_url=redis_url, key_prefix=f"mpqtest-{uuid.uuid4().hex[:8]}:",
            **{**FAST, **overrides},
        )
        client = redis_client(redis_url)
        return cls(
            settings=settings, emulator_url=emulator_url, redis=client,
            store=JobStore(client, Keys(settings.key_prefix), settings.result_ttl_s),
            celery=create_app(settings),
            config=Config(control_endpoint=emulator_url, data_endpoint=emulator_url),
        )

    async def close(self) -> None:
        """Delete only this stack's keys (never FLUSHDB: the server may be shared)."""
        async for key in self.redis.scan_iter(match=f"{self.settings.key_prefix}*", count=500):
            await self.redis.unlink(key)
        await self.redis.aclose()

    async def proxy(self, policies: dict[str, Any] | None = None, **fields: Any) -> str:
        name = unique()
        spec = ModelProxyCreateInput(
            model_proxy_name=name,
            proxy_config=ProxyConfig(
                endpoints=[ProxyConfigEndpoint(model_names=["m1"])],
                policies=ProxyConfigPolicies.model_validate(policies or {}),
            ),
            **fields,
        )
        proxy = await ModelProxy.create_async(spec, config=self.config)
        await proxy.wait_until_ready_or_failed_async(interval_seconds=0.05, timeout_seconds=10)
        return name

    def faults(self, proxy: str, **faults: Any) -> None:
        url = f"{self.emulator_url}/_emulator/proxies/{proxy}/faults"
        (httpx.put(url, json=faults) if faults else httpx.delete(url)).raise_for_status()

    async def submit(self, kind: JobKind, proxy: str, request: dict[str, Any],
                     batch_id: str | None = None, count: int = 1) -> list[JobRecord]:
        records = [JobRecord(kind=kind, proxy=proxy, request=request) for _ in range(count)]
        return await enqueue(self.store, self.celery, records, batch_id)

    async def chat(self, proxy: str, **request: Any) -> JobRecord:
        body = {"messages": [{"role": "user", "content": "hello queue"}], **request}
        return (await self.submit(JobKind.CHAT, proxy, body))[0]

    async def wait(self, job_id: str, until: frozenset[JobStatus] = FINAL,
                   timeout_s: float = 30) -> JobRecord:
        deadline = time.monotonic() + timeout_s
        while True:
            record = await self.store.load(job_id)
            if record is not None and record.status in until:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {record and record.status}")
            await asyncio.sleep(0.05)

    async def chunks(self, job_id: str) -> list[ChunkEntry]:
        return [entry for _, entry in await self.store.read_chunks(job_id)]

    async def broker_messages(self) -> str:
        """Every message of this stack's Redis broker, queued or unacked (held by a worker:
        tasks ack late), as text. A job id not in it has no delivery waiting or running."""
        keys = self.store.keys
        raw: list[str | bytes] = list(await self.redis.hvals(keys.broker_unacked()))
        async for key in self.redis.scan_iter(match=f"{keys.broker_prefix()}*"):
            if await self.redis.type(key) in ("list", b"list"):  # the queues
                raw += await self.redis.lrange(key, 0, -1)
        return "\n".join(m.decode() if isinstance(m, bytes) else m for m in raw)

    @contextlib.contextmanager
    def emulator_settings(self, **changes: Any) -> Iterator[None]:
        """Change the emulator's settings for a block (e.g. a long, slow stream)."""
        url = f"{self.emulator_url}/_emulator/settings"
        before = httpx.get(url).json()
        httpx.put(url, json=changes).raise_for_status()
        try:
            yield
        finally:
            httpx.put(url, json={k: before[k] for k in changes}).raise_for_status()

    def emulator_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.emulator_url}/_emulator/stats").json()
        return stats

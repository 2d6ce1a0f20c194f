"""Fixtures for integration tests: real server processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from stack import Stack
from workers import WorkerProcess, worker_env

from core.embedded_redis import redis_server
from core.keys import Keys
from core.redis_client import redis_client
from core.settings import Settings
from core.store import JobStore
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """`REDIS_URL` when set (tests keep to their own key prefix), else an embedded Valkey
    server shared by the whole session."""
    with redis_server(os.environ.get("REDIS_URL") or None) as url:
        yield url


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    """An emulator whose proxies are ready at once; modules that need others define their
    own `emulator`."""
    settings = EmulatorSettings(create_delay_s=0.05, update_delay_s=0.05, delete_delay_s=0.05)
    with EmulatorServer(settings=settings) as server:
        yield server


@pytest.fixture
async def stack(redis_url: str, emulator: EmulatorServer) -> AsyncIterator[Stack]:
    """A producer-side stack (settings with a key prefix of its own, store, Celery app) on the
    test server and the module's `emulator`."""
    stack = Stack.create(redis_url, emulator.url)
    yield stack
    await stack.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An async client of the test server (tests keep to their own key prefix)."""
    redis_client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2)
    yield redis_client
    await redis_client.aclose()


SYSTEM_REDIS_URL = "redis://127.0.0.1:6379/0"
STORE_RETENTION_S = 600


def system_redis_answers() -> bool:
    try:
        client = redis.Redis.from_url(SYSTEM_REDIS_URL, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


@pytest.fixture
async def keys(client: aioredis.Redis) -> AsyncIterator[Keys]:
    """A fresh key prefix on the test server; its keys are deleted afterwards. Modules may
    define their own `keys`."""
    keys = Keys(prefix=f"mpqtest-{uuid.uuid4().hex}:")
    yield keys
    ours = [key async for key in client.scan_iter(match=keys.pattern())]
    if ours:
        await client.delete(*ours)


@pytest.fixture(scope="session", params=["embedded", "system"])
def any_redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The embedded server, and the machine's Redis 7 as a second target: always in CI
    (where it must answer), elsewhere when it happens to run. Tests keep to their prefix."""
    if request.param == "embedded":
        return redis_url
    if not os.environ.get("CI") and not system_redis_answers():
        pytest.skip(f"no Redis at {SYSTEM_REDIS_URL} (it is required when CI is set)")
    return SYSTEM_REDIS_URL


@pytest.fixture
async def store(any_redis_url: str) -> AsyncIterator[JobStore]:
    """A JobStore on the worker's kind of client (auto-pipelined) under its own key prefix,
    on each server; its keys are deleted afterwards. Modules may define their own."""
    keys = Keys(f"mpqtest-{uuid.uuid4().hex[:8]}:")
    client = redis_client(any_redis_url)
    yield JobStore(client, keys, STORE_RETENTION_S)
    async for key in client.scan_iter(match=f"{keys.prefix}*"):
        await client.unlink(key)
    await client.aclose()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes for one test; all are stopped (or killed) at its end."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, modelproxy_url: str, **kwargs: Any) -> WorkerProcess:
        name = f"w{len(started)}"
        worker = WorkerProcess(worker_env(settings, modelproxy_url),
                               tmp_path / f"{name}.log", name, **kwargs)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()

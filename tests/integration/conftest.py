"""Fixtures for integration tests: real server processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from polling import wait_until

from core.contract import JobKind, JobRecord
from core.embedded_redis import redis_server
from core.keys import Keys
from core.redis_client import redis_client
from core.settings import Settings
from core.store import JobStore
from producer.local_stack import stop_processes


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """`REDIS_URL` when set (tests keep to their own key prefix), else an embedded Valkey
    server shared by the whole session."""
    with redis_server(os.environ.get("REDIS_URL") or None) as url:
        yield url


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An async client of the test server (tests keep to their own key prefix)."""
    redis_client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2)
    yield redis_client
    await redis_client.aclose()


SYSTEM_REDIS_URL = "redis://127.0.0.1:6379/0"
STORE_RETENTION_S = 600
STOP_TIMEOUT_S = 20.0  # a worker that does not stop after SIGTERM by then is killed


def system_redis_answers() -> bool:
    try:
        client = redis.Redis.from_url(SYSTEM_REDIS_URL, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


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


async def running(store: JobStore, *job_ids: str, attempt: int = 1,
                  lease_s: float = 600) -> None:
    """Jobs of these ids, each running `attempt` under a live lease, made the way workers
    make them (create, then claim): chunk writes are refused to any other attempt."""
    await store.create_jobs([JobRecord(id=job_id, kind=JobKind.CHAT, proxy="p", request={},
                                       attempt=attempt - 1) for job_id in job_ids])
    for job_id in job_ids:
        claim = await store.claim(job_id, "test-worker", lease_s)
        assert (claim.outcome, claim.attempt) == ("claimed", attempt), claim


class WorkerProcess:
    """A real `celery -A worker.app worker` process with its own environment."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str, slots: int = 50,
                 queues: str = "inference,management") -> None:
        self.env = env
        self.log_path = log_path
        self.name = name
        self.slots = slots
        self.queues = queues
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> WorkerProcess:
        command = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=threads",
            f"--concurrency={self.slots}", "-Q", self.queues, "-n", f"{self.name}@%h",
            "--loglevel=INFO", "--without-gossip", "--without-mingle",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited ({process.returncode}):\n{self.log()}")
            return b" ready." in self.log_path.read_bytes()

        wait_until(ready, timeout_s, 0.1,
                   what=lambda: f"worker {self.name} to start:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_processes([self.process], STOP_TIMEOUT_S)


def worker_env(settings: Settings, modelproxy_url: str) -> dict[str, str]:
    """The environment a worker reads: our settings plus the ModelProxy endpoints."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MPQ_", "AGENTRUN_", "ALIBABA_CLOUD_"))}
    env.pop("REDIS_URL", None)
    env.update(settings.environment())
    env["AGENTRUN_CONTROL_ENDPOINT"] = modelproxy_url
    env["AGENTRUN_DATA_ENDPOINT"] = modelproxy_url
    return env


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

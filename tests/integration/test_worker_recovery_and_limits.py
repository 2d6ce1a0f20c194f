"""Worker drills with their own processes: kill -9 recovery, the shared rate limit across
two workers, and beat refreshing the proxy cache (two beats at once)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import until
from stack import Stack
from workers import worker_env

from core.contract import JobKind, JobStatus
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0, delete_delay_s=0, tpot_s=0.002)
    with EmulatorServer(settings=settings) as server:
        yield server


async def test_kill_9_mid_job_is_run_again_within_a_minute(
    stack: Stack, start_worker: Callable[..., Any]
) -> None:
    proxy = await stack.proxy()
    first = start_worker(stack.settings, stack.emulator_url)
    with stack.emulator_settings(tpot_s=0.05, default_completion_tokens=100):
        jobs = await stack.submit(JobKind.CHAT, proxy, {"messages": [
            {"role": "user", "content": "long"}], "stream": True}, batch_id="crash", count=3)
        for job in jobs:
            await stack.wait(job.id, until=frozenset({JobStatus.RUNNING}))
        first.kill()
        killed_at = time.monotonic()
        start_worker(stack.settings, stack.emulator_url)
        done = [await stack.wait(job.id, timeout_s=60) for job in jobs]
    recovered_s = time.monotonic() - killed_at
    assert all(record.status == JobStatus.SUCCEEDED for record in done)
    assert recovered_s < 60
    for record in done:
        assert record.attempt == 2
        assert record.errors == ["attempt 1: worker lost"]
    batch = await stack.store.batch("crash")
    assert batch is not None
    assert batch.counts[JobStatus.SUCCEEDED] == 3
    assert sum(batch.counts.values()) == 3
    assert len(await stack.store.read_batch_events("crash")) == 3
    print(f"\nkill -9 recovery: 3 jobs finished {recovered_s:.1f} s after the kill")


async def test_two_workers_share_the_proxy_limit_without_429(
    stack: Stack, start_worker: Callable[..., Any]
) -> None:
    tokens_per_s = 150
    proxy = await stack.proxy(policies={"tokenRateLimiter": {"tps": tokens_per_s}})
    for _ in range(2):
        start_worker(stack.settings, stack.emulator_url)
    request = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    started = time.monotonic()
    jobs = await stack.submit(JobKind.CHAT, proxy, request, batch_id="rl", count=60)
    done = [await stack.wait(job.id, timeout_s=120) for job in jobs]
    elapsed_s = time.monotonic() - started
    assert all(record.status == JobStatus.SUCCEEDED for record in done)
    used = sum(record.usage["total_tokens"] for record in done if record.usage)
    rate = used / elapsed_s
    workers = {record.worker for record in done}
    rejected = stack.emulator_stats()["by_proxy"][proxy].get("429", 0)
    print(f"\nshared limit: {used} tokens in {elapsed_s:.1f} s = {rate:.0f} tokens/s "
          f"against {tokens_per_s}/s ({rate / tokens_per_s:.2f}), 429s: {rejected}, "
          f"workers: {len(workers)}")
    assert len(workers) == 2
    assert rejected == 0
    assert rate <= tokens_per_s * 1.1


def beat(stack: Stack, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    env = worker_env(stack.settings, stack.emulator_url)
    env["MPQ_REFRESH_INTERVAL_S"] = "1"
    with (tmp_path / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "producer.cli", "beat", "--loglevel", "INFO"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )


async def test_two_beats_keep_the_proxy_cache_fresh(
    stack: Stack, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    names = [await stack.proxy() for _ in range(3)]
    settings = stack.settings.model_copy(update={"refresh_interval_s": 1.0})
    start_worker(settings, stack.emulator_url)
    beats = [beat(stack, tmp_path, f"beat{i}") for i in range(2)]
    try:
        keys = [f"{stack.settings.key_prefix}proxy:{name}" for name in names]

        async def cached() -> bool:
            return all([await stack.redis.exists(key) for key in keys])

        async def fetched_at() -> float:
            return float(await stack.redis.hget(keys[0], "fetched_at") or 0)

        await until(cached, 30, 0.2, what="beat to fill the proxy cache")
        first = await fetched_at()

        async def refreshed() -> bool:
            return await fetched_at() > first

        await until(refreshed, 10, 0.2, what="a later beat refresh (every 1 s)")
        assert [await stack.redis.hget(key, "status") for key in keys] == ["READY"] * 3
    finally:
        for process in beats:
            process.terminate()
            process.wait(20)

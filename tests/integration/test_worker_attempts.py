"""What `attempt` counts, end to end (real `celery worker`, the emulator over HTTP): a try
that ran, never a wait for a permit; and a proxy that does not exist fails at once, as an
expected failure.

One worker serves the module. Its per-proxy limit is tiny (`requests_per_minute`) and a
permit wait is short, with an even shorter requeue, so a job that finds no permit goes
back to the queue several times before its try."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from polling import until
from stack import Stack, unique
from workers import WorkerProcess, worker_env

from core.contract import JobStatus
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings

pytestmark = pytest.mark.timeout(120)

RPM = 30  # a burst of 3 permits per proxy, then one every 2 s
LIMITS = {"requests_per_minute": RPM, "permit_max_wait_s": 0.1, "requeue_max_delay_s": 0.3}


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0.05, tpot_s=0.001)
    with EmulatorServer(settings=settings) as server:
        yield server


@pytest.fixture(scope="module")
def worker_stack(
    redis_url: str, emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, WorkerProcess]]:
    stack = Stack.create(redis_url, emulator.url, **LIMITS)
    log = Path(tmp_path_factory.mktemp("attempts")) / "worker.log"
    worker = WorkerProcess(worker_env(stack.settings, emulator.url), log, "attempts")
    worker.start()
    yield stack, worker
    worker.stop()


@pytest.fixture(scope="module")
async def stack(worker_stack: tuple[Stack, WorkerProcess]) -> AsyncIterator[Stack]:
    yield worker_stack[0]
    await worker_stack[0].close()


@pytest.fixture
def worker(worker_stack: tuple[Stack, WorkerProcess]) -> WorkerProcess:
    return worker_stack[1]


def _waits(worker: WorkerProcess, job_id: str) -> int:
    """How many times the runner sent the job back to wait for a permit."""
    log = worker.log_path.read_text(errors="replace")
    return len(re.findall(rf"job {job_id} chat attempt \d+ waiting ", log))


async def _drain(stack: Stack, proxy: str) -> None:
    """Use up the proxy's burst, so that its next request waits for a permit."""
    for job in [await stack.chat(proxy) for _ in range(3)]:
        assert (await stack.wait(job.id)).status == JobStatus.SUCCEEDED


async def test_permit_waits_use_no_attempt(stack: Stack, worker: WorkerProcess) -> None:
    """README: a wait for a permit sends the job back "without using an attempt". Five jobs
    at once: three go in the burst, the last gets its permit ~4 s later, after many waits."""
    proxy = await stack.proxy()
    jobs = [await stack.chat(proxy) for _ in range(5)]
    done = [await stack.wait(job.id) for job in jobs]
    assert [d.status for d in done] == [JobStatus.SUCCEEDED] * 5, [d.errors for d in done]
    waits = [_waits(worker, job.id) for job in jobs]
    assert max(waits) >= 3, waits
    assert [(d.attempt, d.errors) for d in done] == [(1, [])] * 5, waits
    assert stack.emulator_stats()["by_proxy"][proxy].get("200") == 5


async def test_the_retry_budget_counts_failed_tries_only(
    stack: Stack, worker: WorkerProcess
) -> None:
    """Every try answers 500, and every try waits for a permit first: the job fails after
    `max_attempts` failed tries, its `attempt` says how many there were, one error each."""
    proxy = await stack.proxy()
    await _drain(stack, proxy)
    stack.faults(proxy, error_500_rate=1.0)
    job = await stack.chat(proxy)
    done = await stack.wait(job.id, timeout_s=60)
    assert done.status == JobStatus.FAILED
    assert _waits(worker, job.id) >= stack.settings.max_attempts
    assert done.attempt == len(done.errors) == stack.settings.max_attempts, done.errors
    assert [e.split(":")[0] for e in done.errors] == [
        f"attempt {n}" for n in range(1, stack.settings.max_attempts + 1)]
    assert stack.emulator_stats()["by_proxy"][proxy].get("500") == stack.settings.max_attempts


async def test_a_missing_proxy_fails_at_once_as_an_expected_failure(
    stack: Stack, worker: WorkerProcess
) -> None:
    name = unique("missing")
    job = await stack.chat(name)
    done = await stack.wait(job.id)
    assert done.status == JobStatus.FAILED
    assert done.attempt == 1
    assert done.errors == [done.error]
    assert done.error == f'attempt 1: ProxyNotFoundError: proxy "{name}" does not exist'
    # No model was asked: nothing of an upstream's answer to keep.
    assert (done.upstream_request_id, done.upstream_status, done.upstream_error) == (
        None, None, None)
    # Celery's line for a task that raised one of its `throws`: FAILURE, no traceback.
    await until(lambda: _lines(worker, "raised expected", f'proxy "{name}" does not exist'),
                10, what=lambda: f"the task's failure in the log:\n{worker.log()}")
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-6000:]
    assert "unexpected error" not in log


async def _lines(worker: WorkerProcess, *parts: str) -> list[str]:
    log = worker.log_path.read_text(errors="replace")
    return [line for line in log.splitlines() if all(p in line for p in parts)]

"""Hard limits of one attempt, end to end: a real worker against emulator faults that run
away (a huge body, an endless stream, a slow drip). Each fails its job on attempt 1 with the
reason, never retried; the worker holds no more than the limit, and the slot frees."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from stack import Stack
from workers import WorkerProcess

from core.contract import JobStatus
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings

pytestmark = pytest.mark.timeout(180)

MIB = 1024 * 1024
HUGE_BODY_BYTES = 200 * MIB
PEAK_RSS_SLACK_MB = 50
DEADLINE_S = 3.0
DRIP_S = 1.0  # under the per-read timeout (3 s in FAST): only the deadline ends a drip
RUNNING = frozenset({JobStatus.RUNNING})


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(settings=EmulatorSettings(create_delay_s=0)) as server:
        yield server


Limited = Callable[..., tuple[Stack, WorkerProcess]]


@pytest.fixture
async def limited(
    redis_url: str, emulator: EmulatorServer, start_worker: Callable[..., WorkerProcess],
) -> AsyncIterator[Limited]:
    """Makes a stack with these settings and starts its own worker."""
    stacks: list[Stack] = []

    def make(**settings: Any) -> tuple[Stack, WorkerProcess]:
        stack = Stack.create(redis_url, emulator.url, **settings)
        stacks.append(stack)
        return stack, start_worker(stack.settings, emulator.url,
                                   slots=stack.settings.worker_slots)

    yield make
    for stack in stacks:
        await stack.close()


def peak_rss_mb(worker: WorkerProcess) -> float:
    """The worker process's peak resident memory so far (VmHWM), in MB."""
    assert worker.process is not None
    with open(f"/proc/{worker.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def failed_once(record: Any, reason: str) -> None:
    """Failed on its first attempt, never retried, with `reason` in its error."""
    assert record.status == JobStatus.FAILED, record
    assert (record.attempt, len(record.errors)) == (1, 1), record.errors
    assert reason in (record.error or ""), record.error


async def test_huge_body_fails_at_once_and_the_worker_memory_stays_flat(
    limited: Limited,
) -> None:
    stack, worker = limited(worker_slots=4)
    proxy = await stack.proxy()
    warm_up = await stack.chat(proxy)  # imports and first-call buffers, before the baseline
    assert (await stack.wait(warm_up.id)).status == JobStatus.SUCCEEDED
    before = peak_rss_mb(worker)
    stack.faults(proxy, huge_body_rate=1.0, huge_body_bytes=HUGE_BODY_BYTES)
    job = await stack.chat(proxy)
    done = await stack.wait(job.id, timeout_s=90)
    after = peak_rss_mb(worker)
    limit = stack.settings.max_response_bytes
    print(f"\nhuge body: {HUGE_BODY_BYTES // MIB} MiB against a {limit // MIB} MiB limit: "
          f"worker peak RSS {before:.1f} -> {after:.1f} MB (+{after - before:.1f})")
    assert after - before < PEAK_RSS_SLACK_MB
    failed_once(done, f"ResponseTooLargeError: response body over the limit of {limit} bytes")
    assert done.result is None


async def test_stream_past_its_bytes_fails_at_once(limited: Limited) -> None:
    stack, _ = limited(max_stream_bytes=MIB)
    proxy = await stack.proxy()
    stack.faults(proxy, huge_body_rate=1.0, huge_body_bytes=8 * MIB)  # one long SSE comment
    job = await stack.chat(proxy, stream=True)
    done = await stack.wait(job.id, timeout_s=30)
    failed_once(done, f"ResponseTooLargeError: stream over the limit of {MIB} bytes")
    chunks = await stack.chunks(job.id)
    assert chunks[-1].kind == "error"
    assert "over the limit" in chunks[-1].payload()["error"]


async def test_endless_stream_fails_at_its_chunk_limit(limited: Limited) -> None:
    stack, _ = limited(max_stream_chunks=200)
    proxy = await stack.proxy()
    stack.faults(proxy, endless_stream_rate=1.0)
    job = await stack.chat(proxy, stream=True)
    done = await stack.wait(job.id, timeout_s=30)
    failed_once(done, "ResponseTooLargeError: stream over the limit of 200 events")
    chunks = await stack.chunks(job.id)
    assert [c.kind for c in chunks[:-1]] == ["delta"] * (len(chunks) - 1)
    assert chunks[-1].kind == "error"
    assert len(chunks) <= 200 + 1  # no more deltas than events, and its error entry


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_drip_ends_at_the_deadline_and_frees_the_slot(
    limited: Limited, stream: bool
) -> None:
    """One chunk (or, not streamed, one space) every second never trips the per-read timeout;
    the attempt's deadline ends it, and an unrelated job queued behind it on the worker's only
    slot runs right after."""
    stack, _ = limited(worker_slots=1, attempt_timeout_s=DEADLINE_S)
    dripping, other = await stack.proxy(), await stack.proxy()
    stack.faults(dripping, drip_rate=1.0, drip_s=DRIP_S)
    slow = await stack.chat(dripping, stream=stream)
    await stack.wait(slow.id, until=RUNNING)
    queued_at = time.time()
    unrelated = await stack.chat(other, stream=stream)
    done_unrelated = await stack.wait(unrelated.id, timeout_s=DEADLINE_S + 15)
    done_slow = await stack.wait(slow.id)
    failed_once(done_slow, f"DeadlineExceededError: attempt still running after {DEADLINE_S:g} s")
    assert done_slow.started_at is not None and done_slow.finished_at is not None
    assert DEADLINE_S <= done_slow.finished_at - done_slow.started_at < DEADLINE_S + 2
    assert done_unrelated.status == JobStatus.SUCCEEDED, done_unrelated.errors
    assert done_unrelated.finished_at is not None
    assert done_unrelated.finished_at < queued_at + DEADLINE_S + 5

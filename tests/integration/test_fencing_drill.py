"""Drill: a worker paused past its lease (SIGSTOP) while it streams, another worker takes
the job over, then the paused one resumes (SIGCONT) as a zombie with a buffered stream.

Real worker processes, the emulator over HTTP. What it checks: the zombie's writes are
refused (chunk appends fenced by attempt and lease, final write fenced by attempt), so the
job's stream holds no entry of the old attempt after the takeover's first one, its final
state is the takeover's (written once), and a consumer's text is the final attempt's.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from polling import until
from stack import Stack, unique
from workers import WorkerProcess

from core.contract import ChunkEntry, JobKind, JobRecord, JobStatus
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from producer.jobs import AsyncJob, StreamEvent, result_text

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

StartWorker = Callable[..., WorkerProcess]
LEASE = {"lease_s": 1.5, "cancel_check_s": 0.2, "visibility_timeout_s": 5,
         "request_timeout_s": 60.0}  # no read timeout while the zombie is stopped
# A long, paced reply (150-300 tokens, 30 ms each): streams are still running when the
# zombie is stopped and when it resumes. Each attempt's reply has its own seed: texts differ.
SLOW_STREAM = {"tpot_s": 0.03, "default_completion_tokens": 300}
ZOMBIE_SEED, TAKEOVER_SEED = 11, 12
BEFORE_STOP = 3  # zombie entries written before it is stopped
BEFORE_RESUME = 5  # takeover entries written before the zombie resumes


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0, update_delay_s=0, delete_delay_s=0)
    with EmulatorServer(settings=settings) as server:
        yield server


async def consume(job: AsyncJob) -> list[StreamEvent]:
    return [event async for event in job.stream()]


def text_after_last_restart(events: Sequence[StreamEvent]) -> str:
    last = max((i for i, e in enumerate(events) if e.kind == "restart"), default=-1)
    return "".join(e.text for e in events[last + 1:] if e.kind == "delta")


async def attempts_written(stack: Stack, job_id: str) -> list[int]:
    return [entry.attempt for entry in await stack.chunks(job_id)]


def owner(workers: Sequence[WorkerProcess], record: JobRecord | None) -> WorkerProcess | None:
    """The worker process whose name (host:pid) the record shows."""
    for worker in workers:
        assert worker.process is not None
        if record is not None and (record.worker or "").endswith(f":{worker.process.pid}"):
            return worker
    return None


def attempt_outcome(worker: WorkerProcess, job_id: str, attempt: int) -> str | None:
    """How the worker's log says its attempt ended (worker/runner.py), if it has."""
    found = re.search(rf"job {job_id} chat attempt {attempt} (\w+) elapsed_s", worker.log())
    return found.group(1) if found else None


async def test_a_resumed_zombie_cannot_write_after_a_takeover(
    redis_url: str, emulator: EmulatorServer, start_worker: StartWorker
) -> None:
    stack = Stack.create(redis_url, emulator.url, **LEASE)
    workers: list[WorkerProcess] = []
    zombie: WorkerProcess | None = None
    try:
        proxy = await stack.proxy()
        workers += [start_worker(stack.settings, emulator.url, slots=4) for _ in range(2)]
        batch_id = unique("zombie")
        with stack.emulator_settings(**SLOW_STREAM, seed=ZOMBIE_SEED):
            [job] = await stack.submit(JobKind.CHAT, proxy, {**CHAT, "stream": True}, batch_id)
            consumer = asyncio.create_task(consume(AsyncJob(stack.store, job.id)))
            await until(lambda: _count(stack, job.id, 1, BEFORE_STOP), 30,
                        what="the first attempt's first entries")
            zombie = owner(workers, await stack.store.load(job.id))
            assert zombie is not None and zombie.process is not None
            zombie.process.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            with stack.emulator_settings(seed=TAKEOVER_SEED):
                await until(lambda: _count(stack, job.id, 2, BEFORE_RESUME), 60,
                            what="another worker to take the job over")
                taken_over_s = time.monotonic() - stopped_at
                zombie.process.send_signal(signal.SIGCONT)
                record = await stack.wait(job.id, timeout_s=60)
            await until(lambda: attempt_outcome(zombie, job.id, 1), 30, what=zombie.log)
            events = await asyncio.wait_for(consumer, timeout=30)
        taker = owner(workers, record)
        final_text = await AsyncJob(stack.store, job.id).final_text()
        written = await stack.chunks(job.id)
        batch_events = await stack.store.read_batch_events(batch_id)
    finally:
        if zombie is not None and zombie.process is not None and zombie.process.poll() is None:
            zombie.process.send_signal(signal.SIGCONT)
        await stack.close()

    # The takeover's state is final, written once; the zombie's final write never won.
    assert (record.status, record.attempt) == (JobStatus.SUCCEEDED, 2), record.errors
    assert taker is not None and taker is not zombie
    assert "worker lost" in record.errors[0]
    assert [(e["status"], e["attempt"]) for _, e in batch_events] == [("succeeded", "2")]
    # Nothing of the zombie's after the takeover's first entry: its writes were refused, and
    # it stopped at the first refusal instead of streaming on to a final write.
    first_of_takeover = next(i for i, e in enumerate(written) if e.attempt == 2)
    late = [(e.attempt, e.seq, e.kind) for e in written[first_of_takeover:] if e.attempt != 2]
    assert not late, f"{len(late)} zombie entries after the takeover, e.g. {late[:3]}"
    assert attempt_outcome(zombie, job.id, 1) == "stopped"
    assert [e.kind for e in written if e.kind != "delta"] == ["done"]
    # The consumer's text is the final attempt's, which differs from the zombie's start.
    zombie_text = _text(e for e in written if e.attempt == 1)
    assert text_after_last_restart(events) == final_text == result_text(record)
    assert not final_text.startswith(zombie_text)
    refused = f"job {job.id} attempt 1: chunk writes refused" in zombie.log()
    print(f"\nzombie drill: stopped {taken_over_s:.1f} s, until the takeover had written "
          f"{BEFORE_RESUME} entries; the zombie wrote {first_of_takeover} entries before the "
          f"takeover and none after (a write refused after resuming: {refused}); the consumer "
          f"saw {len(events)} events and the final attempt's {len(final_text)} characters")


CHAT = {"messages": [{"role": "user", "content": "a long streamed reply, please"}]}


async def _count(stack: Stack, job_id: str, attempt: int, at_least: int) -> bool:
    return (await attempts_written(stack, job_id)).count(attempt) >= at_least


def _text(entries: Iterator[ChunkEntry]) -> str:
    return "".join(str(e.payload()["text"]) for e in entries if e.kind == "delta")


async def test_a_paused_worker_that_nobody_replaced_runs_the_job_again(
    redis_url: str, emulator: EmulatorServer, start_worker: StartWorker
) -> None:
    """The only worker is paused past its lease: on resuming, its refused writes stop the
    attempt, and the job goes back to the queue at once (not after the orphan sweep)."""
    no_sweep = {"orphan_check_s": 600.0, "orphan_grace_s": 600.0}
    stack = Stack.create(redis_url, emulator.url, **LEASE, **no_sweep)
    try:
        proxy = await stack.proxy()
        worker = start_worker(stack.settings, emulator.url, slots=4)
        assert worker.process is not None
        with stack.emulator_settings(**SLOW_STREAM, seed=ZOMBIE_SEED):
            [job] = await stack.submit(JobKind.CHAT, proxy, {**CHAT, "stream": True},
                                       unique("paused"))
            await until(lambda: _count(stack, job.id, 1, BEFORE_STOP), 30,
                        what="the first attempt's first entries")
            worker.process.send_signal(signal.SIGSTOP)
            await asyncio.sleep(LEASE["lease_s"] * 3)  # on purpose: the lease lapses
            worker.process.send_signal(signal.SIGCONT)
            record = await stack.wait(job.id, timeout_s=60)
    finally:
        if worker.process is not None and worker.process.poll() is None:
            worker.process.send_signal(signal.SIGCONT)
        await stack.close()
    assert record.status == JobStatus.SUCCEEDED, record.errors
    outcome = attempt_outcome(worker, job.id, 1)
    # Either the attempt renewed its lapsed lease before its next write and went on, or a
    # refused write stopped it and the job ran again as attempt 2, straight away.
    assert (outcome, record.attempt) in {("succeeded", 1), ("stopped", 2)}, (outcome, record)

"""Failure drills, with real worker processes, a real Redis-protocol server and the emulator:

5. kill -9 one of two workers in the middle of a 2,000-job batch;
6. restart the Redis-protocol server (append-only file on) in the middle of a batch;
7. upstream chaos: 5xx, 429 with Retry-After, slow answers past the timeout, cut streams.

Each checks what the design promises: no job lost, every job final, each final state
written once (one batch event per job), batch counters equal to the job records (read in
one MULTI, so the comparison is exact), and streams whose text after the last `restart`
is the final attempt's text.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from polling import until
from stack import Stack, unique
from workers import WorkerProcess

from core.contract import FINAL, JobKind, JobRecord, JobStatus, decode_hash
from core.dispatch import INFERENCE_QUEUE, MANAGEMENT_QUEUE
from core.embedded_redis import EmbeddedRedis
from core.keys import Keys
from core.redis_client import redis_client
from core.store import JobStore
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from producer.jobs import AsyncJob, StreamEvent, result_text

pytestmark = pytest.mark.slow

StartWorker = Callable[..., WorkerProcess]
CHAT = {"messages": [{"role": "user", "content": "failure drill"}]}
RESPONSES = {"input": "failure drill"}
POLL_S = 0.2


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A fresh emulator per drill: its fault draws and counters start from zero."""
    settings = EmulatorSettings(create_delay_s=0, update_delay_s=0, delete_delay_s=0)
    with EmulatorServer(settings=settings) as server:
        yield server


# -- what every drill checks ----------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Every job's status and worker, and the batch hash, read in one MULTI/EXEC."""

    statuses: dict[str, str]
    workers: dict[str, str]
    batch: dict[str, str]

    def record_counts(self) -> dict[str, int]:
        counted = Counter(self.statuses.values())
        return {status.value: counted.get(status.value, 0) for status in JobStatus}

    def batch_counts(self) -> dict[str, int]:
        return {status.value: int(self.batch.get(status.value, 0)) for status in JobStatus}

    def assert_exact(self) -> None:
        assert "" not in self.statuses.values(), "a job record is missing"
        assert int(self.batch["total"]) == len(self.statuses)
        assert self.batch_counts() == self.record_counts()


async def snapshot(stack: Stack, batch_id: str, job_ids: Sequence[str]) -> Snapshot:
    keys = Keys(stack.settings.key_prefix)
    async with stack.redis.pipeline(transaction=True) as pipe:
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), ["status", "worker"])
        pipe.hgetall(keys.batch(batch_id))
        replies = await pipe.execute()
    fields: list[list[str | None]] = replies[:-1]
    return Snapshot(
        statuses={job_id: f[0] or "" for job_id, f in zip(job_ids, fields, strict=True)},
        workers={job_id: f[1] or "" for job_id, f in zip(job_ids, fields, strict=True)},
        batch=replies[-1],
    )


def assert_alive(workers: Sequence[WorkerProcess]) -> None:
    for worker in workers:
        assert worker.process is not None
        code = worker.process.poll()
        assert code is None, f"worker {worker.name} exited ({code}):\n{worker.log()}"


async def wait_batch_done(stack: Stack, batch_id: str, total: int, timeout_s: float,
                          workers: Sequence[WorkerProcess] = ()) -> float:
    """Wait until every job of the batch is final; returns that moment (monotonic). Fails
    at once if one of `workers` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await stack.store.batch(batch_id)
        if batch is not None and batch.done >= total:
            return time.monotonic()
        assert_alive(workers)
        if time.monotonic() > deadline:
            counts = {s.value: n for s, n in batch.counts.items() if n} if batch else {}
            stuck = await not_final(stack, batch_id)
            raise AssertionError(f"batch {batch_id} of {total} jobs: {counts}; "
                                 f"{len(stuck)} not final, e.g. {stuck[:3]}")
        await asyncio.sleep(POLL_S)


async def not_final(stack: Stack, batch_id: str) -> list[tuple[str, str, int, list[str], bool]]:
    """(id, status, attempt, last error, has a broker message) of the batch's jobs that are
    not final. No broker message: the job is lost, nothing will ever run it again."""
    ids = await stack.store.batch_job_ids(batch_id)
    stuck = [r for r in await stack.store.load_many(ids) if r is not None and r.status not in FINAL]
    queued = await broker_messages(stack)
    return [(r.id, r.status.value, r.attempt, r.errors[-1:], r.id in queued) for r in stuck]


async def broker_messages(stack: Stack) -> str:
    """Every message of the broker (queues, and the unacked ones workers hold), as text."""
    keys = stack.store.keys
    raw = [message for queue in (INFERENCE_QUEUE, MANAGEMENT_QUEUE)
           for message in await stack.redis.lrange(keys.broker_queue(queue), 0, -1)]
    raw += await stack.redis.hvals(keys.broker_unacked())
    return "\n".join(m.decode() if isinstance(m, bytes) else m for m in raw)


async def wait_running(stack: Stack, batch_id: str, count: int, timeout_s: float) -> None:
    async def running() -> bool:
        batch = await stack.store.batch(batch_id)
        return batch is not None and batch.counts.get(JobStatus.RUNNING, 0) >= count

    await until(running, timeout_s, POLL_S / 4, what=f"batch {batch_id}: {count} running")


async def wait_done_at_least(stack: Stack, batch_id: str, count: int, timeout_s: float) -> None:
    async def done() -> bool:
        batch = await stack.store.batch(batch_id)
        return batch is not None and batch.done >= count

    await until(done, timeout_s, POLL_S / 4, what=f"batch {batch_id}: {count} final")


async def final_records(stack: Stack, job_ids: Sequence[str]) -> list[JobRecord]:
    """Every job's record: none lost, every one final."""
    loaded = await stack.store.load_many(job_ids)
    records = [record for record in loaded if record is not None]
    assert len(records) == len(job_ids), f"{len(job_ids) - len(records)} job records lost"
    not_final = Counter(r.status.value for r in records if r.status not in FINAL)
    assert not not_final, f"jobs not final: {dict(not_final)}"
    return records


async def assert_one_event_per_job(
    stack: Stack, batch_id: str, records: Sequence[JobRecord]
) -> None:
    """The batch events stream holds one entry per job: its final state, written once."""
    keys = Keys(stack.settings.key_prefix)
    entries = await stack.redis.xrange(keys.batch_events(batch_id))
    events = [decode_hash(fields or {}) for _, fields in entries or []]
    per_job = Counter(event["job_id"] for event in events)
    twice = {job_id: n for job_id, n in per_job.items() if n > 1}
    assert not twice, f"final state written more than once: {twice}"
    assert set(per_job) == {record.id for record in records}
    by_id = {record.id: record for record in records}
    for event in events:
        record = by_id[event["job_id"]]
        assert (event["status"], int(event["attempt"])) == (record.status.value, record.attempt)


async def assert_batch_exact(
    stack: Stack, batch_id: str, job_ids: Sequence[str]
) -> list[JobRecord]:
    records = await final_records(stack, job_ids)
    (await snapshot(stack, batch_id, job_ids)).assert_exact()
    await assert_one_event_per_job(stack, batch_id, records)
    batch = await stack.store.batch(batch_id)
    assert batch is not None
    assert batch.status == "finished"
    return records


def ran_on(worker: WorkerProcess) -> str:
    """The suffix of the `worker` field of the jobs this process ran (host:pid)."""
    assert worker.process is not None
    return f":{worker.process.pid}"


# -- 5. kill -9 a worker mid-batch ----------------------------------------------------


@pytest.fixture
async def stack(redis_url: str, emulator: EmulatorServer) -> AsyncIterator[Stack]:
    stack = Stack.create(redis_url, emulator.url, worker_slots=100)
    yield stack
    await stack.close()


@pytest.mark.timeout(150)
async def test_kill_9_one_of_two_workers_mid_batch(
    stack: Stack, start_worker: StartWorker
) -> None:
    """2,000 jobs of 1 s each (emulator ttft) on two workers of 100 slots; the second one is
    killed with SIGKILL once a quarter of the batch is final. Its running jobs (leases run
    out after `lease_s`) and its prefetched messages (back after the broker's visibility
    timeout) are run by the survivor: all end succeeded within a minute of the kill.
    A job left queued with no broker message anywhere (see `not_final`) was lost by kombu's
    Redis transport between its BRPOP and its unacked bookkeeping."""
    total = 2000
    batch_id = unique("kill")
    proxy = await stack.proxy()
    survivor = start_worker(stack.settings, stack.emulator_url, slots=100)
    victim = start_worker(stack.settings, stack.emulator_url, slots=100)
    with stack.emulator_settings(ttft_s=1.0):
        started = time.monotonic()
        jobs = await stack.submit(JobKind.CHAT, proxy, CHAT, batch_id=batch_id, count=total)
        ids = [job.id for job in jobs]
        await wait_done_at_least(stack, batch_id, total // 4, timeout_s=60)
        victim.kill()
        killed_at = time.monotonic()
        at_kill = await snapshot(stack, batch_id, ids)
        done_at = await wait_batch_done(stack, batch_id, total, timeout_s=60,
                                        workers=[survivor])
    recovery_s = done_at - killed_at

    at_kill.assert_exact()  # mid-batch, with the dead worker's jobs still `running`
    stranded = {job_id for job_id, status in at_kill.statuses.items()
                if status == JobStatus.RUNNING and at_kill.workers[job_id].endswith(
                    ran_on(victim))}
    records = await assert_batch_exact(stack, batch_id, ids)
    assert all(record.status == JobStatus.SUCCEEDED for record in records)
    by_id = {record.id: record for record in records}
    assert stranded, "the victim was running nothing when it was killed"
    for job_id in stranded:
        record = by_id[job_id]
        assert record.worker is not None and record.worker.endswith(ran_on(survivor))
        assert record.attempt >= 2
        assert "worker lost" in record.errors[0]
    assert recovery_s < 60
    retried = sum(1 for record in records if record.attempt > 1)
    requests = stack.emulator_stats()["by_proxy"][proxy]
    print(f"\nkill -9 drill: {total} jobs, killed after {killed_at - started:.1f} s with "
          f"{at_kill.record_counts()[JobStatus.RUNNING]} running ({len(stranded)} on the "
          f"killed worker); every job final {recovery_s:.1f} s after the kill "
          f"(batch {done_at - started:.1f} s); {retried} jobs ran again; "
          f"upstream answers {requests}")


@pytest.mark.timeout(90)
async def test_lines_of_a_feeder_killed_before_it_published_are_sent_again(
    stack: Stack, start_worker: StartWorker
) -> None:
    """The feeder takes lines out of their flows and then publishes them (core/feed.py). A
    process killed between the two leaves lines in flight with no message: here a take with
    no publish at all. The orphan sweep sends them, and every line runs exactly once."""
    total = 300
    batch_id = unique("feeder")
    proxy = await stack.proxy()
    jobs = await stack.submit(JobKind.CHAT, proxy, CHAT, batch_id=batch_id, count=total)
    await stack.store.feed.register_worker("killed-feeder", 100, ttl_s=2)
    taken = await stack.store.feed.take(1000, 8)
    assert sum(len(message.job_ids) for message in taken) == 125  # 100 slots, a quarter ahead
    worker = start_worker(stack.settings, stack.emulator_url, slots=50)
    await wait_batch_done(stack, batch_id, total, timeout_s=60, workers=[worker])
    records = await assert_batch_exact(stack, batch_id, [job.id for job in jobs])
    assert all(record.status == JobStatus.SUCCEEDED and record.attempt == 1
               for record in records)
    assert stack.emulator_stats()["by_proxy"][proxy] == {"200": total}


# -- 6. restart the Redis-protocol server mid-batch -----------------------------------


@pytest.mark.timeout(150)
async def test_redis_restart_mid_batch(
    emulator: EmulatorServer, start_worker: StartWorker
) -> None:
    """A private Valkey with the append-only file on is restarted (SIGTERM, then started
    again on the same port and data) in the middle of a 500-job batch: the first 80 jobs
    (1 s each) are all running, so the worker holds unacked messages and, with free slots,
    waits on a BRPOP; the other 420 are submitted after the restart by the same producer.
    The worker's broker connection (kombu) and job store (redis-py asyncio with retries) and
    the producer's clients reconnect by themselves; every job succeeds, counters exact."""
    total_before, total_after = 80, 420
    batch_id = unique("restart")
    with EmbeddedRedis(appendonly=True) as server:
        stack = Stack.create(server.url, emulator.url, worker_slots=100)
        worker: WorkerProcess | None = None
        try:
            proxy = await stack.proxy()
            worker = start_worker(stack.settings, stack.emulator_url, slots=100)
            with stack.emulator_settings(ttft_s=1.0):
                started = time.monotonic()
                first = await stack.submit(JobKind.CHAT, proxy, CHAT, batch_id=batch_id,
                                           count=total_before)
                await wait_running(stack, batch_id, total_before, timeout_s=30)
                restart_at = time.monotonic()
                await asyncio.to_thread(server.restart)
                down_s = time.monotonic() - restart_at
                second = await stack.submit(JobKind.CHAT, proxy, CHAT, batch_id=batch_id,
                                            count=total_after)
                ids = [job.id for job in [*first, *second]]
                done_at = await wait_batch_done(stack, batch_id, len(ids), timeout_s=60,
                                                workers=[worker])
            records = await assert_batch_exact(stack, batch_id, ids)
            failed = [r.errors for r in records if r.status != JobStatus.SUCCEEDED]
            assert not failed, failed[:3]
            assert worker.process is not None and worker.process.poll() is None
            retried = sum(1 for record in records if record.attempt > 1)
            log = worker.log_path.read_text(errors="replace")
            acks_failed = log.count("Couldn't ack")
            print(f"\nRedis restart drill: {len(ids)} jobs, server down {down_s:.2f} s; "
                  f"every job final {done_at - restart_at:.1f} s after the restart began "
                  f"(batch {done_at - started:.1f} s); {retried} jobs ran more than once; "
                  f"worker log: {log.count('Connection to broker lost')} broker connection "
                  f"lost, {acks_failed} acks failed")
        finally:
            if worker is not None:
                worker.stop()  # while its broker still answers
            await stack.close()


# -- 7. upstream chaos ------------------------------------------------------------------


CHAOS = {
    "error_500_rate": 0.1, "error_503_rate": 0.1, "error_429_rate": 0.1, "retry_after_s": 0.2,
    "slow_rate": 0.1, "slow_s": 3.0, "cut_stream_rate": 0.1, "cut_after_chunks": 2,
}
CHAOS_ATTEMPTS = 8
# "attempt N: ErrorClass: the upstream's message" (worker/retry.py describe).
UPSTREAM_ERROR = re.compile(
    r"^attempt \d+: (?:"
    r"(?:ServerError|RateLimitedError): HTTP (?:500|503|429) \[\w+\]: (?:internal server error"
    r"|service unavailable|rate limit exceeded) \(injected fault\)"
    r"|(?:APITimeoutError|StreamInterruptedError|APIConnectionError): \S"
    r")"
)


async def consume(store: JobStore, job_id: str) -> list[StreamEvent]:
    return [event async for event in AsyncJob(store, job_id).stream()]


def after_last_restart(events: Sequence[StreamEvent]) -> list[StreamEvent]:
    last = max((i for i, e in enumerate(events) if e.kind == "restart"), default=-1)
    return list(events[last + 1:])


def check_stream(record: JobRecord, events: Sequence[StreamEvent]) -> None:
    """What a consumer saw: attempts never mixed, and after the last restart exactly the
    final attempt, whose text is the result's."""
    assert events, f"job {record.id}: the consumer saw nothing"
    attempts = [e.attempt for e in events if e.kind != "restart"]
    assert attempts == sorted(attempts), f"job {record.id}: attempts mixed {attempts}"
    final = after_last_restart(events)
    if record.status == JobStatus.SUCCEEDED:
        assert {e.attempt for e in final} == {record.attempt}
        assert final[-1].kind == "done"
        text = "".join(e.text for e in final if e.kind == "delta")
        assert text == result_text(record)
        assert text
    else:
        assert events[-1].kind == "error"


@pytest.mark.timeout(180)
async def test_upstream_chaos(
    redis_url: str, emulator: EmulatorServer, start_worker: StartWorker
) -> None:
    """Per request: 10 % HTTP 500, 10 % 503, 10 % 429 with Retry-After 0.2 s, 10 % slow
    answers (3 s before the first byte, past the 1.5 s request timeout) and 10 % of streams
    cut after 2 chunks. A 320-job batch (chat and Responses, half of each streamed) with 8
    attempts and 0.05-0.4 s backoff: every job succeeds, or fails with each attempt's
    upstream error; every stream's consumer ends with exactly the final attempt's text."""
    stack = Stack.create(redis_url, emulator.url, max_attempts=CHAOS_ATTEMPTS,
                         backoff_base_s=0.05, backoff_max_s=0.4, request_timeout_s=1.5,
                         default_cooldown_s=0.2, worker_slots=100)
    reader = redis_client(redis_url, max_connections=200)
    store = JobStore(reader, Keys(stack.settings.key_prefix), stack.settings.result_ttl_s)
    consumers: list[asyncio.Task[list[StreamEvent]]] = []
    try:
        proxy = await stack.proxy()
        stack.faults(proxy, **CHAOS)
        worker = start_worker(stack.settings, stack.emulator_url, slots=100)
        batch_id = unique("chaos")
        with stack.emulator_settings(tpot_s=0.01, default_completion_tokens=12):
            started = time.monotonic()
            plain = [
                *await stack.submit(JobKind.CHAT, proxy, CHAT, batch_id, count=110),
                *await stack.submit(JobKind.RESPONSES, proxy, RESPONSES, batch_id, count=50),
            ]
            streamed = [
                *await stack.submit(JobKind.CHAT, proxy, {**CHAT, "stream": True}, batch_id,
                                    count=110),
                *await stack.submit(JobKind.RESPONSES, proxy, {**RESPONSES, "stream": True},
                                    batch_id, count=50),
            ]
            consumers += [asyncio.create_task(consume(store, job.id)) for job in streamed]
            ids = [job.id for job in [*plain, *streamed]]
            done_at = await wait_batch_done(stack, batch_id, len(ids), timeout_s=90,
                                            workers=[worker])
            seen = await asyncio.wait_for(asyncio.gather(*consumers), timeout=30)
        records = await assert_batch_exact(stack, batch_id, ids)
        by_id = {record.id: record for record in records}
        for job, events in zip(streamed, seen, strict=True):
            check_stream(by_id[job.id], events)
        for record in records:
            assert all(UPSTREAM_ERROR.match(error) for error in record.errors), record.errors
            if record.status == JobStatus.FAILED:
                assert len(record.errors) == CHAOS_ATTEMPTS
                assert record.error == record.errors[-1]
            else:
                assert record.status == JobStatus.SUCCEEDED
                assert len(record.errors) < CHAOS_ATTEMPTS
                assert record.result is not None and result_text(record)
        summary = _chaos_summary(records, stack.emulator_stats()["by_proxy"][proxy])
        print(f"\nchaos drill: {len(ids)} jobs in {done_at - started:.1f} s; {summary}")
    finally:
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await reader.aclose()
        await stack.close()


def _chaos_summary(records: Sequence[JobRecord], answers: dict[str, Any]) -> str:
    outcomes = Counter(record.status.value for record in records)
    failures = Counter(len(record.errors) for record in records)
    kinds = Counter(error.split(":")[1].strip() for r in records for error in r.errors)
    return (f"outcomes {dict(outcomes)}; failed attempts per job {sorted(failures.items())}; "
            f"errors {dict(kinds)}; upstream answers {answers}")

"""The orphan sweep (worker/orphans.py) against a real server: job records written by the
JobStore and its Lua scripts, messages written and taken by a real Celery app and kombu.

Each test works under its own key prefix and deletes only those keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, cast

import pytest
from celery import Celery

from core.celery_app import create_app
from core.contract import JobKind, JobRecord, JobStatus
from core.dispatch import (
    INFERENCE_QUEUE,
    MANAGEMENT_QUEUE,
    REDIS_PRIORITIES,
    TASK_NAMES,
    Lane,
    publish,
)
from core.scripts import PUBLISHED_MS
from core.settings import Settings
from worker.orphans import sweep
from worker.runtime import Runtime, build_runtime

pytestmark = pytest.mark.timeout(60)

GRACE_S = 60.0
LONG_AGO_S = 3600.0  # well past the grace
SLACK_MS = 5_000  # "now" as the sweep saw it, give or take a slow machine
BACKLOG_AGE_S = 3600.0  # how long the queued messages of a steady backlog have waited


@pytest.fixture
def settings(any_redis_url: str) -> Settings:
    return Settings(redis_url=any_redis_url, key_prefix=f"mpqtest-{uuid.uuid4().hex}:")


@pytest.fixture
async def rt(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = build_runtime(settings)
    yield runtime
    async for key in runtime.redis.scan_iter(match=runtime.keys.pattern(), count=500):
        await runtime.redis.unlink(key)
    await runtime.redis.aclose()


@pytest.fixture
def celery(settings: Settings) -> Iterator[Celery]:
    app = create_app(settings)
    yield app
    app.close()


def now_ms() -> int:
    return int(time.time() * 1000)


async def open_job(rt: Runtime, kind: JobKind = JobKind.CHAT,
                   age_s: float | None = LONG_AGO_S) -> JobRecord:
    """A new job in `jobs:open`, last seen ``age_s`` ago (None: just now, as created)."""
    [record] = await rt.store.create_jobs([JobRecord(kind=kind, proxy="p1", request={})])
    if age_s is not None:
        await seen(rt, record.id, age_s)
    return record


async def seen(rt: Runtime, job_id: str, age_s: float) -> None:
    """Set when the job was last seen waiting (its score in `jobs:open`)."""
    await rt.redis.zadd(rt.keys.open_jobs(), {job_id: now_ms() - int(age_s * 1000)})


async def scores(rt: Runtime) -> dict[str, float]:
    pairs = await rt.redis.zrange(rt.keys.open_jobs(), 0, -1, withscores=True)
    return dict(cast(list[tuple[str, float]], pairs))


def broker_key(rt: Runtime, name: str, lane: Lane = Lane.INTERACTIVE) -> str:
    return rt.keys.broker_queue(name, REDIS_PRIORITIES[lane])


async def messages(rt: Runtime, queue: str,
                   lane: Lane = Lane.INTERACTIVE) -> list[tuple[str, list[Any]]]:
    """(task name, args) of each message waiting in a queue's lane, oldest first."""
    raw = await rt.redis.lrange(broker_key(rt, queue, lane), 0, -1)
    found = []
    for item in reversed(raw):
        envelope = json.loads(item)
        assert envelope["properties"]["body_encoding"] == "base64"
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        found.append((envelope["headers"]["task"], args))
    return found


async def sent(celery: Celery, *records: JobRecord) -> None:
    await asyncio.to_thread(publish, celery, records)


async def test_lost_message_is_sent_again(rt: Runtime, celery: Celery) -> None:
    job = await open_job(rt)
    before = now_ms()

    assert await sweep(rt, celery, GRACE_S) == 1

    assert await messages(rt, INFERENCE_QUEUE) == [(TASK_NAMES[JobKind.CHAT], [job.id])]
    assert await messages(rt, MANAGEMENT_QUEUE) == []
    assert (await scores(rt))[job.id] >= before  # seen now: not sent again within the grace
    assert await sweep(rt, celery, GRACE_S) == 0
    assert len(await messages(rt, INFERENCE_QUEUE)) == 1


async def test_management_job_goes_to_its_queue(rt: Runtime, celery: Celery) -> None:
    job = await open_job(rt, JobKind.MGMT_GET)
    await sent(celery, await open_job(rt, age_s=None))  # only its own queue's backlog counts

    assert await sweep(rt, celery, GRACE_S) == 1

    assert await messages(rt, MANAGEMENT_QUEUE) == [(TASK_NAMES[JobKind.MGMT_GET], [job.id])]
    assert len(await messages(rt, INFERENCE_QUEUE)) == 1


async def test_not_sent_while_its_queue_has_messages(rt: Runtime, celery: Celery) -> None:
    job = await open_job(rt)
    other = await open_job(rt, age_s=None)
    await sent(celery, other)

    assert await sweep(rt, celery, GRACE_S) == 0

    assert await messages(rt, INFERENCE_QUEUE) == [(TASK_NAMES[JobKind.CHAT], [other.id])]
    assert (await scores(rt))[job.id] >= now_ms() - SLACK_MS


async def test_not_sent_while_a_consumer_holds_its_message(
    rt: Runtime, celery: Celery
) -> None:
    job = await open_job(rt)
    await sent(celery, job)
    # A worker has taken the message and not acked it yet: kombu keeps it in `unacked`.
    with celery.connection_for_read() as connection:
        message = connection.default_channel.basic_get(queue=INFERENCE_QUEUE)
        assert message is not None
        assert await rt.redis.llen(broker_key(rt, INFERENCE_QUEUE)) == 0
        assert await rt.redis.hlen(broker_key(rt, "unacked")) == 1

        assert await sweep(rt, celery, GRACE_S) == 0

        assert await messages(rt, INFERENCE_QUEUE) == []
        message.ack()


@pytest.mark.parametrize(("lease_s", "orphans"), [(3600.0, 0), (0.001, 1)])
async def test_running_job_is_left_to_its_live_lease(
    rt: Runtime, celery: Celery, lease_s: float, orphans: int
) -> None:
    job = await open_job(rt)
    claim = await rt.store.claim(job.id, "w1", lease_s=lease_s)
    assert claim.outcome == "claimed"
    await asyncio.sleep(0.01)  # a short lease is over

    assert await sweep(rt, celery, GRACE_S) == orphans

    assert len(await messages(rt, INFERENCE_QUEUE)) == orphans
    assert (await scores(rt))[job.id] >= now_ms() - SLACK_MS


@pytest.mark.parametrize(("delay_s", "orphans"), [(3600.0, 0), (0.0, 1)])
async def test_retrying_job_is_left_to_its_backoff(
    rt: Runtime, celery: Celery, delay_s: float, orphans: int
) -> None:
    job = await open_job(rt)
    claim = await rt.store.claim(job.id, "w1", lease_s=3600)
    assert await rt.store.mark_retrying(job.id, claim.attempt, "503", delay_s=delay_s)
    await asyncio.sleep(0.01)  # a backoff of 0 is over

    assert await sweep(rt, celery, GRACE_S) == orphans

    assert len(await messages(rt, INFERENCE_QUEUE)) == orphans
    assert (await scores(rt))[job.id] >= now_ms() - SLACK_MS


async def test_final_and_missing_jobs_leave_the_set(rt: Runtime, celery: Celery) -> None:
    finished, waiting = await open_job(rt), await open_job(rt)
    claim = await rt.store.claim(finished.id, "w1", lease_s=3600)
    assert await rt.store.finish(finished.id, claim.attempt, JobStatus.SUCCEEDED)
    assert finished.id not in await scores(rt)  # finish_job.lua takes it out itself...
    await seen(rt, finished.id, LONG_AGO_S)  # ...but a sweep's bump may race with it
    await seen(rt, "gone", LONG_AGO_S)  # a record that expired, its entry left behind

    assert await sweep(rt, celery, GRACE_S) == 1

    assert list(await scores(rt)) == [waiting.id]
    assert await messages(rt, INFERENCE_QUEUE) == [(TASK_NAMES[JobKind.CHAT], [waiting.id])]


async def test_recently_seen_jobs_are_left_alone(rt: Runtime, celery: Celery) -> None:
    fresh = await open_job(rt, age_s=GRACE_S / 2)
    before = await scores(rt)

    assert await sweep(rt, celery, GRACE_S) == 0

    assert await scores(rt) == before
    assert fresh.id in before
    assert await messages(rt, INFERENCE_QUEUE) == []


async def test_an_unreadable_record_does_not_stop_the_sweep(rt: Runtime,
                                                             celery: Celery) -> None:
    broken = await open_job(rt)
    await rt.redis.hset(rt.keys.job(broken.id), "kind", "from-a-newer-version")
    job = await open_job(rt)

    assert await sweep(rt, celery, GRACE_S) == 1

    assert await messages(rt, INFERENCE_QUEUE) == [(TASK_NAMES[JobKind.CHAT], [job.id])]
    assert broken.id not in await scores(rt)


# --- a steady backlog: the queue is never empty -------------------------------------------


async def waited(rt: Runtime, count: int, age_s: float) -> list[JobRecord]:
    """Jobs created, published and last seen ``age_s`` ago (their messages not sent)."""
    at = time.time() - age_s
    records = await rt.store.create_jobs(
        [JobRecord(kind=JobKind.CHAT, proxy="p1", request={}, created_at=at)
         for _ in range(count)])
    await stamp(rt, records, int(at * 1000))
    await rt.redis.zadd(rt.keys.open_jobs(), {r.id: int(at * 1000) for r in records})
    return records


async def stamp(rt: Runtime, records: Iterable[JobRecord], published_ms: int) -> None:
    """Set when the jobs' newest message was published, as a publish or requeue does."""
    async with rt.redis.pipeline(transaction=False) as pipe:
        for record in records:
            pipe.hset(rt.keys.job(record.id), PUBLISHED_MS, published_ms)
        await pipe.execute()


async def queued_ids(rt: Runtime) -> Counter[str]:
    return Counter(args[0] for _task, args in await messages(rt, INFERENCE_QUEUE))


async def test_lost_message_is_found_behind_a_steady_backlog(
    rt: Runtime, celery: Celery
) -> None:
    """A worker took a message (BRPOP) and died before recording it as unacked, while 1,000
    younger messages wait: the next sweep resends that one and none of the 1,000."""
    [lost] = await waited(rt, 1, BACKLOG_AGE_S + 600)
    await sent(celery, lost)
    backlog = await waited(rt, 1000, BACKLOG_AGE_S)
    await sent(celery, *backlog)
    taken = await rt.redis.rpop(broker_key(rt, INFERENCE_QUEUE))  # the consuming end
    assert lost.id in str(taken)
    before = now_ms()

    assert await sweep(rt, celery, GRACE_S) == 1

    assert await queued_ids(rt) == Counter([lost.id, *(r.id for r in backlog)])
    assert (await messages(rt, INFERENCE_QUEUE))[-1][1] == [lost.id]  # the newest message
    assert int(await rt.redis.hget(rt.keys.job(lost.id), PUBLISHED_MS)) >= before
    # The job left out of the first sweep (LIMIT) is still queued: not resent either.
    assert await sweep(rt, celery, GRACE_S) == 0
    assert len(await messages(rt, INFERENCE_QUEUE)) == 1001


def requeue(celery: Celery, records: Iterable[JobRecord], countdown_s: float) -> None:
    """What a task's `self.retry(countdown=...)` sends: a message with an ETA."""
    for record in records:
        celery.send_task(TASK_NAMES[JobKind.CHAT], args=[record.id], countdown=countdown_s)


async def test_lost_message_is_found_behind_requeued_messages(
    rt: Runtime, celery: Celery
) -> None:
    """The queue holds requeues of jobs created long ago (rate-limit waits): their ETAs, not
    their age, tell how recent they are."""
    [lost] = await waited(rt, 1, 2 * BACKLOG_AGE_S)
    await stamp(rt, [lost], now_ms() - 600_000)  # its last requeue, ten minutes ago
    requeued = await waited(rt, 20, 2 * BACKLOG_AGE_S)
    await stamp(rt, requeued, now_ms())  # as release() stamps before the retry
    await asyncio.to_thread(requeue, celery, requeued, 5.0)

    assert await sweep(rt, celery, GRACE_S) == 1

    assert await queued_ids(rt) == Counter([lost.id, *(r.id for r in requeued)])


async def test_queued_messages_that_tell_nothing_keep_their_jobs_waiting(
    rt: Runtime, celery: Celery
) -> None:
    """The oldest messages name jobs whose records are gone and carry no ETA: no floor is
    known, so nothing is resent from that queue."""
    [job] = await waited(rt, 1, BACKLOG_AGE_S)
    await sent(celery, *(JobRecord(kind=JobKind.CHAT, proxy="p1", request={})
                         for _ in range(3)))  # never stored

    assert await sweep(rt, celery, GRACE_S) == 0

    assert job.id not in await queued_ids(rt)
    assert (await scores(rt))[job.id] >= now_ms() - SLACK_MS


async def batch_lines(rt: Runtime, count: int, age_s: float, batch_id: str) -> list[JobRecord]:
    """Batch lines created ``age_s`` ago and last sent then, seen waiting then."""
    at = time.time() - age_s
    records = await rt.store.create_jobs(
        [JobRecord(kind=JobKind.CHAT, proxy="p1", request={}, created_at=at)
         for _ in range(count)], batch_id)
    await stamp(rt, records, int(at * 1000))
    await rt.redis.zadd(rt.keys.open_jobs(), {r.id: int(at * 1000) for r in records})
    return records


async def test_lost_batch_line_is_found_in_its_lane(rt: Runtime, celery: Celery) -> None:
    """Batch lines wait in their own list: a line whose message was taken and lost is found
    behind younger lines of that list, and sent again into it."""
    [lost] = await batch_lines(rt, 1, BACKLOG_AGE_S + 600, "b-lost")
    await sent(celery, lost)
    backlog = await batch_lines(rt, 20, BACKLOG_AGE_S, "b-lost")
    await sent(celery, *backlog)
    assert await messages(rt, INFERENCE_QUEUE) == []  # nothing in the interactive lane
    taken = await rt.redis.rpop(broker_key(rt, INFERENCE_QUEUE, Lane.BATCH))
    assert lost.id in str(taken)

    assert await sweep(rt, celery, GRACE_S) == 1

    lane = await messages(rt, INFERENCE_QUEUE, Lane.BATCH)
    assert Counter(args[0] for _task, args in lane) == Counter(
        [lost.id, *(r.id for r in backlog)])
    assert lane[-1][1] == [lost.id]  # the newest message of the batch lane
    assert await messages(rt, INFERENCE_QUEUE) == []
    assert await sweep(rt, celery, GRACE_S) == 0


async def test_each_lane_has_its_own_horizon(rt: Runtime, celery: Celery) -> None:
    """Young interactive messages waiting say nothing about the batch lane: a batch line
    with no message there is sent again; an interactive job behind them is not."""
    [line] = await batch_lines(rt, 1, BACKLOG_AGE_S, "b-horizon")
    [single] = await waited(rt, 1, BACKLOG_AGE_S)
    await sent(celery, single, *(await waited(rt, 3, 1)))  # interactive, one just sent

    assert await sweep(rt, celery, GRACE_S) == 1

    assert await messages(rt, INFERENCE_QUEUE, Lane.BATCH) == [
        (TASK_NAMES[JobKind.CHAT], [line.id])]
    assert len(await messages(rt, INFERENCE_QUEUE)) == 4

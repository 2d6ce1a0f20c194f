"""Jobs whose broker message was lost get a new one.

kombu's Redis transport takes a message off its queue (BRPOP) and records it as unacked in
a second round trip: a worker killed, or a Redis shut down, between the two loses the
message; its job would stay queued forever. The job records know better: every job that is
not final is in the `jobs:open` sorted set (finish_job.lua removes it). Every `check_s` one
worker (a lock) looks at the open jobs not seen progressing for `grace_s`: one with no live
lease, no pending backoff, whose queue is empty and which no unacked message names, gets a
new message. A duplicate is harmless: claims are fenced.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from celery import Celery
from pydantic import ValidationError

from worker.app import INFERENCE_QUEUE, MANAGEMENT_QUEUE
from worker.contract import FINAL, JobKind, JobRecord
from worker.runtime import Runtime

logger = logging.getLogger(__name__)
LIMIT = 1000
_JOB_ID = re.compile(r"[0-9a-f]{32}")  # worker.contract.new_id


def _queue(kind: str) -> str:
    return MANAGEMENT_QUEUE if JobKind(kind).is_management else INFERENCE_QUEUE


async def sweep(rt: Runtime, celery: Celery, grace_s: float) -> int:
    """One pass; returns how many jobs got a new message."""
    redis = rt.redis
    open_key = rt.keys.open_jobs()
    now_ms = int(time.time() * 1000)
    ids = [str(i) for i in await redis.zrangebyscore(
        open_key, "-inf", now_ms - grace_s * 1000, start=0, num=LIMIT)]
    if not ids:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(rt.keys.job(job_id))
        raws: list[dict[str, str]] = await pipe.execute()
    done: list[str] = []
    waiting: list[JobRecord] = []
    candidates: list[JobRecord] = []
    for job_id, raw in zip(ids, raws, strict=True):
        if not raw or raw.get("status") in {s.value for s in FINAL}:
            done.append(job_id)
            continue
        try:
            record = JobRecord.from_redis(raw)
        except ValidationError as exc:  # e.g. a kind this version does not know
            logger.warning("job %s: unreadable record, no longer watched: %s", job_id, exc)
            done.append(job_id)
            continue
        busy_until = max(int(raw.get("lease_until_ms") or 0) if raw.get("status") == "running"
                         else 0, int(raw.get("not_before_ms") or 0))
        (waiting if busy_until > now_ms else candidates).append(record)
    prefix = f"{rt.settings.key_prefix}broker:"
    backlog = {queue: await redis.llen(prefix + queue)
               for queue in (INFERENCE_QUEUE, MANAGEMENT_QUEUE)}
    # Job ids named anywhere in the unacked messages (their summaries carry `job=<id>`).
    unacked = {found for message in await redis.hvals(prefix + "unacked")
               for found in _JOB_ID.findall(str(message))}
    orphans = [r for r in candidates
               if backlog[_queue(r.kind)] == 0 and r.id not in unacked]
    if orphans:
        logger.warning("%d jobs had no broker message: sending them again: %s",
                       len(orphans), " ".join(r.id for r in orphans[:10]))
        from producer.submit import publish  # noqa: PLC0415 - producer imports worker.tasks

        await asyncio.to_thread(publish, celery, orphans)
    async with redis.pipeline(transaction=False) as pipe:
        if done:
            pipe.zrem(open_key, *done)
        seen = [*waiting, *candidates]
        if seen:
            pipe.zadd(open_key, {r.id: now_ms for r in seen})
        await pipe.execute()
    return len(orphans)


async def sweep_forever(rt: Runtime, celery: Celery, check_s: float, grace_s: float) -> None:
    lock = rt.keys.lock("orphans")
    while True:
        await asyncio.sleep(check_s)
        try:
            if await rt.redis.set(lock, rt.worker_name, nx=True, px=int(check_s * 1000)):
                await sweep(rt, celery, grace_s)
        except Exception:  # a sweep must never stop the sweeper
            logger.exception("orphan sweep failed")


_sweeper: asyncio.Task[Any] | None = None


async def start(rt: Runtime, celery: Celery, check_s: float, grace_s: float) -> None:
    global _sweeper  # noqa: PLW0603 - one per process
    if _sweeper is None or _sweeper.done():
        _sweeper = asyncio.ensure_future(sweep_forever(rt, celery, check_s, grace_s))

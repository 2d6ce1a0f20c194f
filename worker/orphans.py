"""Jobs whose broker message was lost get a new one.

kombu's Redis transport takes a message off its queue (BRPOP) and records it as unacked in
a second round trip: a worker killed, or a Redis shut down, between the two loses the
message; its job would stay queued forever. The job records know better: every job that is
not final is in the `jobs:open` sorted set (finish_job.lua removes it). Every `check_s` one
worker (a lock) looks at up to LIMIT open jobs not seen progressing for `grace_s`: one with
no live lease, no pending backoff, that no unacked message names, and whose message cannot
still be waiting in its queue, gets a new message. A duplicate is harmless (claims are
fenced) but costs a delivery, so only a job shown to have no message is sent again.

Waiting or gone, without reading a long queue: each list of a queue is FIFO (a queue has
one per lane, core/dispatch.py, and a job's messages all go to the list of its lane;
publishers LPUSH, consumers BRPOP the other end; a message kombu restores goes back to the
consuming end of its list, and it was published before everything still queued there). So
a queued message was published after each of the oldest ones of its list, the TAIL
messages at the consuming end, which are the only ones read. Each
of them was published after its *floor*: its job's `created_at`, or for a requeue (a retry
with a countdown, which never exceeds `requeue_max_delay_s`) its ETA minus that. A job's
newest message was published by its *last send*: every publish, requeue and resend stamps
`published_ms` on its record (core/store.py), and a deferral of a busy job, not stamped,
goes before that job's lease or backoff ends. A job not named by a tail message, whose last
send is older than the newest floor minus `grace_s` (clocks of several hosts, a stamp
written just before its message), has no message left in its list. An empty list holds
none at all.

Cost per sweep, whatever the queues' lengths: one ZRANGEBYSCORE, one MULTI with an LRANGE
of TAIL messages per list and the HVALS of the unacked messages, one pipeline of an HGET
per tail message, up to LIMIT HGETALL, one ZADD.

Left to a later sweep, or a rare duplicate: a message between BRPOP and its unacked record;
a requeue that an outage of the job store kept from being stamped; many messages of a dead
worker put back at the consuming end in another order than they were published.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from pydantic import ValidationError

from core.contract import FINAL, JobKind, JobRecord
from core.dispatch import QUEUES, REDIS_PRIORITIES, Lane, lane_of, publish, queue_for
from core.internals.kombu_messages import read_queued
from core.scripts import PUBLISHED_MS
from worker.runtime import Runtime

logger = logging.getLogger(__name__)
LIMIT = 1000
TAIL = 10  # oldest messages read per queue
_JOB_ID = re.compile(r"[0-9a-f]{32}")  # core.contract.new_id
_UNKNOWN = -math.inf
# Every list a job's message can wait in: a queue's, in a lane.
LISTS: tuple[tuple[str, Lane], ...] = tuple((queue, lane) for queue in QUEUES for lane in Lane)


@dataclass(frozen=True)
class Broker:
    """One atomic look at the broker: the tail of each list, and the unacked messages."""

    tails: Mapping[tuple[str, Lane], Sequence[str]]  # (queue, lane) -> its oldest messages
    unacked: Sequence[str]

    def named(self) -> set[str]:
        """Job ids named in the tails or in unacked messages (their summaries say `job=`)."""
        texts = [*self.unacked, *(m for messages in self.tails.values() for m in messages)]
        return {found for text in texts for found in _JOB_ID.findall(text)}


@dataclass(frozen=True)
class Candidate:
    record: JobRecord
    last_send_ms: float  # its newest message was published by then


async def sweep(rt: Runtime, celery: Celery, grace_s: float) -> int:
    """One pass; returns how many jobs got a new message."""
    redis = rt.redis
    open_key = rt.keys.open_jobs()
    now_ms = int(time.time() * 1000)
    ids = [str(i) for i in await redis.zrangebyscore(
        open_key, "-inf", now_ms - grace_s * 1000, start=0, num=LIMIT)]
    if not ids:
        return 0
    # The broker before the records: a job whose message moves on after this look is seen
    # claimed (a live lease) or, if not claimed yet, was sent after the tail (its last send).
    broker = await _look_at_broker(rt)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(rt.keys.job(job_id))
        raws: list[dict[str, str]] = await pipe.execute()
    done, waiting, candidates = _sort_out(ids, raws, now_ms)
    horizons = await _horizons(rt, broker, grace_s * 1000)
    named = broker.named()
    orphans = [c.record for c in candidates if c.record.id not in named
               and c.last_send_ms < horizons[list_of(c.record)]]
    if orphans:
        logger.warning("%d jobs had no broker message: sending them again: %s",
                       len(orphans), " ".join(r.id for r in orphans[:10]))
        # Stamped first: the new message must not look older than it is to the next sweep.
        await rt.store.mark_published([r.id for r in orphans])
        await asyncio.to_thread(publish, celery, orphans)
    async with redis.pipeline(transaction=False) as pipe:
        if done:
            pipe.zrem(open_key, *done)
        seen = [*waiting, *(c.record.id for c in candidates)]
        if seen:
            pipe.zadd(open_key, dict.fromkeys(seen, now_ms))
        await pipe.execute()
    return len(orphans)


def _sort_out(
    ids: Sequence[str], raws: Sequence[dict[str, str]], now_ms: int
) -> tuple[list[str], list[str], list[Candidate]]:
    """Job ids to forget (final, gone, unreadable), ids busy with a lease or a backoff, and
    the candidates."""
    done: list[str] = []
    waiting: list[str] = []
    candidates: list[Candidate] = []
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
        lease_until = int(raw.get("lease_until_ms") or 0)
        not_before = int(raw.get("not_before_ms") or 0)
        busy_until = max(lease_until if record.status == "running" else 0, not_before)
        if busy_until > now_ms:
            waiting.append(job_id)
            continue
        published = float(raw.get(PUBLISHED_MS) or record.created_at * 1000)
        candidates.append(Candidate(record, max(published, lease_until, not_before)))
    return done, waiting, candidates


def list_of(record: JobRecord) -> tuple[str, Lane]:
    """The list a job's messages wait in."""
    return queue_for(JobKind(record.kind)), lane_of(record)


async def _look_at_broker(rt: Runtime) -> Broker:
    async with rt.redis.pipeline(transaction=True) as pipe:
        for queue, lane in LISTS:
            pipe.lrange(rt.keys.broker_queue(queue, REDIS_PRIORITIES[lane]), -TAIL, -1)
        pipe.hvals(rt.keys.broker_unacked())
        *tails, unacked = await pipe.execute()
    return Broker(dict(zip(LISTS, [[_text(m) for m in t] for t in tails], strict=True)),
                  [_text(m) for m in unacked])


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _horizons(rt: Runtime, broker: Broker,
                    grace_ms: float) -> dict[tuple[str, Lane], float]:
    """Per list: a job last sent before this (ms) has no message left in it."""
    parsed = {where: [_read_message(m) for m in messages]
              for where, messages in broker.tails.items()}
    created = await _created_ms(rt, {job_id for entries in parsed.values()
                                     for job_id, _ in entries if job_id})
    longest_countdown_ms = rt.settings.requeue_max_delay_s * 1000
    horizons: dict[tuple[str, Lane], float] = {}
    for where, entries in parsed.items():
        if not broker.tails[where]:
            horizons[where] = math.inf  # empty: every message published so far is taken
            continue
        floors = [max(created.get(job_id or "", _UNKNOWN), eta_ms - longest_countdown_ms)
                  for job_id, eta_ms in entries]
        horizons[where] = max(floors, default=_UNKNOWN) - grace_ms
    return horizons


def _read_message(text: str) -> tuple[str | None, float]:
    """The job a queued message is for (its task's argument) and its ETA in ms
    (-inf without one); (None, -inf) for a message that is not a job's."""
    queued = read_queued(text)
    if queued is None:
        return None, _UNKNOWN
    eta_ms = queued.eta.timestamp() * 1000 if queued.eta else _UNKNOWN
    first = queued.args[0] if queued.args else None
    if isinstance(first, list) and first:  # a message of batch lines: its first job's
        first = first[0]
    job_id = first if isinstance(first, str) else None
    return (job_id if job_id and _JOB_ID.fullmatch(job_id) else None), eta_ms


async def _created_ms(rt: Runtime, job_ids: set[str]) -> dict[str, float]:
    """When each job was created (ms); a job whose record is gone is left out."""
    ordered = sorted(job_ids)
    async with rt.redis.pipeline(transaction=False) as pipe:
        for job_id in ordered:
            pipe.hget(rt.keys.job(job_id), "created_at")
        replies = await pipe.execute()
    created: dict[str, float] = {}
    for job_id, value in zip(ordered, replies, strict=True):
        try:
            created[job_id] = float(value) * 1000
        except (TypeError, ValueError):
            continue
    return created


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
    if rt.settings.broker_url not in (None, rt.settings.redis_url):
        # Its queues are not in this Redis: every open job would look orphaned.
        logger.info("orphan sweep off: the broker is not the job store's Redis")
        return
    if _sweeper is None or _sweeper.done():
        _sweeper = asyncio.ensure_future(sweep_forever(rt, celery, check_s, grace_s))

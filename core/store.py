"""Job records, chunk streams and batch state in Redis.

Every state change of a job goes through a Lua script (`lua/`), so the check
"is it final? is this attempt current?" and the write are one atomic step:
with at-least-once delivery the same job can be reported twice, and the
batch counters must still move exactly once.

The scripts find a job's batch keys from the ``batch_id`` in its hash, so they
touch keys they were not handed: fine on one server, not on Redis Cluster.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.client import NEVER_DECODE
from redis.typing import EncodableT, KeyT, StreamIdT

from core.contract import (
    FINAL,
    BatchRecord,
    BatchStatus,
    ChunkEntry,
    JobRecord,
    JobStatus,
    decode_hash,
)
from core.feed import DEFAULT_PRIORITY, Feed, check_priority
from core.internals.alloc_fit import split
from core.keys import Keys
from core.scripts import ID_SLOT, PUBLISHED_MS, lua_script, text

_RPUSH_CHUNK = 10_000  # ids per RPUSH, keeps single commands reasonable

StreamEntries = list[tuple[str, dict[str, str]]]
AttemptKey = tuple[str, int]  # (job id, attempt)


ClaimOutcome = Literal["claimed", "final", "busy", "missing"]


@dataclass(frozen=True)
class Claim:
    """What `JobStore.claim` decided: run `attempt`, or skip / defer the delivery."""

    outcome: ClaimOutcome
    attempt: int
    failures: int = 0  # failed attempts so far, for the retry budget
    wait_s: float = 0.0  # with "busy": until the other delivery's lease ends
    job: JobRecord | None = None  # with "claimed": the record as claimed
    queued_s: float | None = None  # with "claimed": from its latest publish to this start


def _queued_s(published_ms: str | bytes | None, started_at: float | None) -> float | None:
    """Seconds from a job's latest publish (a requeue's countdown included) to its start,
    both stamped by Redis's or the publisher's clock; None when either is missing."""
    if published_ms is None or started_at is None:
        return None
    try:
        return max(0.0, started_at - int(published_ms) / 1000)
    except ValueError:
        return None


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _pairs(fields: Mapping[str, str | None]) -> list[str]:
    """Flatten to HSET arguments, leaving out None (an absent field)."""
    return [part for name, value in fields.items() if value is not None for part in (name, value)]


def _streams_reply(reply: Any) -> dict[str, StreamEntries]:
    """XREAD's reply by stream key, from RESP2 (list of pairs) or RESP3 (dict)."""
    if not reply:
        return {}
    by_key: dict[str, StreamEntries] = {}
    for key, listed in reply.items() if isinstance(reply, dict) else reply:
        # Entries are (id, fields) tuples; RESP3 wraps them in one more list.
        entries = listed[0] if listed and isinstance(listed[0], list) else listed
        by_key[text(key)] = [(text(entry_id), decode_hash(fields))
                              for entry_id, fields in entries]
    return by_key


def _joined(pieces: Any) -> bytes | None:
    """The bytes of a hash of pieces "0", "1", … (RESP2 list or RESP3 dict), or None."""
    if not pieces:
        return None
    items = pieces.items() if isinstance(pieces, dict) else zip(pieces[::2], pieces[1::2],
                                                                 strict=True)
    ordered = sorted((int(index), piece) for index, piece in items)
    return b"".join(piece for _, piece in ordered)


def _stream_entries(reply: Any) -> StreamEntries:
    """XREAD's reply for one stream."""
    return next(iter(_streams_reply(reply).values()), [])


class JobStore:
    """Async access to jobs and batches; one per event loop."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, retention_s: int) -> None:
        if retention_s <= 0:
            raise ValueError(f"retention_s must be positive (got {retention_s})")
        self._redis = redis
        self.keys = keys
        self.retention_s = retention_s
        self._finish = redis.register_script(lua_script("finish_job.lua"))
        self._move = redis.register_script(lua_script("move_job.lua"))
        self._claim = redis.register_script(lua_script("claim_job.lua"))
        self._renew = redis.register_script(lua_script("renew_job.lua"))
        self._append = redis.register_script(lua_script("append_chunks.lua", common=False))
        self._seal = redis.register_script(lua_script("seal_batch.lua"))
        self._published = redis.register_script(lua_script("mark_published.lua", common=False))
        self._write_records = redis.register_script(lua_script("write_records.lua",
                                                               common=False))
        self._batch_templates = [
            keys.batch(ID_SLOT),
            keys.batch_jobs(ID_SLOT),
            keys.batch_events(ID_SLOT),
            keys.batch_invalid(ID_SLOT),
        ]
        self.feed = Feed(redis, keys, retention_s)

    # -- creating and reading -------------------------------------------------

    async def create_jobs(
        self, records: Sequence[JobRecord], batch_id: str | None = None, *,
        pending: bool = False,
    ) -> list[JobRecord]:
        """Write new records in one round trip; returns them as stored.

        With ``batch_id`` every record joins that batch; otherwise each joins
        the batch it names, if any. Ids are appended to the batch's job list in
        the order given and the batch's total and per-status counts grow.
        With ``pending`` (batch lines only) they wait in their batch's flows for the
        feeder (core/feed.py) instead of being published by the caller.
        """
        if pending and batch_id is None:
            raise ValueError("pending jobs are a batch's lines: give its batch_id")
        if batch_id is not None:
            records = [r.model_copy(update={"batch_id": batch_id}) for r in records]
        groups: defaultdict[str, list[JobRecord]] = defaultdict(list)
        now_ms = int(time.time() * 1000)
        keys: list[KeyT] = []
        args: list[EncodableT] = []
        for record in records:
            fields = record.to_redis()
            keys.append(self.keys.job(record.id))
            args += [len(fields) + 1, *_pairs(fields), PUBLISHED_MS, now_ms]
            if record.batch_id is not None:
                groups[record.batch_id].append(record)
        async with self._redis.pipeline(transaction=True) as pipe:
            if records:
                await self._write_records(keys=keys, args=args, client=pipe)
            # Every unfinished job that has a message is indexed, so a job whose message is
            # lost can be found (worker/orphans.py); finish_job.lua takes it out. Pending
            # lines join the index when the feeder gives them their message.
            for start in range(0, 0 if pending else len(records), _RPUSH_CHUNK):
                chunk = records[start:start + _RPUSH_CHUNK]
                pipe.zadd(self.keys.open_jobs(), {r.id: now_ms for r in chunk})
            for group_id, members in groups.items():
                self._add_to_batch(pipe, group_id, members)
                if pending:
                    self.feed.add_pending(pipe, group_id, members)
            await pipe.execute()
        return list(records)

    def _add_to_batch(self, pipe: Pipeline, batch_id: str, records: list[JobRecord]) -> None:
        key = self.keys.batch(batch_id)
        ids = [r.id for r in records]
        for start in range(0, len(ids), _RPUSH_CHUNK):
            pipe.rpush(self.keys.batch_jobs(batch_id), *ids[start : start + _RPUSH_CHUNK])
        pipe.hsetnx(key, "status", BatchStatus.IN_PROGRESS.value)
        pipe.hsetnx(key, "created_at", str(time.time()))
        pipe.hincrby(key, "total", len(records))
        for status, count in Counter(r.status for r in records).items():
            pipe.hincrby(key, status.value, count)

    async def load(self, job_id: str) -> JobRecord | None:
        raw = await self._redis.hgetall(self.keys.job(job_id))
        return JobRecord.from_redis(raw) if raw else None

    async def load_vectors(self, job_ids: Sequence[str]) -> list[bytes | None]:
        """The stored vectors of embeddings jobs, as bytes (None where a job has none), in
        one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                # Raw float32: never decoded as text, whatever the client does with replies.
                pipe.execute_command("HGETALL", self.keys.job_vectors(job_id),
                                     **{NEVER_DECODE: True})
            replies = await pipe.execute()
        return [_joined(reply) for reply in replies]

    async def open_batch(self, batch_id: str, name: str | None, invalid: Sequence[str],
                         priority: int = DEFAULT_PRIORITY) -> None:
        """Register a batch before its jobs: its name, the input lines refused (JSON
        error lines), its priority (its weight when batches share the slots, core/feed.py)
        and its place in the index. It cannot finish until `seal_batch`: jobs added in
        several rounds could otherwise all end before the next round."""
        check_priority(priority)
        key = self.keys.batch(batch_id)
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"created_at": str(now), "invalid": str(len(invalid)),
                                    "total": "0", "status": BatchStatus.IN_PROGRESS.value,
                                    "sealed": "0", "priority": str(priority)})
            if name:
                pipe.hset(key, "name", name)
            if invalid:
                pipe.rpush(self.keys.batch_invalid(batch_id), *invalid)
            pipe.zadd(self.keys.batches(), {batch_id: now})
            # Index entries outlive their batches' retention; trim them as batches come.
            pipe.zremrangebyscore(self.keys.batches(), 0, now - 2 * self.retention_s)
            await pipe.execute()

    async def hold_batch(self, batch_id: str) -> bool:
        """Keep the batch from finishing until `seal_batch`, unless someone holds it already
        (an `open_batch` not sealed yet). True if this call took the hold."""
        key = self.keys.batch(batch_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, "sealed")
            pipe.hset(key, "sealed", "0")
            held_before, _ = await pipe.execute()
        return text(held_before or "") != "0"

    async def seal_batch(self, batch_id: str) -> bool:
        """Every job of the batch is added: it finishes now if they have all ended (or it
        has none), else with its last one. False if there is no such batch."""
        args: list[EncodableT] = [batch_id, time.time(), self.retention_s,
                                  *self._batch_templates]
        return bool(await self._seal(keys=[self.keys.batch(batch_id)], args=args))

    def batch_templates(self) -> list[str]:
        """Key templates of a batch (batch, jobs, events, invalid), as the scripts take them."""
        return list(self._batch_templates)

    async def invalid_lines(self, batch_id: str) -> list[str]:
        lines = await self._redis.lrange(self.keys.batch_invalid(batch_id), 0, -1)
        return [text(line) for line in lines]

    async def add_invalid_lines(self, batch_id: str, lines: Sequence[str]) -> None:
        """More input lines refused (JSON error lines), for a batch its producer holds open
        (`open_batch`) and reads as a stream: they count in its `invalid`, and their list
        expires with the batch's other keys once it is sealed and done."""
        if not lines:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.keys.batch_invalid(batch_id), *lines)
            pipe.hincrby(self.keys.batch(batch_id), "invalid", len(lines))
            await pipe.execute()

    async def batch_ids(self, limit: int) -> list[str]:
        """The newest batches first."""
        ids = await self._redis.zrevrange(self.keys.batches(), 0, limit - 1)
        return [text(cast(str | bytes, i)) for i in ids]

    async def load_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Records of many jobs in one round trip (None where a job is unknown)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            replies = await pipe.execute()
        return [JobRecord.from_redis(raw) if raw else None for raw in replies]

    async def batch(self, batch_id: str) -> BatchRecord | None:
        raw = await self._redis.hgetall(self.keys.batch(batch_id))
        return BatchRecord.from_redis(batch_id, raw) if raw else None

    async def batch_job_ids(self, batch_id: str, start: int = 0, stop: int = -1) -> list[str]:
        """Job ids in input order; ``start``/``stop`` as in LRANGE (inclusive)."""
        ids = await self._redis.lrange(self.keys.batch_jobs(batch_id), start, stop)
        return [text(i) for i in ids]

    # -- state changes (all fenced in Lua) ------------------------------------

    async def claim(self, job_id: str, worker: str, lease_s: float) -> Claim:
        """Start the next attempt under a lease, unless the job is final or another
        delivery holds a live lease (see lua/claim_job.lua)."""
        reply = await self._claim(
            keys=[self.keys.job(job_id)],
            args=[worker, int(lease_s * 1000), self._batch_templates[0]],
        )
        outcome = cast(ClaimOutcome, text(reply[0]))
        attempt, extra = int(reply[1]), int(reply[2])
        if outcome == "claimed":
            fields = reply[3]
            raw = dict(zip(fields[::2], fields[1::2], strict=True))
            job = JobRecord.from_redis(raw)
            return Claim(outcome, attempt, failures=extra, job=job,
                         queued_s=_queued_s(raw.get(PUBLISHED_MS), job.started_at))
        return Claim(outcome, attempt, wait_s=extra / 1000)

    async def renew_many(
        self,
        attempts: Sequence[tuple[str, int]],
        lease_s: float,
        also: Sequence[Callable[[Pipeline], Awaitable[None]]] = (),
    ) -> list[bool]:
        """Extend the leases of (job id, attempt) pairs in one round trip; False for an
        attempt that must stop (its job was cancelled, finished or superseded).

        Each of ``also`` queues one more command on the same pipeline (e.g. renewing what
        the attempts hold besides their lease); their replies follow, as truth values, an
        error reply as False so that it cannot hold up the leases."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, attempt in attempts:
                args: list[EncodableT] = [attempt, int(lease_s * 1000)]
                await self._renew(keys=[self.keys.job(job_id)], args=args, client=pipe)
            for queue in also:
                await queue(pipe)
            replies = await pipe.execute(raise_on_error=False)
        leases = replies[: len(attempts)]
        for reply in leases:
            if isinstance(reply, Exception):
                raise reply
        return [bool(reply) and not isinstance(reply, Exception) for reply in replies]

    async def release(self, job_id: str, attempt: int) -> bool:
        """Give the job back to the queue without a failure, for an attempt that never
        called the upstream (no rate-limit permit): the next claim takes the same attempt
        number. False if this attempt no longer holds the job (see lua/claim_job.lua)."""
        fields = {"lease_until_ms": "0", PUBLISHED_MS: str(int(time.time() * 1000))}
        return await self._move_job(job_id, attempt, JobStatus.QUEUED, None, fields)

    async def mark_retrying(
        self, job_id: str, attempt: int, error: str, delay_s: float = 0.0
    ) -> bool:
        """Record that ``attempt`` failed and another will follow, not before ``delay_s``
        from now on the Redis clock (claims refuse until then)."""
        seconds, micros = await self._redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        fields = {"lease_until_ms": "0", "not_before_ms": str(now_ms + int(delay_s * 1000)),
                  PUBLISHED_MS: str(now_ms)}
        return await self._move_job(job_id, attempt, JobStatus.RETRYING, error, fields)

    async def mark_published(self, job_ids: Sequence[str]) -> None:
        """Stamp the jobs as given a new message now (the orphan sweep's resend); a record
        that no longer exists is left alone, not recreated without its retention."""
        if job_ids:
            keys: list[KeyT] = [self.keys.job(job_id) for job_id in job_ids]
            await self._published(keys=keys, args=[PUBLISHED_MS, int(time.time() * 1000)])

    async def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        usage: dict[str, Any] | None = None,
        last_chunk: ChunkEntry | None = None,
        vectors: bytes = b"",
        upstream_request_id: str | None = None,
        upstream_status: int | None = None,
        upstream_error: dict[str, Any] | None = None,
    ) -> bool:
        """Write the final state; True only for the one call that wrote it. `last_chunk`
        (a stream's `done`) goes to the job's chunk stream in the same step, and only then;
        so do an embeddings job's `vectors` (raw bytes) to their own key, in pieces that
        fill the server's allocations (core/internals/alloc_fit.py), and what the upstream
        said to this attempt (the `upstream_*` fields of `JobRecord`)."""
        if status not in FINAL:
            raise ValueError(f"finish needs a final status, not {status!r}")
        fields = {"result": _json(result), "error": error, "usage": _json(usage),
                  "upstream_request_id": upstream_request_id,
                  "upstream_status": None if upstream_status is None else str(upstream_status),
                  "upstream_error": _json(upstream_error)}
        entry = _pairs(last_chunk.to_redis()) if last_chunk else []
        return await self._finish_job(job_id, str(attempt), status, error, fields,
                                      entry=entry, vectors=vectors)

    async def cancel(self, job_id: str) -> bool:
        """Make the job ``cancelled`` unless it is final already; any attempt."""
        cancelled = await self._finish_job(job_id, "", JobStatus.CANCELLED, None, {})
        if cancelled:
            await self._redis.incr(self.keys.cancels())
        return cancelled

    async def cancels(self) -> int:
        """How many cancels there have been (it moves: some running attempt may stop)."""
        return int(await self._redis.get(self.keys.cancels()) or 0)

    async def _move_job(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        error: str | None,
        fields: Mapping[str, str | None],
    ) -> bool:
        batch_template = self._batch_templates[0]
        args: list[EncodableT] = [attempt, status.value, batch_template, _json(error) or ""]
        done = await self._move(keys=[self.keys.job(job_id)], args=[*args, *_pairs(fields)])
        return bool(done)

    async def _finish_job(
        self,
        job_id: str,
        attempt: str,
        status: JobStatus,
        error: str | None,
        fields: Mapping[str, str | None],
        *,
        entry: Sequence[str] = (),
        vectors: bytes = b"",
    ) -> bool:
        keys = [self.keys.job(job_id), self.keys.job_chunks(job_id), self.keys.open_jobs(),
                self.keys.job_vectors(job_id), *self.feed.window_keys()]
        args: list[EncodableT] = [job_id, attempt, status.value, time.time(), self.retention_s]
        pieces = split(vectors)
        args += [*self._batch_templates, _json(error) or "", len(entry), *entry,
                 len(pieces), *pieces, *_pairs(fields)]
        return bool(await self._finish(keys=keys, args=args))

    # -- streams ----------------------------------------------------------------

    async def append_chunks(
        self, job_id: str, entries: Sequence[ChunkEntry]
    ) -> list[str] | None:
        """Add one attempt's entries in order with one script call; returns their stream
        ids, or None if refused (see `append_to_streams`)."""
        if not entries:
            return []
        attempt = entries[0].attempt
        if any(entry.attempt != attempt for entry in entries):
            raise ValueError("append_chunks takes the entries of one attempt")
        key = (job_id, attempt)
        return (await self.append_to_streams({key: entries}))[key]

    async def append_to_streams(
        self, entries: Mapping[AttemptKey, Sequence[ChunkEntry]]
    ) -> dict[AttemptKey, list[str] | None]:
        """Add each attempt's entries to its job's chunk stream, in order, all in one script
        call; returns each attempt's new stream ids, or None where its entries were refused:
        the job is not running this attempt under a live lease any more (superseded,
        ended, or the lease ran out; see lua/append_chunks.lua)."""
        attempts = [key for key, added in entries.items() if added]
        if not attempts:
            return {}
        rows = [entry.to_redis() for key in attempts for entry in entries[key]]
        names = list(rows[0])  # every entry has the same fields: their names go once
        keys = [key for job_id, _ in attempts
                for key in (self.keys.job(job_id), self.keys.job_chunks(job_id))]
        args: list[EncodableT] = [len(names), *names]
        args += [part for key in attempts for part in (key[1], len(entries[key]))]
        args += [value for row in rows for value in row.values()]
        replies = await self._append(keys=keys, args=args)
        return {key: [text(i) for i in ids] if isinstance(ids, list) else None
                for key, ids in zip(attempts, replies, strict=True)}

    async def read_chunks(
        self,
        job_id: str,
        last_id: str = "0",
        block_ms: int | None = None,
        count: int | None = None,
    ) -> list[tuple[str, ChunkEntry]]:
        """Entries after ``last_id``; with ``block_ms``, wait that long for one."""
        entries = await self._xread(self.keys.job_chunks(job_id), last_id, block_ms, count)
        return [(entry_id, ChunkEntry.from_redis(fields)) for entry_id, fields in entries]

    async def read_batch_events(
        self,
        batch_id: str,
        last_id: str = "0",
        block_ms: int | None = None,
        count: int | None = None,
    ) -> StreamEntries:
        """Finished-job events (job_id, status, attempt) after ``last_id``."""
        return await self._xread(self.keys.batch_events(batch_id), last_id, block_ms, count)

    async def read_streams(
        self, positions: Mapping[str, str], block_ms: int | None = None
    ) -> dict[str, StreamEntries]:
        """Entries after each stream key's position, in one XREAD; with ``block_ms``, wait
        that long for the first one."""
        # Encoded here: redis-py's encoder, called per argument, took 2.5 times as long for
        # the hundreds of keys and ids of a reader that follows many streams.
        streams: dict[KeyT, StreamIdT] = {key.encode(): at.encode()
                                          for key, at in positions.items()}
        return _streams_reply(await self._redis.xread(streams, block=block_ms))

    async def wake(self, key: str, ttl_s: int) -> None:
        """Add an entry to a private stream (it ends an XREAD that waits on it)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"wake": "1"}, maxlen=16, approximate=True)
            pipe.expire(key, ttl_s)
            await pipe.execute()

    async def _xread(
        self, key: str, last_id: str, block_ms: int | None, count: int | None
    ) -> StreamEntries:
        reply = await self._redis.xread({key: last_id}, count=count, block=block_ms)
        return _stream_entries(reply)

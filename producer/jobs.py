"""A submitted job as its producer sees it: status, result, live stream, cancel.

Streams are read from the job's Redis stream and survive the producer restarting (pass
the last entry id back to resume). When an attempt fails after sending chunks, the stream
yields a `restart` event before the next attempt's chunks, so a consumer never mixes two
attempts: once an attempt was seen, entries of older ones are skipped (a second guard: the
store already refuses a superseded attempt's writes). `final_text()` gives only the final
attempt's text.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from core.contract import FINAL, ChunkKind, JobRecord, JobStatus
from core.embeddings import Embedding
from core.store import JobStore, StreamEntries
from modelproxy.portal import iterate_sync, run_sync
from producer.embeddings import embeddings_of, with_vectors
from producer.stream_reader import Follow, StreamReader

POLL_MIN_S = 0.02
POLL_MAX_S = 0.5
STREAM_BLOCK_S = 0.5  # quiet this long: look whether the job ended without a `done`
CHUNK_KINDS: frozenset[str] = frozenset(get_args(ChunkKind))


class JobNotFoundError(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id} (unknown, or its results expired)")


class JobFailedError(RuntimeError):
    """The job ended failed or cancelled; `record` says why."""

    def __init__(self, record: JobRecord) -> None:
        super().__init__(f"job {record.id} {record.status.value}: {record.error or ''}".strip())
        self.record = record


class JobTimeoutError(TimeoutError):
    pass


@dataclass(frozen=True)
class StreamEvent:
    """One event of a job's stream. `restart`: drop what this job streamed so far."""

    entry_id: str
    attempt: int
    kind: Literal["delta", "done", "error", "restart"]
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def result_text(record: JobRecord) -> str:
    """The reply text of a finished chat or Responses job."""
    result = record.result or {}
    choices = result.get("choices")
    if choices:
        return str((choices[0].get("message") or {}).get("content") or "")
    parts = [
        str(content.get("text", ""))
        for item in result.get("output") or []
        if item.get("type") == "message"
        for content in item.get("content") or []
        if content.get("type") == "output_text"
    ]
    return "".join(parts)


async def wait_final(store: JobStore, job_id: str, timeout_s: float | None) -> JobRecord:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay_s = POLL_MIN_S
    while True:
        record = await store.load(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        if record.status in FINAL:
            return record
        if deadline is not None and time.monotonic() + delay_s > deadline:
            raise JobTimeoutError(f"job {job_id} still {record.status.value} after {timeout_s} s")
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 1.5, POLL_MAX_S)


def _event(entry_id: str, fields: Mapping[str, str]) -> StreamEvent:
    """A chunk entry's event, its fields read as `ChunkEntry.to_redis` writes them. This runs
    for every chunk of every stream followed: validating a `ChunkEntry` for each made it
    twice as slow."""
    kind = fields["kind"]
    if kind not in CHUNK_KINDS:
        raise ValueError(f"chunk entry {entry_id} of an unknown kind: {kind!r}")
    payload = json.loads(fields.get("data", "null"))
    data = payload if isinstance(payload, dict) else {}
    return StreamEvent(entry_id, int(fields["attempt"]), cast(ChunkKind, kind),
                       str(data.get("text", "")), data)


@dataclass
class _Attempts:
    """Which entries of a job's stream become events: once an attempt was seen, entries of
    older ones are skipped, and a newer one begins with a `restart`."""

    seen: int = 0

    def events(self, entries: StreamEntries) -> tuple[list[StreamEvent], bool]:
        """The events of `entries` up to a `done`, and whether one came."""
        events: list[StreamEvent] = []
        for entry_id, fields in entries:
            event = _event(entry_id, fields)
            if event.attempt < self.seen:
                continue  # a superseded attempt's: its text is dropped already
            if self.seen and event.attempt > self.seen:
                events.append(StreamEvent(entry_id, event.attempt, "restart"))
            self.seen = event.attempt
            events.append(event)
            if event.kind == "done":
                return events, True
        return events, False


class AsyncJob:
    def __init__(self, store: JobStore, job_id: str, reader: StreamReader | None = None) -> None:
        """`reader`: the client's, shared by its jobs' streams (else one of its own)."""
        self._store = store
        self.id = job_id
        self._reader = reader

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r})"

    async def record(self) -> JobRecord:
        record = await self._store.load(self.id)
        if record is None:
            raise JobNotFoundError(self.id)
        return record

    async def status(self) -> JobStatus:
        return (await self.record()).status

    async def result(self, timeout: float | None = None) -> JobRecord:
        """Wait for the end; the record of a succeeded job, else `JobFailedError`. An
        embeddings job's result is OpenAI's answer, vectors in the encoding it asked for."""
        record = await wait_final(self._store, self.id, timeout)
        if record.status != JobStatus.SUCCEEDED:
            raise JobFailedError(record)
        (record,) = await with_vectors(self._store, [record])
        return record

    async def final_text(self, timeout: float | None = None) -> str:
        return result_text(await self.result(timeout))

    async def embeddings(self, timeout: float | None = None) -> list[Embedding]:
        """An embeddings job's vectors by input index: lists of floats, or base64 strings
        if its request asked for base64."""
        return embeddings_of(await self.result(timeout))

    async def cancel(self) -> bool:
        """Cancel unless already final; a running stream stops within a second."""
        return await self._store.cancel(self.id)

    async def stream(self, last_id: str = "0", timeout: float | None = None,
                     ) -> AsyncIterator[StreamEvent]:
        """Chunks as they arrive (resumable from `last_id`), ending with the final
        attempt's `done`, or when the job ends without one (failed, cancelled).
        `JobTimeoutError` when it has not ended `timeout` s from now (the job runs on)."""
        async for batch in self.stream_batches(last_id, timeout):
            for event in batch:
                yield event

    async def stream_batches(self, last_id: str = "0", timeout: float | None = None,
                             ) -> AsyncIterator[list[StreamEvent]]:
        """`stream()`'s events in the groups they arrived in (never empty), for a consumer
        that passes them on in one write per group rather than one per chunk."""
        reader = self._reader or StreamReader(self._store)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        try:
            async with reader.follow(self.id, last_id) as follow:
                async for batch in self._batches(follow, deadline):
                    yield batch
        finally:
            if reader is not self._reader:
                await reader.aclose()

    async def _batches(self, follow: Follow, deadline: float | None,
                       ) -> AsyncIterator[list[StreamEvent]]:
        attempts = _Attempts()
        delivered = follow.position  # the last entry yielded or skipped
        while True:
            entries = await follow.read(self._block_s(deadline))
            if entries:
                events, done = attempts.events(entries)
                if events:
                    yield events
                if done:
                    return
                delivered = entries[-1][0]
                continue
            # Quiet for a while: stop once the job has ended and nothing is left to read.
            # From what was yielded, not from the follow's position: entries that reached
            # the follow while the record was loaded are not yielded yet.
            record = await self._store.load(self.id)
            ended = record is None or record.status in FINAL
            if ended and await self._drained(delivered):
                return

    def _block_s(self, deadline: float | None) -> float:
        """How long the next read may wait; `JobTimeoutError` once `deadline` is past."""
        if deadline is None:
            return STREAM_BLOCK_S
        left_s = deadline - asyncio.get_running_loop().time()
        if left_s <= 0:
            raise JobTimeoutError(f"the stream of job {self.id} did not end in time")
        return min(STREAM_BLOCK_S, left_s)

    async def _drained(self, last_id: str) -> bool:
        return not await self._store.read_chunks(self.id, last_id, count=1)


class Job:
    """The sync twin of `AsyncJob` (runs it on the portal loop)."""

    def __init__(self, job: AsyncJob) -> None:
        self._job = job
        self.id = job.id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def record(self) -> JobRecord:
        return run_sync(self._job.record())

    def status(self) -> JobStatus:
        return run_sync(self._job.status())

    def result(self, timeout: float | None = None) -> JobRecord:
        return run_sync(self._job.result(timeout))

    def final_text(self, timeout: float | None = None) -> str:
        return run_sync(self._job.final_text(timeout))

    def embeddings(self, timeout: float | None = None) -> list[Embedding]:
        return run_sync(self._job.embeddings(timeout))

    def cancel(self) -> bool:
        return run_sync(self._job.cancel())

    def stream(self, last_id: str = "0", timeout: float | None = None,
               ) -> Iterator[StreamEvent]:
        return iterate_sync(self._job.stream(last_id, timeout))

"""A batch as its producer sees it: progress, wait, results and errors in the OpenAI Batch
output format (matched by `custom_id`), cancel. Everything is read from Redis, so another
process can collect a batch later by its id."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

from celery import Celery

from core.contract import BatchRecord, BatchStatus, JobRecord, JobStatus
from core.dispatch import ENQUEUE_ROUND, cancel_batch, enqueue
from core.store import JobStore
from modelproxy.portal import iterate_sync, run_sync
from producer.batch_format import CANCELLED_CODE, error_line, output_line
from producer.embeddings import with_vectors

PAGE = 1000
# Succeeded jobs whose vectors are read (and decoded) at a time: a few MB, not a whole page.
VECTORS_GROUP = 32
WAIT_INTERVAL_S = 0.5
# The jobs whose lines go to the errors file, and that `retry_records` runs again.
RETRIED = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})

Progress = Callable[[BatchRecord], None]


class BatchNotFoundError(LookupError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch {batch_id} (unknown, or its results expired)")


async def enqueue_from(store: JobStore, celery: Celery, records: AsyncIterable[JobRecord],
                       batch_id: str) -> int:
    """Add jobs to a batch its producer holds open (`open_batch`, `seal_batch` after) as they
    come, a round at a time, never all in memory; returns how many."""
    added = 0
    round_: list[JobRecord] = []
    async for record in records:
        round_.append(record)
        if len(round_) == ENQUEUE_ROUND:
            added += len(await enqueue(store, celery, round_, batch_id))
            round_ = []
    if round_:
        added += len(await enqueue(store, celery, round_, batch_id))
    return added


class AsyncBatch:
    def __init__(self, store: JobStore, batch_id: str) -> None:
        self._store = store
        self.id = batch_id

    def __repr__(self) -> str:
        return f"AsyncBatch({self.id!r})"

    async def info(self) -> BatchRecord:
        record = await self._store.batch(self.id)
        if record is None:
            raise BatchNotFoundError(self.id)
        return record

    async def wait(self, timeout: float | None = None, on_progress: Progress | None = None,
                   interval_s: float = WAIT_INTERVAL_S) -> BatchRecord:
        """Until every job is final; `on_progress` gets the record at each look."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = await self.info()
            if on_progress is not None:
                on_progress(record)
            if record.status == BatchStatus.FINISHED:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {self.id}: {record.done}/{record.total} done")
            await asyncio.sleep(interval_s)

    async def records(self) -> AsyncIterator[JobRecord]:
        """Job records in input order."""
        async for page in self._pages():
            for record in page:
                yield record

    async def _pages(self) -> AsyncIterator[list[JobRecord]]:
        start = 0
        while True:
            ids = await self._store.batch_job_ids(self.id, start, start + PAGE - 1)
            if not ids:
                return
            yield [record for record in await self._store.load_many(ids) if record is not None]
            start += PAGE

    async def results(self) -> AsyncIterator[dict[str, Any]]:
        """Output lines of the succeeded jobs (embeddings in the encoding each asked for)."""
        async for page in self._pages():
            done = [record for record in page if record.status == JobStatus.SUCCEEDED]
            for start in range(0, len(done), VECTORS_GROUP):
                for record in await with_vectors(self._store, done[start:start + VECTORS_GROUP]):
                    yield output_line(record)

    async def errors(self, cancelled_code: str = CANCELLED_CODE,
                     ) -> AsyncIterator[dict[str, Any]]:
        """Lines refused at submission, then failed and cancelled jobs (the cancelled ones
        with error code `cancelled_code`)."""
        for raw in await self._store.invalid_lines(self.id):
            yield json.loads(raw)
        async for record in self.records():
            if record.status in RETRIED:
                yield error_line(record, cancelled_code=cancelled_code)

    async def retry_records(self) -> AsyncIterator[JobRecord]:
        """New jobs for those that failed or were cancelled, in input order: the same kind,
        proxy, request and custom_id (lines refused at submission would fail again: not
        these)."""
        async for record in self.records():
            if record.status in RETRIED:
                yield JobRecord(kind=record.kind, proxy=record.proxy, request=record.request,
                                custom_id=record.custom_id)

    async def cancel(self) -> int:
        """Cancel every job not final yet; returns how many."""
        return await cancel_batch(self._store, self.id)


class Batch:
    """The sync twin of `AsyncBatch`."""

    def __init__(self, batch: AsyncBatch) -> None:
        self._batch = batch
        self.id = batch.id

    def __repr__(self) -> str:
        return f"Batch({self.id!r})"

    def info(self) -> BatchRecord:
        return run_sync(self._batch.info())

    def wait(self, timeout: float | None = None, on_progress: Progress | None = None,
             interval_s: float = WAIT_INTERVAL_S) -> BatchRecord:
        return run_sync(self._batch.wait(timeout, on_progress, interval_s))

    def results(self) -> Iterator[dict[str, Any]]:
        return iterate_sync(self._batch.results())

    def errors(self, cancelled_code: str = CANCELLED_CODE) -> Iterator[dict[str, Any]]:
        return iterate_sync(self._batch.errors(cancelled_code))

    def cancel(self) -> int:
        return run_sync(self._batch.cancel())

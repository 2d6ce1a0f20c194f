"""Streamed chunks go to the jobs' Redis streams as they come.

One `ChunkSink` per worker process gathers the entries of every stream it runs and writes
them in one script call per event-loop iteration: at 100 streams a chunk arrives about
every 0.5 ms, and a write of its own cost each chunk ~35 µs of CPU more than its share of
a common one. One write is in flight at a time, which keeps each stream's order; entries
that come meanwhile go with the next. `flush_ms` > 0 spaces the writes out that long, for
fewer, larger ones.

Writes are fenced by attempt (core/lua/append_chunks.lua): once an attempt no longer owns its
job (superseded, ended, or its lease ran out while the process was paused), its entries are
refused and its writer stops the attempt like a lost lease, at its next entry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from core.contract import ChunkEntry, ChunkKind
from core.store import JobStore
from worker.lease import AttemptStopped

logger = logging.getLogger(__name__)


class ChunkSink:
    """Writes the entries of every `ChunkWriter` made from it; use it from one event loop."""

    def __init__(self, store: JobStore, flush_ms: int = 0) -> None:
        self._store = store
        self._flush_s = flush_ms / 1000
        self._pending: dict[ChunkWriter, list[ChunkEntry]] = {}
        self._next: asyncio.Future[None] | None = None  # done when `_pending` is written
        self._writing: asyncio.Task[None] | None = None
        self._last_write = 0.0

    def writer(self, job_id: str, attempt: int) -> ChunkWriter:
        return ChunkWriter(self, job_id, attempt)

    def add(self, writer: ChunkWriter, entry: ChunkEntry) -> asyncio.Future[None]:
        """Queue an entry; the future is done once the write that carries it has ended."""
        self._pending.setdefault(writer, []).append(entry)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        if self._writing is None or self._writing.done():
            self._writing = asyncio.ensure_future(self._write_all())
        return self._next

    async def _write_all(self) -> None:
        while self._pending:
            wait_s = self._last_write + self._flush_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            pending, self._pending = self._pending, {}
            written, self._next = self._next, None
            self._last_write = time.monotonic()
            try:
                added = await self._store.append_to_streams(
                    {writer.key: entries for writer, entries in pending.items()})
            except Exception as exc:
                # Each stream now has a gap: its writer fails the attempt when it closes.
                logger.warning("chunk write of %d streams failed: %s", len(pending), exc)
                for writer in pending:
                    writer.failure = writer.failure or exc
            else:
                for writer, entries in pending.items():
                    writer.wrote(len(entries), added[writer.key] is not None)
            finally:
                assert written is not None  # set by add() with the entries just taken
                written.set_result(None)


class ChunkWriter:
    """Appends one attempt's entries in order: `delta` …, then `error`, or a `done` that
    the job's final write adds (`last`)."""

    def __init__(self, sink: ChunkSink, job_id: str, attempt: int) -> None:
        self._sink = sink
        self.job_id = job_id
        self._attempt = attempt
        self.key = (job_id, attempt)
        self._seq = 0
        self._last_write: asyncio.Future[None] | None = None
        self.written = 0
        # The first write of ours that failed; `AttemptStopped` once one was refused.
        self.failure: BaseException | None = None

    @property
    def stopped(self) -> bool:
        """A write was refused: the job is no longer this attempt's."""
        return isinstance(self.failure, AttemptStopped)

    def wrote(self, count: int, accepted: bool) -> None:
        """The sink's report on a write of `count` of our entries."""
        if accepted:
            self.written += count
        elif not self.stopped:
            logger.warning("job %s attempt %d: chunk writes refused (superseded, ended or "
                           "lease lost): stopping", self.job_id, self._attempt)
            self.failure = AttemptStopped(self.job_id)

    def delta(self, data: dict[str, Any]) -> None:
        """Queue a `delta`; raises `AttemptStopped` once a write of ours was refused."""
        if self.stopped:
            raise AttemptStopped(self.job_id)
        self._add("delta", data)

    def last(self, data: dict[str, Any]) -> ChunkEntry:
        """The `done` entry after everything added so far, not written: the job's final
        write carries it (`JobStore.finish`)."""
        return self._entry("done", data)

    async def error(self, message: str) -> None:
        if not self.stopped:  # else it would be refused: the stream is another's now
            self._add("error", {"error": message})
        await self.close()

    async def close(self) -> None:
        """Wait until every entry is written; raises the first failed write's error."""
        if self._last_write is not None:
            # Shielded: a cancelled job must not cancel the write other streams share.
            await asyncio.shield(self._last_write)
        if self.failure is not None:
            raise self.failure

    def _add(self, kind: ChunkKind, data: dict[str, Any]) -> None:
        self._last_write = self._sink.add(self, self._entry(kind, data))

    def _entry(self, kind: ChunkKind, data: dict[str, Any]) -> ChunkEntry:
        # Not validated again: the fields are ours, and this runs for every chunk.
        entry = ChunkEntry.model_construct(
            attempt=self._attempt, seq=self._seq, kind=kind,
            data=json.dumps(data, separators=(",", ":")),
        )
        self._seq += 1
        return entry

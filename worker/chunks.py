"""Streamed chunks go to the job's Redis stream as they come: one write in flight per
stream (which keeps their order), the chunks that arrive meanwhile go with the next one.
Writes of all the process's streams share pipelines (worker/autopipeline.py). `flush_ms`
> 0 makes a stream wait that long between writes, for fewer, larger ones."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from worker.contract import ChunkEntry, ChunkKind
from worker.store import JobStore


class ChunkWriter:
    """Appends one attempt's entries (`delta` …, then `done` or `error`) in order."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, flush_ms: int) -> None:
        self._store = store
        self._job_id = job_id
        self._attempt = attempt
        self._flush_s = flush_ms / 1000
        self._buffer: list[ChunkEntry] = []
        self._seq = 0
        self._last_flush = 0.0
        self._flusher: asyncio.Task[None] | None = None
        self.written = 0

    def delta(self, data: dict[str, Any]) -> None:
        self._add("delta", data)

    async def done(self, data: dict[str, Any]) -> None:
        self._add("done", data)
        await self.close()

    async def error(self, message: str) -> None:
        self._add("error", {"error": message})
        await self.close()

    async def close(self) -> None:
        """Write whatever is buffered and wait for it."""
        if self._flusher is not None:
            await self._flusher
        await self._flush()

    def _add(self, kind: ChunkKind, data: dict[str, Any]) -> None:
        entry = ChunkEntry(
            attempt=self._attempt, seq=self._seq, kind=kind,
            data=json.dumps(data, separators=(",", ":")),
        )
        self._seq += 1
        self._buffer.append(entry)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        wait_s = self._last_flush + self._flush_s - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        await self._flush()

    async def _flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
            await self._store.append_chunks(self._job_id, batch)
            self.written += len(batch)

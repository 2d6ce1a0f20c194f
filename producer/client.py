"""The Python API: `AsyncClient` (and its sync twin `Client`) submit jobs and batches and
hand back handles to follow them. Both only need the shared Redis (and broker)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import ExitStack
from typing import Any, Self

import redis.asyncio as aioredis
from celery import Celery

from core.celery_app import create_app
from core.contract import (
    ALL_PROXIES,
    BatchRecord,
    BatchStatus,
    JobKind,
    JobRecord,
    check_job_proxy,
    check_proxy_name,
    new_id,
)
from core.dispatch import enqueue
from core.embeddings import EmbeddingsInput
from core.feed import DEFAULT_PRIORITY, check_priority
from core.keys import Keys
from core.redis_client import REDIS_RETRIES, redis_client
from core.settings import Settings
from core.store import JobStore
from modelproxy import ModelProxyCreateInput, ModelProxyUpdateInput
from modelproxy.portal import run_sync
from producer.batch_format import (
    BatchLine,
    LineError,
    check_request,
    error_line_for_invalid,
    iter_batch,
    parse_batch,
)
from producer.batches import AsyncBatch, Batch, BatchNotFoundError, enqueue_from
from producer.jobs import AsyncJob, Job
from producer.stream_reader import StreamReader

REDIS_CONNECTIONS_MAX = 1024
JSON_SEPARATORS = (",", ":")
INVALID_ROUND = 1_000  # refused lines stored per round trip


class NoRedisError(RuntimeError):
    def __init__(self) -> None:
        super().__init__("no Redis: set MPQ_REDIS_URL (or REDIS_URL)")


class BatchInvalidError(ValueError):
    """`strict=True` and some lines are invalid: nothing was submitted."""

    def __init__(self, errors: Sequence[LineError]) -> None:
        shown = "; ".join(str(e) for e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        super().__init__(f"{len(errors)} invalid line(s): {shown}{more}")
        self.errors = list(errors)


class AsyncClient:
    def __init__(self, settings: Settings | None = None, *, celery: Celery | None = None,
                 connect_retries: int = REDIS_RETRIES) -> None:
        """`connect_retries`: how long to ride out an unreachable Redis (a long-lived
        producer waits for a restart; a command line should fail fast)."""
        self.settings = settings or Settings()
        if not self.settings.redis_url:
            raise NoRedisError()
        self.keys = Keys(self.settings.key_prefix)
        # Blocking reads (job streams share one, each batch wait has its own) hold a
        # connection while they wait: room for many, beyond the worker's default.
        self._redis = redis_client(self.settings.redis_url, REDIS_CONNECTIONS_MAX,
                                   retries=connect_retries)
        self.store = JobStore(self._redis, self.keys, self.settings.result_ttl_s)
        self.celery = celery or create_app(self.settings)
        self._reader = StreamReader(self.store)

    @property
    def redis(self) -> aioredis.Redis:
        """The client's connection pool (for front doors that keep state of their own)."""
        return self._redis

    async def aclose(self) -> None:
        await self._reader.aclose()
        await self._redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- jobs ---------------------------------------------------------------------------

    async def submit(self, kind: JobKind, proxy: str, request: dict[str, Any]) -> AsyncJob:
        """Validate and enqueue one job; bad input raises `ValueError` and sends nothing."""
        check_job_proxy(kind, proxy)
        if kind in (JobKind.CHAT, JobKind.RESPONSES, JobKind.EMBEDDINGS):
            check_request(kind, request)
        elif kind not in (JobKind.MGMT_LIST, JobKind.MGMT_REFRESH):
            if not request.get("name"):
                raise ValueError(f"a {kind.value} job needs a proxy name")
            check_proxy_name(request["name"])
        (record,) = await enqueue(self.store, self.celery,
                                  [JobRecord(kind=kind, proxy=proxy, request=request)])
        return AsyncJob(self.store, record.id, self._reader)

    async def chat(self, proxy: str, messages: list[dict[str, Any]], *, model: str | None = None,
                   stream: bool = False, **params: Any) -> AsyncJob:
        request = {**params, "messages": messages, "stream": stream}
        if model:
            request["model"] = model
        return await self.submit(JobKind.CHAT, proxy, request)

    async def responses(self, proxy: str, input: str | list[dict[str, Any]], *,
                        model: str | None = None, stream: bool = False,
                        **params: Any) -> AsyncJob:
        request = {**params, "input": input, "stream": stream}
        if model:
            request["model"] = model
        return await self.submit(JobKind.RESPONSES, proxy, request)

    async def embed(self, proxy: str, input: EmbeddingsInput, *, model: str | None = None,
                    **params: Any) -> AsyncJob:
        """One embeddings job for `input` (a text, texts, or token ids); `params` as OpenAI's
        (`dimensions`, `encoding_format`). `job.embeddings()` gives the vectors."""
        request = {**params, "input": input}
        if model:
            request["model"] = model
        return await self.submit(JobKind.EMBEDDINGS, proxy, request)

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self.store, job_id, self._reader)

    # ---- proxies (management jobs) ------------------------------------------------------

    async def create_proxy(self, spec: ModelProxyCreateInput) -> AsyncJob:
        name = spec.model_proxy_name
        return await self.submit(JobKind.MGMT_CREATE, name, {"name": name,
                                                              "input": spec.to_wire()})

    async def update_proxy(self, name: str, changes: ModelProxyUpdateInput) -> AsyncJob:
        return await self.submit(JobKind.MGMT_UPDATE, name, {"name": name,
                                                              "input": changes.to_wire()})

    async def delete_proxy(self, name: str) -> AsyncJob:
        return await self.submit(JobKind.MGMT_DELETE, name, {"name": name})

    async def get_proxy(self, name: str) -> AsyncJob:
        return await self.submit(JobKind.MGMT_GET, name, {"name": name})

    async def wait_proxy(self, name: str, timeout_s: float = 300) -> AsyncJob:
        return await self.submit(JobKind.MGMT_WAIT, name, {"name": name, "timeout_s": timeout_s})

    async def list_proxies(self) -> AsyncJob:
        return await self.submit(JobKind.MGMT_LIST, ALL_PROXIES, {})

    async def refresh_proxies(self) -> AsyncJob:
        return await self.submit(JobKind.MGMT_REFRESH, ALL_PROXIES, {})

    # ---- batches ------------------------------------------------------------------------

    async def submit_batch(self, lines: Iterable[str | bytes], proxy: str | None = None, *,
                           strict: bool = False, name: str | None = None,
                           priority: int = DEFAULT_PRIORITY,
                           ) -> tuple[AsyncBatch, list[LineError]]:
        """Submit an OpenAI Batch input: JSONL lines, or a file opened for reading, read as a
        stream (a round of jobs at a time). Invalid lines are reported (and kept for the
        errors file) while the valid ones run, unless `strict`: then nothing is submitted if
        any line is invalid (a file is read twice for that, any other iterable is held in
        memory). `priority` (1-100) is the batch's weight when batches share the slots: one
        of priority 3 runs three lines for each line of a batch of priority 1. A bad default
        `proxy` or priority is bad input (`ValueError`): nothing is submitted."""
        check_priority(priority)
        if proxy is not None:
            check_proxy_name(proxy)
        errors: list[LineError] = []
        with ExitStack() as stack:
            verdicts = (await asyncio.to_thread(_strict_verdicts, lines, proxy, stack)
                        if strict else iter_batch(lines, proxy))
            batch_id = new_id()
            await self.store.open_batch(batch_id, name, [], priority=priority)
            await enqueue_from(self.store, self.celery,
                               self._batch_records(verdicts, batch_id, errors), batch_id)
        await self.store.seal_batch(batch_id)
        return AsyncBatch(self.store, batch_id), errors

    async def _batch_records(self, verdicts: Iterable[BatchLine | LineError], batch_id: str,
                             errors: list[LineError]) -> AsyncIterator[JobRecord]:
        """The jobs of the valid lines; the invalid ones go to `errors` and, a round at a
        time, to the batch's errors file."""
        invalid: list[str] = []
        for verdict in verdicts:
            if isinstance(verdict, BatchLine):
                yield JobRecord(kind=verdict.kind, proxy=verdict.proxy, request=verdict.body,
                                custom_id=verdict.custom_id)
                continue
            errors.append(verdict)
            invalid.append(_json(error_line_for_invalid(verdict)))
            if len(invalid) == INVALID_ROUND:
                await self.store.add_invalid_lines(batch_id, invalid)
                invalid = []
        await self.store.add_invalid_lines(batch_id, invalid)

    async def retry_failed(self, batch_id: str, *, name: str | None = None) -> AsyncBatch:
        """A new batch of the jobs of a finished batch that failed or were cancelled: the
        same requests, proxies and custom_ids, and its priority. `ValueError` if the batch is
        still running or has nothing to retry."""
        old = AsyncBatch(self.store, batch_id)
        info = await old.info()
        if info.status != BatchStatus.FINISHED:
            raise ValueError(f"batch {batch_id} is still running; wait for it or cancel it "
                             "first")
        records = old.retry_records()
        first = await anext(records, None)
        if first is None:
            raise ValueError(f"batch {batch_id} has no failed or cancelled jobs to retry")
        retry_id = new_id()
        await self.store.open_batch(retry_id, name or f"retry of {batch_id}", [],
                                    priority=info.priority)
        await enqueue(self.store, self.celery, [first], retry_id)
        await enqueue_from(self.store, self.celery, records, retry_id)
        await self.store.seal_batch(retry_id)
        return AsyncBatch(self.store, retry_id)

    def batch(self, batch_id: str) -> AsyncBatch:
        return AsyncBatch(self.store, batch_id)

    async def batches(self, limit: int = 20) -> list[BatchRecord]:
        """The newest batches first (those whose records expired are left out), each with
        its share of the slots if it has lines waiting to run."""
        found = []
        shares = await self.store.feed.shares()
        for batch_id in await self.store.batch_ids(limit):
            try:
                record = await AsyncBatch(self.store, batch_id).info()
            except BatchNotFoundError:
                continue
            found.append(record.model_copy(update={"share": shares.get(batch_id)}))
        return found


def _json(value: Any) -> str:
    return json.dumps(value, separators=JSON_SEPARATORS)


def _strict_verdicts(lines: Iterable[str | bytes], proxy: str | None,
                     stack: ExitStack) -> Iterable[BatchLine | LineError]:
    """The verdicts of an input with no invalid line (else `BatchInvalidError`). A file is
    checked in a first pass, then read again from where it was (a pipe is copied to a
    temporary file `stack` closes); any other input's lines are held in memory."""
    source = _rereadable(lines, stack)
    if source is None:
        parsed = parse_batch(lines, proxy)
        if parsed.errors:
            raise BatchInvalidError(parsed.errors)
        return parsed.lines
    start = source.tell()
    errors = [v for v in iter_batch(source, proxy) if isinstance(v, LineError)]
    if errors:
        raise BatchInvalidError(errors)
    source.seek(start)
    return iter_batch(source, proxy)


def _rereadable(lines: Iterable[str | bytes], stack: ExitStack) -> io.IOBase | None:
    """`lines` as a file that can be read again from here, or None if it is no file."""
    if not isinstance(lines, io.IOBase):
        return None
    if lines.seekable():
        return lines
    if isinstance(lines, io.TextIOBase):
        return None
    spool = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - the stack closes it
    shutil.copyfileobj(lines, spool)
    spool.seek(0)
    return spool


class Client:
    """The sync twin of `AsyncClient` (runs it on the portal loop)."""

    def __init__(self, settings: Settings | None = None, *,
                 connect_retries: int = REDIS_RETRIES) -> None:
        self._client = AsyncClient(settings, connect_retries=connect_retries)
        self.settings = self._client.settings

    def close(self) -> None:
        run_sync(self._client.aclose())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, kind: JobKind, proxy: str, request: dict[str, Any]) -> Job:
        return Job(run_sync(self._client.submit(kind, proxy, request)))

    def chat(self, proxy: str, messages: list[dict[str, Any]], *, model: str | None = None,
             stream: bool = False, **params: Any) -> Job:
        return Job(run_sync(self._client.chat(proxy, messages, model=model, stream=stream,
                                              **params)))

    def responses(self, proxy: str, input: str | list[dict[str, Any]], *,
                  model: str | None = None, stream: bool = False, **params: Any) -> Job:
        return Job(run_sync(self._client.responses(proxy, input, model=model, stream=stream,
                                                   **params)))

    def embed(self, proxy: str, input: EmbeddingsInput, *, model: str | None = None,
              **params: Any) -> Job:
        return Job(run_sync(self._client.embed(proxy, input, model=model, **params)))

    def job(self, job_id: str) -> Job:
        return Job(self._client.job(job_id))

    def create_proxy(self, spec: ModelProxyCreateInput) -> Job:
        return Job(run_sync(self._client.create_proxy(spec)))

    def update_proxy(self, name: str, changes: ModelProxyUpdateInput) -> Job:
        return Job(run_sync(self._client.update_proxy(name, changes)))

    def delete_proxy(self, name: str) -> Job:
        return Job(run_sync(self._client.delete_proxy(name)))

    def get_proxy(self, name: str) -> Job:
        return Job(run_sync(self._client.get_proxy(name)))

    def wait_proxy(self, name: str, timeout_s: float = 300) -> Job:
        return Job(run_sync(self._client.wait_proxy(name, timeout_s)))

    def list_proxies(self) -> Job:
        return Job(run_sync(self._client.list_proxies()))

    def refresh_proxies(self) -> Job:
        return Job(run_sync(self._client.refresh_proxies()))

    def submit_batch(self, lines: Iterable[str | bytes], proxy: str | None = None, *,
                     strict: bool = False, name: str | None = None,
                     priority: int = DEFAULT_PRIORITY) -> tuple[Batch, list[LineError]]:
        batch, errors = run_sync(self._client.submit_batch(lines, proxy, strict=strict,
                                                           name=name, priority=priority))
        return Batch(batch), errors

    def retry_failed(self, batch_id: str, *, name: str | None = None) -> Batch:
        return Batch(run_sync(self._client.retry_failed(batch_id, name=name)))

    def batch(self, batch_id: str) -> Batch:
        return Batch(self._client.batch(batch_id))

    def batches(self, limit: int = 20) -> list[BatchRecord]:
        return run_sync(self._client.batches(limit))


__all__ = ["AsyncClient", "BatchInvalidError", "Client", "NoRedisError"]

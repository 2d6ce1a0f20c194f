"""A gateway batch from creation to its end, as OpenAI's batches go:

    validating ─▶ in_progress ─▶ finalizing ─▶ completed
        │              │ └─(window passed: unfinished jobs cancelled)─▶ expired
        └─▶ failed     └──────────┬─▶ cancelling ─▶ cancelled
        └─────────────────────────┘

`create` answers at once with a `validating` batch. Everything after happens in `advance`,
run in the background by a gateway process (batch_finalizer.py) under the batch's lease
(batch_lease.py), one step per status:

- validating: check the input file (batch_input.py); a bad one fails the batch with each
  line's error; a good one becomes the mpq batch of the same id, then `in_progress`.
- in_progress: once the mpq batch has finished, `finalizing`, the files, `completed`. Once
  the window has passed, the unfinished jobs are cancelled and it ends `expired`, their
  lines with `batch_expired`; finished lines stay in the output file.
- cancelling (set by `cancel` at once): the unfinished jobs are cancelled, and it ends
  `cancelled` with the files of what there is.
- ended: its webhook (webhook.py) is called once, and it leaves the open index.

The output and error files are written before the end is recorded, and the batch gets their
ids in the same compare-and-set as its final status: a process that dies halfway leaves no
half-ended batch, and the one that takes over writes the files again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.contract import BatchStatus, JobRecord
from core.dispatch import cancel_batch
from core.feed import DEFAULT_PRIORITY, check_priority
from gateway.batch_input import batch_error, check_input, input_records
from gateway.batch_lease import batch_lease
from gateway.batch_objects import (
    REACHED_AT,
    BatchObjects,
    BatchState,
    GatewayBatch,
    WebhookState,
    live_counts,
    new_batch_id,
    request_counts,
    window_s,
)
from gateway.batch_output import discard, write_jsonl, write_results
from gateway.context import Gateway
from gateway.errors import OpenAIError, not_found
from gateway.file_store import INPUT_PURPOSE, StoredFile
from gateway.webhook import check_url, deliver
from producer.batch_format import CANCELLED_CODE, EXPIRED_CODE, URL_KINDS
from producer.batches import AsyncBatch, enqueue_from

logger = logging.getLogger(__name__)

CANCELLABLE = (BatchState.VALIDATING, BatchState.IN_PROGRESS)
RETRYABLE = (BatchState.COMPLETED, BatchState.EXPIRED, BatchState.CANCELLED)
_LIVE = frozenset({BatchState.IN_PROGRESS, BatchState.FINALIZING, BatchState.CANCELLING})
_KIND_URLS = {kind: url for url, kind in URL_KINDS.items()}


@dataclass(frozen=True)
class BatchRequest:
    """A batch to make, its fields checked (batch_routes.py)."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after_s: int | None = None


def batch_objects(gw: Gateway) -> BatchObjects:
    return BatchObjects(gw.client.redis, gw.client.keys, gw.settings.result_ttl_s)


# ---- what the routes call ------------------------------------------------------------------


async def create(gw: Gateway, owner: str, request: BatchRequest) -> GatewayBatch:
    """A new `validating` batch; the caller starts its validation (`spawn`)."""
    stored = await gw.files.get(owner, request.input_file_id)
    if stored is None:
        raise not_found("File", request.input_file_id, param="input_file_id")
    if stored.purpose != INPUT_PURPOSE:
        raise OpenAIError(400, f"The input file {stored.id} has purpose '{stored.purpose}'; "
                          f"a batch needs one uploaded with purpose '{INPUT_PURPOSE}'.",
                          param="input_file_id")
    now = time.time()
    batch = GatewayBatch(id=new_batch_id(), owner=owner, endpoint=request.endpoint,
                         input_file_id=stored.id, completion_window=request.completion_window,
                         created_at=now, expires_at=now + window_s(request.completion_window),
                         metadata=request.metadata,
                         output_expires_after_s=request.output_expires_after_s)
    await batch_objects(gw).create(batch)
    return batch


async def cancel(gw: Gateway, batch: GatewayBatch) -> GatewayBatch:
    """`cancelling` at once (the caller starts the rest: `spawn`); a batch cancelling or
    cancelled already is answered as it is, one that has ended otherwise is refused."""
    objects = batch_objects(gw)
    current: GatewayBatch | None = batch
    while current is not None:
        if current.status in (BatchState.CANCELLING, BatchState.CANCELLED):
            return current
        if current.status not in CANCELLABLE:
            raise OpenAIError(400, f"Cannot cancel a batch with status '{current.status}'; "
                              "only a validating or in_progress batch can be cancelled.")
        fields = {"status": BatchState.CANCELLING, "cancelling_at": time.time()}
        if await objects.transition(current.id, CANCELLABLE, fields):
            return current.model_copy(update=fields)
        current = await objects.load(current.id)  # it moved on meanwhile: look again
    raise not_found("Batch", batch.id)


async def retry_failed(gw: Gateway, batch: GatewayBatch, completion_window: str | None,
                       metadata: dict[str, str] | None) -> GatewayBatch:
    """A new batch of the lines of an ended batch that did not succeed (an mpq extension):
    their requests go to a new input file, each line with the proxy it ran on, and through
    the usual creation. The caller starts it (`spawn`)."""
    if batch.status not in RETRYABLE:
        raise OpenAIError(400, f"Cannot retry the failed lines of a batch with status "
                          f"'{batch.status}'; it must be completed, expired or cancelled.")
    lines = _retry_lines(AsyncBatch(gw.client.store, batch.id).retry_records())
    stored = await write_jsonl(gw.files, batch.owner, f"{batch.id}_retry.jsonl",
                               INPUT_PURPOSE, lines)
    if stored is None:
        raise OpenAIError(400, f"Batch {batch.id} has no failed lines to retry.")
    return await create(gw, batch.owner, BatchRequest(
        input_file_id=stored.id, endpoint=batch.endpoint,
        completion_window=completion_window or batch.completion_window,
        metadata=batch.metadata if metadata is None else metadata,
        output_expires_after_s=batch.output_expires_after_s))


async def _retry_lines(records: AsyncIterator[JobRecord]) -> AsyncIterator[dict[str, Any]]:
    async for record in records:
        yield {"custom_id": record.custom_id, "method": "POST", "url": _KIND_URLS[record.kind],
               "body": record.request, "proxy": record.proxy}


async def openai_objects(gw: Gateway, batches: list[GatewayBatch]) -> list[dict[str, Any]]:
    """OpenAI's objects of the batches; those still running with their live counts."""
    running = [batch.id for batch in batches
               if batch.status in _LIVE and batch.request_counts is None]
    found = await asyncio.gather(*(gw.client.store.batch(batch_id) for batch_id in running))
    records = dict(zip(running, found, strict=True))
    return [batch.to_openai(live_counts(record) if (record := records.get(batch.id)) else None)
            for batch in batches]


# ---- the background steps ------------------------------------------------------------------


async def advance(gw: Gateway, batch_id: str) -> None:
    """Take the batch one step further if there is one to take and no other process is at
    it; safe to call any time, from any process."""
    objects = batch_objects(gw)
    batch = await objects.load(batch_id)
    if batch is None:
        await objects.forget(batch_id)
        return
    if not await _due(gw, batch):
        return
    async with batch_lease(gw.client.redis, gw.client.keys, batch_id) as held:
        batch = await objects.load(batch_id) if held else None
        if batch is not None:
            await _STEPS[batch.status](gw, objects, batch)


async def _due(gw: Gateway, batch: GatewayBatch) -> bool:
    """Whether the batch may have a step to take (cheap: no lease)."""
    if batch.status is not BatchState.IN_PROGRESS:
        return True
    return (batch.expiring or time.time() >= batch.expires_at
            or await _jobs_finished(gw, batch.id))


async def _jobs_finished(gw: Gateway, batch_id: str) -> bool:
    record = await gw.client.store.batch(batch_id)
    return record is None or record.status == BatchStatus.FINISHED


Step = Callable[[Gateway, BatchObjects, GatewayBatch], Awaitable[None]]


async def _validate(gw: Gateway, objects: BatchObjects, batch: GatewayBatch) -> None:
    stored = await gw.files.get(batch.owner, batch.input_file_id)
    if stored is None:
        await _fail(gw, objects, batch, [batch_error(
            "file_not_found", f"the input file {batch.input_file_id} no longer exists",
            param="input_file_id")])
        return
    found = await check_input(gw, batch, stored)
    if not found.ok:
        await _fail(gw, objects, batch, found.listed())
        return
    current = await objects.load(batch.id)
    if current is None or current.status is not BatchState.VALIDATING:
        return  # cancelled while it was checked: the cancelling step takes it from here
    await _submit(gw, batch, stored, found.proxies)
    await objects.transition(batch.id, (BatchState.VALIDATING,),
                             {"status": BatchState.IN_PROGRESS, "in_progress_at": time.time()})


def priority_of(metadata: Mapping[str, str]) -> int:
    """A batch's `metadata.priority`: its weight when batches share the slots (core/feed.py);
    `ValueError` unless it is a whole number in range."""
    text = metadata.get("priority", str(DEFAULT_PRIORITY))
    if not text.isdigit():
        raise ValueError(f"priority must be a whole number (got {text!r})")
    check_priority(int(text))
    return int(text)


async def _submit(gw: Gateway, batch: GatewayBatch, stored: StoredFile,
                  proxies: list[str]) -> None:
    """The mpq batch of the same id, its jobs in input order. A process that took the batch
    over from one that died here adds only the jobs that one had not added (they go in
    whole rounds, each in one transaction)."""
    store = gw.client.store
    added = 0
    if await store.batch(batch.id) is None:
        await store.open_batch(batch.id, stored.filename, [],
                               priority=priority_of(batch.metadata or {}))
    else:
        added = int(await gw.client.redis.llen(gw.client.keys.batch_jobs(batch.id)))
    records = _after(input_records(gw, stored, proxies), added)
    await enqueue_from(store, gw.client.celery, records, batch.id)
    await store.seal_batch(batch.id)


async def _after(records: AsyncIterator[JobRecord], skip: int) -> AsyncIterator[JobRecord]:
    seen = 0
    async for record in records:
        seen += 1
        if seen > skip:
            yield record


async def _fail(gw: Gateway, objects: BatchObjects, batch: GatewayBatch,
                errors: list[dict[str, Any]]) -> None:
    fields = {"status": BatchState.FAILED, "failed_at": time.time(), "errors": errors,
              "request_counts": request_counts(), **_webhook_fields(batch)}
    if await objects.transition(batch.id, (BatchState.VALIDATING,), fields):
        await _after_end(gw, objects, batch.model_copy(update=fields))


async def _follow(gw: Gateway, objects: BatchObjects, batch: GatewayBatch) -> None:
    finished = await _jobs_finished(gw, batch.id)
    if not batch.expiring and not finished and time.time() >= batch.expires_at:
        # Decided once, so that a process taking over does not end it `completed` when the
        # cancelled jobs have finished the mpq batch.
        if not await objects.transition(batch.id, (BatchState.IN_PROGRESS,),
                                        {"expiring": True}):
            return
        batch = batch.model_copy(update={"expiring": True})
    if batch.expiring:
        await cancel_batch(gw.client.store, batch.id)
        if await _jobs_finished(gw, batch.id):
            await _end(gw, objects, batch, BatchState.EXPIRED, EXPIRED_CODE)
        return
    if finished:
        fields = {"status": BatchState.FINALIZING, "finalizing_at": time.time()}
        if await objects.transition(batch.id, (BatchState.IN_PROGRESS,), fields):
            await _finalize(gw, objects, batch.model_copy(update=fields))


async def _finalize(gw: Gateway, objects: BatchObjects, batch: GatewayBatch) -> None:
    await _end(gw, objects, batch, BatchState.COMPLETED, CANCELLED_CODE)


async def _cancelling(gw: Gateway, objects: BatchObjects, batch: GatewayBatch) -> None:
    store = gw.client.store
    if await store.batch(batch.id) is not None:  # none if cancelled before it was made
        await cancel_batch(store, batch.id)
        if not await _jobs_finished(gw, batch.id):
            return
    await _end(gw, objects, batch, BatchState.CANCELLED, CANCELLED_CODE)


async def _end(gw: Gateway, objects: BatchObjects, batch: GatewayBatch, to: BatchState,
               cancelled_code: str) -> None:
    """Write the files, then end the batch with them, unless it moved on meanwhile."""
    source = AsyncBatch(gw.client.store, batch.id)
    results = await write_results(gw.files, source, batch, cancelled_code)
    fields = {**results.fields(), "status": to, REACHED_AT[to]: time.time(),
              **_webhook_fields(batch)}
    if not await objects.transition(batch.id, (batch.status,), fields):
        await discard(gw.files, results)
        return
    logger.info("batch %s %s: %d completed, %d failed", batch.id, to.value, results.completed,
                results.failed)
    await _after_end(gw, objects, batch.model_copy(update=fields))


def _webhook_fields(batch: GatewayBatch) -> dict[str, Any]:
    return {"webhook": WebhookState.PENDING} if batch.webhook_url else {}


async def _ended(gw: Gateway, objects: BatchObjects, batch: GatewayBatch) -> None:
    await _after_end(gw, objects, batch)


async def _after_end(gw: Gateway, objects: BatchObjects, batch: GatewayBatch) -> None:
    """Call the batch's webhook if it has one not called yet, and close the batch."""
    url = batch.webhook_url
    if url is not None and batch.webhook is WebhookState.PENDING:
        try:
            check_url(url, gw.settings.gateway_webhook_hosts)
            delivered = await deliver(url, batch.to_openai())
        except ValueError as exc:  # the allow-list changed since the batch was made
            logger.warning("webhook of batch %s not called: %s", batch.id, exc)
            delivered = False
        state = WebhookState.DELIVERED if delivered else WebhookState.FAILED
        await objects.transition(batch.id, (batch.status,), {"webhook": state})
    await objects.close(batch)


_STEPS: dict[BatchState, Step] = {
    BatchState.VALIDATING: _validate,
    BatchState.IN_PROGRESS: _follow,
    BatchState.FINALIZING: _finalize,
    BatchState.CANCELLING: _cancelling,
    BatchState.FAILED: _ended,
    BatchState.COMPLETED: _ended,
    BatchState.EXPIRED: _ended,
    BatchState.CANCELLED: _ended,
}

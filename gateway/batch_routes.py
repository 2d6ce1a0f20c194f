"""OpenAI's Batches API: create, retrieve, list, cancel; and `retry_failed`, an mpq extension.
The lifecycle itself is in batch_lifecycle.py; these routes check what they are sent, answer
at once, and start the background work (`spawn`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from core.contract import check_proxy_name
from gateway import batch_lifecycle as lifecycle
from gateway.auth import Owner
from gateway.batch_finalizer import spawn
from gateway.batch_objects import ENDPOINTS, GatewayBatch, window_s
from gateway.context import Gateway, gateway
from gateway.errors import OpenAIError, not_found
from gateway.listing import list_object
from gateway.webhook import check_url

router = APIRouter()
GatewayDep = Annotated[Gateway, Depends(gateway)]

METADATA_MAX_PAIRS = 16
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
OUTPUT_EXPIRES_MIN_S = 3600
OUTPUT_EXPIRES_MAX_S = 30 * 24 * 3600
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = dict[MetadataKey, MetadataValue]


class OutputExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=OUTPUT_EXPIRES_MIN_S, le=OUTPUT_EXPIRES_MAX_S)


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None
    output_expires_after: OutputExpiresAfter | None = None


class RetryFailed(BaseModel):
    """Optional changes for the new batch; by default it has the old one's."""

    model_config = ConfigDict(extra="forbid")

    completion_window: str | None = None
    metadata: Metadata | None = None


def _checked_window(gw: Gateway, completion_window: str) -> str:
    try:
        seconds = window_s(completion_window)
    except ValueError as exc:
        raise OpenAIError(400, str(exc), param="completion_window") from None
    if seconds > gw.settings.result_ttl_s:
        raise OpenAIError(400, f"completion_window is longer than the retention of results "
                          f"({gw.settings.result_ttl_s} s)", param="completion_window")
    return completion_window


def _checked_metadata(gw: Gateway, metadata: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's limits, and our keys: `proxy` (a proxy name), `webhook_url` (a URL on the
    allow-list) and `priority` (the batch's weight, 1-100)."""
    if metadata is None:
        return None
    if len(metadata) > METADATA_MAX_PAIRS:
        raise OpenAIError(400, f"metadata has {len(metadata)} pairs; at most "
                          f"{METADATA_MAX_PAIRS} are allowed", param="metadata")
    try:
        if "proxy" in metadata:
            check_proxy_name(metadata["proxy"])
    except ValueError as exc:
        raise OpenAIError(400, str(exc), param="metadata.proxy") from None
    try:
        if "webhook_url" in metadata:
            check_url(metadata["webhook_url"], gw.settings.gateway_webhook_hosts)
    except ValueError as exc:
        raise OpenAIError(400, str(exc), param="metadata.webhook_url") from None
    try:
        if "priority" in metadata:
            lifecycle.priority_of(metadata)
    except ValueError as exc:
        raise OpenAIError(400, str(exc), param="metadata.priority") from None
    return metadata


async def _owned(gw: Gateway, owner: str, batch_id: str) -> GatewayBatch:
    batch = await lifecycle.batch_objects(gw).get(owner, batch_id)
    if batch is None:
        raise not_found("Batch", batch_id, param="batch_id")
    return batch


async def _answer(gw: Gateway, batch: GatewayBatch) -> dict[str, Any]:
    (found,) = await lifecycle.openai_objects(gw, [batch])
    return found


@router.post("/batches")
async def create_batch(body: CreateBatch, owner: Owner, gw: GatewayDep) -> dict[str, Any]:
    if body.endpoint not in ENDPOINTS:
        raise OpenAIError(400, f"Invalid value for 'endpoint': {body.endpoint[:80]!r}; mpq "
                          f"supports {', '.join(ENDPOINTS)}.", param="endpoint")
    request = lifecycle.BatchRequest(
        input_file_id=body.input_file_id, endpoint=body.endpoint,
        completion_window=_checked_window(gw, body.completion_window),
        metadata=_checked_metadata(gw, body.metadata),
        output_expires_after_s=body.output_expires_after.seconds
        if body.output_expires_after else None)
    batch = await lifecycle.create(gw, owner, request)
    spawn(gw, batch.id)
    return batch.to_openai()


@router.get("/batches")
async def list_batches(
    owner: Owner, gw: GatewayDep, after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
) -> dict[str, Any]:
    page = await lifecycle.batch_objects(gw).page(owner, after, limit)
    if page is None:  # `after` is no batch of this key's
        raise not_found("Batch", after or "", param="after")
    batches, has_more = page
    return list_object(await lifecycle.openai_objects(gw, batches), has_more)


@router.get("/batches/{batch_id}")
async def retrieve_batch(batch_id: str, owner: Owner, gw: GatewayDep) -> dict[str, Any]:
    batch = await _owned(gw, owner, batch_id)
    if not batch.status.ended:
        spawn(gw, batch.id)  # a poll may find it ready for its next step
    return await _answer(gw, batch)


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, owner: Owner, gw: GatewayDep) -> dict[str, Any]:
    batch = await lifecycle.cancel(gw, await _owned(gw, owner, batch_id))
    spawn(gw, batch.id)
    return await _answer(gw, batch)


@router.post("/batches/{batch_id}/retry_failed")
async def retry_failed(batch_id: str, owner: Owner, gw: GatewayDep,
                       body: Annotated[RetryFailed | None, Body()] = None) -> dict[str, Any]:
    changes = body or RetryFailed()
    window = (None if changes.completion_window is None
              else _checked_window(gw, changes.completion_window))
    batch = await lifecycle.retry_failed(gw, await _owned(gw, owner, batch_id), window,
                                         _checked_metadata(gw, changes.metadata))
    spawn(gw, batch.id)
    return batch.to_openai()

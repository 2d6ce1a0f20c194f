"""Gateway batches in Redis: OpenAI's batch object, its owner and the gateway's own state, one
hash per batch (``gw:batch:{id}``), indexed per owner by creation time (``gw:batches:{owner}``,
for listing) and, until it has ended, in ``gw:batches:open`` by expiry time (what every
process's finalizer loop looks at).

A gateway batch is also an mpq batch with the same id: while it runs, its `request_counts`
are read from that batch's counters; when it ends they are frozen here with its files and
usage. Every change of status goes through `BatchObjects.transition`, a compare-and-set on
the status, so that processes acting on one batch at once cannot undo each other's moves.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Self

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict
from redis.typing import EncodableT, FieldT

from core.contract import BatchRecord, JobStatus, RedisHash, decode_hash
from core.keys import Keys

ID_PREFIX = "batch_"
ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
OPENAI_WINDOW = "24h"
# `completion_window`: OpenAI's "24h", and as our extension any whole number of seconds,
# minutes or hours ("90s", "30m", "48h"), e.g. for a short test of expiry.
_WINDOW = re.compile(r"([1-9][0-9]{0,8})([smh])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
_TRANSITION = (Path(__file__).parent / "lua" / "batch_transition.lua").read_text(
    encoding="utf-8")


class BatchState(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({BatchState.FAILED, BatchState.COMPLETED, BatchState.EXPIRED,
                    BatchState.CANCELLED})
# The timestamp field each status sets when the batch reaches it (expires_at is set at once).
REACHED_AT = {BatchState.IN_PROGRESS: "in_progress_at", BatchState.FINALIZING: "finalizing_at",
              BatchState.COMPLETED: "completed_at", BatchState.FAILED: "failed_at",
              BatchState.EXPIRED: "expired_at", BatchState.CANCELLING: "cancelling_at",
              BatchState.CANCELLED: "cancelled_at"}


class WebhookState(StrEnum):
    PENDING = "pending"  # the batch ended; its webhook is still to be called
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt failed, or the host is no longer allowed


def new_batch_id() -> str:
    return f"{ID_PREFIX}{secrets.token_hex(16)}"


def window_s(text: str) -> int:
    """The seconds of a `completion_window` ("24h", "90s"...); ValueError for anything else."""
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise ValueError(f"completion_window must be '{OPENAI_WINDOW}' (or, as an mpq "
                         f"extension, a whole number of s, m or h such as '90s'), not "
                         f"{text[:40]!r}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def request_counts(total: int = 0, completed: int = 0, failed: int = 0) -> dict[str, int]:
    return {"total": total, "completed": completed, "failed": failed}


def live_counts(record: BatchRecord) -> dict[str, int]:
    """OpenAI's counts of a running mpq batch: completed succeeded, the others failed."""
    failed = record.counts.get(JobStatus.FAILED, 0) + record.counts.get(JobStatus.CANCELLED, 0)
    return request_counts(record.total, record.counts.get(JobStatus.SUCCEEDED, 0), failed)


def zero_usage() -> dict[str, Any]:
    return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def add_usage(total: dict[str, Any], usage: Any) -> None:
    """Add one answer's usage to a batch's: chat and embeddings name their tokens
    prompt/completion, the Responses API input/output; a total the answer leaves out is the
    sum of its parts."""
    if not isinstance(usage, dict):
        return
    input_tokens = _count(usage.get("input_tokens", usage.get("prompt_tokens")))
    output_tokens = _count(usage.get("output_tokens", usage.get("completion_tokens")))
    input_details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details")
    output_details = (usage.get("output_tokens_details")
                      or usage.get("completion_tokens_details"))
    total["input_tokens"] += input_tokens
    total["output_tokens"] += output_tokens
    total["total_tokens"] += _count(usage.get("total_tokens")) or input_tokens + output_tokens
    if isinstance(input_details, dict):
        total["input_tokens_details"]["cached_tokens"] += _count(input_details.get(
            "cached_tokens"))
    if isinstance(output_details, dict):
        total["output_tokens_details"]["reasoning_tokens"] += _count(output_details.get(
            "reasoning_tokens"))


def _at(value: float | None) -> int | None:
    return None if value is None else int(value)


class GatewayBatch(BaseModel):
    """One gateway batch: what OpenAI's object shows, and what only the gateway needs."""

    model_config = ConfigDict(extra="ignore")

    JSON_FIELDS: ClassVar[frozenset[str]] = frozenset({"errors", "metadata", "request_counts",
                                                       "usage"})

    id: str
    owner: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchState = BatchState.VALIDATING
    created_at: float
    expires_at: float
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None  # why validation failed, line by line
    metadata: dict[str, str] | None = None
    request_counts: dict[str, int] | None = None  # frozen when the batch ends
    usage: dict[str, Any] | None = None  # summed when the batch ends
    output_expires_after_s: int | None = None  # for the output and error files
    expiring: bool = False  # the window passed: its unfinished jobs are being cancelled
    webhook: WebhookState | None = None

    @property
    def webhook_url(self) -> str | None:
        return (self.metadata or {}).get("webhook_url")

    def to_openai(self, counts: dict[str, int] | None = None) -> dict[str, Any]:
        """OpenAI's batch object; `counts` are the live counts of a batch still running."""
        errors = None if self.errors is None else {"object": "list", "data": self.errors}
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": errors,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status.value, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": int(self.created_at),
            "in_progress_at": _at(self.in_progress_at), "expires_at": int(self.expires_at),
            "finalizing_at": _at(self.finalizing_at), "completed_at": _at(self.completed_at),
            "failed_at": _at(self.failed_at), "expired_at": _at(self.expired_at),
            "cancelling_at": _at(self.cancelling_at), "cancelled_at": _at(self.cancelled_at),
            "request_counts": self.request_counts or counts or request_counts(),
            "metadata": self.metadata, "usage": self.usage or zero_usage(),
        }

    def to_redis(self) -> dict[str, str]:
        return fields_to_redis(self.model_dump(mode="json", exclude={"id"}))

    @classmethod
    def from_redis(cls, batch_id: str, raw: RedisHash) -> Self:
        fields: dict[str, Any] = decode_hash(raw)
        for name in cls.JSON_FIELDS & fields.keys():
            with contextlib.suppress(ValueError):
                fields[name] = json.loads(fields[name])
        return cls.model_validate({**fields, "id": batch_id})


def fields_to_redis(fields: dict[str, Any]) -> dict[str, str]:
    """Hash fields as text: JSON for the nested ones, "1"/"0" for flags; None left out."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name in GatewayBatch.JSON_FIELDS:
            out[name] = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, bool):
            out[name] = "1" if value else "0"
        else:
            out[name] = str(value)
    return out


def _mapping(fields: dict[str, str]) -> dict[FieldT, EncodableT]:
    """The same fields, typed as redis-py's stubs want them."""
    return {name: value for name, value in fields.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _valid_id(batch_id: str) -> bool:
    return batch_id.startswith(ID_PREFIX) and ":" not in batch_id


class BatchObjects:
    """The gateway batches of one key prefix."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, retention_s: int) -> None:
        self._redis = redis
        self._keys = keys
        self.retention_s = retention_s
        self._transition = redis.register_script(_TRANSITION)

    async def create(self, batch: GatewayBatch) -> None:
        key = self._keys.gateway_batch(batch.id)
        index = self._keys.gateway_batches(batch.owner)
        # Kept until its window has passed and its results have had their retention.
        # Windows are at most the retention, so the index outlives every batch it lists.
        ttl = int(batch.expires_at - batch.created_at) + self.retention_s
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=_mapping(batch.to_redis()))
            pipe.expire(key, ttl)
            pipe.zadd(index, {batch.id: batch.created_at})
            pipe.expire(index, 2 * self.retention_s)
            pipe.zadd(self._keys.gateway_open_batches(), {batch.id: batch.expires_at})
            await pipe.execute()

    async def load(self, batch_id: str) -> GatewayBatch | None:
        if not _valid_id(batch_id):
            return None
        raw = await self._redis.hgetall(self._keys.gateway_batch(batch_id))
        return GatewayBatch.from_redis(batch_id, raw) if raw else None

    async def get(self, owner: str, batch_id: str) -> GatewayBatch | None:
        """The batch, or None if there is none of that id or it is another key's."""
        batch = await self.load(batch_id)
        return batch if batch is not None and batch.owner == owner else None

    async def transition(self, batch_id: str, allowed: tuple[BatchState, ...],
                         fields: dict[str, Any]) -> bool:
        """Set `fields` (a new `status` among them, usually) only if the batch is in one of
        the `allowed` statuses; False if it is not (someone else moved it)."""
        args: list[EncodableT] = [len(allowed), *(state.value for state in allowed)]
        for name, value in fields_to_redis(fields).items():
            args += [name, value]
        done = await self._transition(keys=[self._keys.gateway_batch(batch_id)], args=args)
        return bool(done)

    async def close(self, batch: GatewayBatch) -> None:
        """The batch has ended and nothing is left to do for it: out of the open index, and
        kept for the retention from now."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._keys.gateway_open_batches(), batch.id)
            pipe.expire(self._keys.gateway_batch(batch.id), self.retention_s)
            await pipe.execute()

    async def forget(self, batch_id: str) -> None:
        """Drop an id from the open index (its batch expired from Redis)."""
        await self._redis.zrem(self._keys.gateway_open_batches(), batch_id)

    async def open_ids(self) -> list[str]:
        """Batches not closed yet, soonest expiry first."""
        return [_text(i) for i in await self._redis.zrange(self._keys.gateway_open_batches(),
                                                          0, -1)]

    async def page(self, owner: str, after: str | None, limit: int,
                   ) -> tuple[list[GatewayBatch], bool] | None:
        """The key's batches newest first, after the batch `after`, at most `limit`, and
        whether there are more; None if `after` is not one of the key's batches."""
        index = self._keys.gateway_batches(owner)
        start = 0
        if after is not None:
            rank = await self._redis.zrevrank(index, after)
            if not isinstance(rank, int):
                return None
            start = rank + 1
        found: list[GatewayBatch] = []
        while len(found) <= limit:
            ids = [_text(i) for i in await self._redis.zrevrange(index, start,
                                                                 start + limit)]
            if not ids:
                break
            found += await self._load_listed(index, ids)
            start += len(ids)
        return found[:limit], len(found) > limit

    async def _load_listed(self, index: str, ids: list[str]) -> list[GatewayBatch]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for batch_id in ids:
                pipe.hgetall(self._keys.gateway_batch(batch_id))
            replies = await pipe.execute()
        gone = [batch_id for batch_id, raw in zip(ids, replies, strict=True) if not raw]
        if gone:
            await self._redis.zrem(index, *gone)
        return [GatewayBatch.from_redis(batch_id, raw)
                for batch_id, raw in zip(ids, replies, strict=True) if raw]

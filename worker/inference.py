"""Inference jobs: chat completions and the Responses API, streamed or not, and embeddings.

Before the call: a cluster-wide permit (requests, estimated tokens, concurrency). During:
its concurrency slot is renewed with the job's lease. After: the slot is released and the
token estimate reconciled with real usage.
Streamed chunks go to the job's Redis stream as they arrive.

An error status from the upstream model leaves as `UpstreamRefused` around its `HTTPError`,
so that the job record can keep what the model said (worker/upstream.py).

Hard limits per attempt (settings): the upstream call's total time, a non-streamed body's
bytes, a stream's bytes and events. Past one the attempt ends with a `LimitExceededError`,
never retried: the worker holds no more than the limit, and the slot is free again.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

from core.contract import ChunkEntry, JobKind, JobRecord
from core.keys import LimiterKeys
from core.settings import Settings
from modelproxy import Status
from modelproxy.data import AnswerStream, DataAPI, ResponseLimits, chat_body, responses_body
from modelproxy.errors import ConflictError, HTTPError
from modelproxy.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    ResponseObject,
    ResponseStreamEvent,
)
from modelproxy.sse import RESPONSE_END_EVENTS
from modelproxy.transport import deadline
from worker.chunks import ChunkWriter
from worker.embeddings import embed, embeddings_request
from worker.proxy_cache import CachedProxy
from worker.ratelimit import Limits, Permit, estimate_input_tokens, estimate_tokens, merge_limits
from worker.runtime import Runtime
from worker.upstream import UpstreamRefused

UNLIMITED = Limits()
TRANSITIONAL = frozenset({Status.CREATING.value, Status.UPDATING.value})


LINE_PERMIT_MAX_WAIT_S = 0.2


class NoPermit(Exception):
    """The rate limiter asks for a wait longer than a slot should be held. Raised only before
    the upstream call: the runner then gives the attempt's number back (no try was made)."""

    def __init__(self, wait_s: float, reason: str) -> None:
        super().__init__(f"waiting {wait_s:.1f} s for a {reason} permit")
        self.wait_s = wait_s


class ProxyNotReady(ConflictError):
    """The proxy is still CREATING/UPDATING: worth another attempt later."""

    retryable = True


@dataclass(frozen=True)
class JobResult:
    """What a successful attempt hands to the job's final write."""

    result: dict[str, Any]
    usage: dict[str, Any] | None = None
    last_chunk: ChunkEntry | None = None  # a stream's `done`, written with the final state
    vectors: bytes = b""  # an embeddings job's, stored apart with the final state
    request_id: str | None = None  # the upstream's, of the answer


def response_limits(settings: Settings) -> ResponseLimits:
    """The caps of one upstream answer, from settings."""
    return ResponseLimits(max_body_bytes=settings.max_response_bytes,
                          max_stream_bytes=settings.max_stream_bytes,
                          max_stream_events=settings.max_stream_chunks)


def configured_limits(settings: Settings) -> Limits:
    """The per-proxy limits from settings (merged with each proxy's declared policies)."""
    return _configured_limits(settings.requests_per_minute, settings.tokens_per_minute,
                              settings.max_concurrency)


# Limits are frozen models: every job asks for the same few, so they are made once.
@lru_cache(maxsize=16)
def _configured_limits(rpm: int | None, tpm: int | None, concurrency: int | None) -> Limits:
    return Limits(requests_per_minute=rpm, tokens_per_minute=tpm, max_concurrency=concurrency)


@lru_cache(maxsize=1024)
def _merged_limits(configured: Limits, declared: Limits) -> Limits:
    return merge_limits(configured, declared)


async def run_inference(rt: Runtime, job: JobRecord, attempt: int) -> JobResult:
    proxy = await rt.cache.get(job.proxy)
    if proxy.status in TRANSITIONAL:
        await rt.cache.invalidate(job.proxy)
        raise ProxyNotReady(f"proxy {job.proxy} is {proxy.status}", status_code=409)
    body = _request_body(job, proxy)
    limits = _merged_limits(configured_limits(rt.settings), proxy.declared_limits())
    key = rt.keys.limiter(proxy.name)
    if limits == UNLIMITED:
        # Nothing to count, but a shared cool-down after a 429 still applies.
        remaining_s = await rt.limiter.recent_cooldown_s(key)
        if remaining_s > 0:
            rt.metrics.permit_requeued(proxy.name)
            raise NoPermit(remaining_s, "cooldown")
        return await _call(rt, job, attempt, proxy.name, body)
    cost = _estimate(job.kind, body)
    asked = time.monotonic()
    # A batch line waits in its slot only briefly: a longer wait gives it back to its flow
    # and pauses its proxy, so the slot goes to a line that can run (core/feed.py).
    max_wait_s = rt.settings.permit_max_wait_s if job.batch_id is None else min(
        rt.settings.permit_max_wait_s, LINE_PERMIT_MAX_WAIT_S)
    permit = await rt.limiter.wait_for_permit(
        key, limits, cost, f"{job.id}:{attempt}", rt.leases.hold_ttl_s, max_wait_s)
    if not isinstance(permit, Permit):
        rt.metrics.permit_requeued(proxy.name, time.monotonic() - asked)
        raise NoPermit(permit.wait_s, permit.reason)
    rt.metrics.permit(proxy.name, time.monotonic() - asked)
    outcome: JobResult | None = None
    try:
        with _slot_renewed(rt, job, attempt, key=key, permit=permit, limits=limits):
            outcome = await _call(rt, job, attempt, proxy.name, body)
        return outcome
    finally:
        used = _used_tokens(job.kind, outcome.usage) if outcome else None
        await rt.limiter.settle(key, permit.lease_id, limits, 0 if used is None else used - cost)


def _slot_renewed(
    rt: Runtime, job: JobRecord, attempt: int, *, key: LimiterKeys, permit: Permit, limits: Limits
) -> AbstractContextManager[None]:
    """Keep the permit's concurrency slot while the call runs, however long it streams."""
    if limits.max_concurrency is None:
        return nullcontext()  # no slot was taken
    renew = partial(rt.limiter.queue_renew, keys=key, lease_id=permit.lease_id,
                    lease_ttl_s=rt.leases.hold_ttl_s)
    return rt.leases.holding(job.id, attempt, renew)


def _request_body(job: JobRecord, proxy: CachedProxy) -> dict[str, Any]:
    request = dict(job.request)
    model = request.pop("model", None) or proxy.model
    stream = bool(request.pop("stream", False))
    if job.kind == JobKind.CHAT:
        return chat_body(request.pop("messages", []), model, stream=stream, **request)
    if job.kind == JobKind.EMBEDDINGS:
        return embeddings_request(request, model)
    return responses_body(request.pop("input", ""), model, stream=stream, **request)


def _estimate(kind: JobKind, body: dict[str, Any]) -> int:
    """Tokens to ask a permit for; an embeddings call has input tokens only."""
    if kind == JobKind.EMBEDDINGS:
        return estimate_input_tokens(body.get("input"))
    return estimate_tokens(body)


def _used_tokens(kind: JobKind, usage: dict[str, Any] | None) -> int | None:
    if not usage:
        return None
    used = usage.get("prompt_tokens" if kind == JobKind.EMBEDDINGS else "total_tokens")
    return int(used) if isinstance(used, int) else None


async def _call(
    rt: Runtime, job: JobRecord, attempt: int, proxy: str, body: dict[str, Any]
) -> JobResult:
    try:
        return await _answer(rt, job, attempt, proxy, body)
    except HTTPError as exc:  # nothing but the inference call answers here
        raise UpstreamRefused(exc) from exc


async def _answer(
    rt: Runtime, job: JobRecord, attempt: int, proxy: str, body: dict[str, Any]
) -> JobResult:
    data = rt.data_apis.get(proxy)
    if data is None:
        data = rt.data_apis[proxy] = DataAPI(proxy, rt.config, response_limits(rt.settings))
    timeout_s = rt.settings.attempt_timeout_s
    if job.kind == JobKind.EMBEDDINGS:
        async with deadline(timeout_s, "attempt"):
            embedded = await embed(data, body)
        return JobResult(embedded.result, embedded.usage, vectors=embedded.vectors,
                         request_id=embedded.request_id)
    if not body.get("stream"):
        async with deadline(timeout_s, "attempt"):
            answer = await _reply(data, job.kind, body)
        reply = answer.model_dump(exclude_none=True)
        return JobResult(reply, reply.get("usage"), request_id=answer.request_id)
    writer = rt.chunks.writer(job.id, attempt)
    try:
        async with deadline(timeout_s, "attempt"):
            if job.kind == JobKind.CHAT:
                result = await _stream_chat(data.chat_stream(body), writer)
            else:
                result = await _stream_responses(data.responses_stream(body), writer)
        await writer.close()  # every delta is in before the final state and its `done`
    except BaseException as exc:
        await writer.error(str(exc) or type(exc).__name__)
        rt.metrics.stream_chunks(proxy, writer.written)
        raise
    rt.metrics.stream_chunks(proxy, writer.written + 1)
    done = writer.last({"finish_reason": _finish_reason(result), "usage": result.usage})
    return dataclasses.replace(result, last_chunk=done)


async def _reply(
    data: DataAPI, kind: JobKind, body: dict[str, Any]
) -> ChatCompletion | ResponseObject:
    if kind == JobKind.CHAT:
        return await data.chat(body)
    return await data.responses(body)


def _finish_reason(result: JobResult) -> str | None:
    choices = result.result.get("choices") or [{}]
    reason = choices[0].get("finish_reason")
    return str(reason) if reason else result.result.get("status")


async def _stream_chat(
    chunks: AnswerStream[ChatCompletionChunk], writer: ChunkWriter
) -> JobResult:
    text: list[str] = []
    last: ChatCompletionChunk | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    async for chunk in chunks:
        last = chunk
        finish_reason = chunk.finish_reason or finish_reason
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        if chunk.text:
            text.append(chunk.text)
            writer.delta({"text": chunk.text})
    result = {
        "id": last.id if last else "",
        "object": "chat.completion",
        "created": last.created if last else 0,
        "model": last.model if last else "",
        "choices": [{"index": 0, "finish_reason": finish_reason,
                     "message": {"role": "assistant", "content": "".join(text)}}],
        "usage": usage,
    }
    return JobResult(result, usage, request_id=chunks.request_id)


async def _stream_responses(
    events: AnswerStream[ResponseStreamEvent], writer: ChunkWriter
) -> JobResult:
    final: dict[str, Any] = {}
    async for event in events:
        if event.text:
            writer.delta({"text": event.text})
        if event.response is not None and event.type in RESPONSE_END_EVENTS:
            final = event.response.model_dump(exclude_none=True)
    return JobResult(final, final.get("usage"), request_id=events.request_id)

"""Direct calls: `POST /v1/chat/completions`, `/v1/responses`, `/v1/embeddings` as interactive
jobs answered when the job ends (or streamed as it runs), and `GET /v1/models`.

A call is checked (400), routed to a proxy by its model (routing.py), admitted (429 past the
limit of calls in flight, backpressure.py), submitted, then answered with the upstream's own
body. `x-request-id` is the job's id (`mpq job status` finds it), `x-upstream-request-id` the
upstream's. A client that leaves cancels its job; so does the call timeout (504).

A stream's answer starts only once its first text (or its end) is there, so an error before
it is an ordinary JSON answer with its status; after that, errors are sent as events.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from core.contract import JobKind, JobRecord, JobStatus
from gateway.auth import Owner
from gateway.context import Gateway, gateway
from gateway.direct_call import ClientGone, DirectCall, Failure, outcome
from gateway.errors import OpenAIError, error_body
from gateway.proxy_directory import Snapshot
from gateway.responses_stream import ResponseEvents
from gateway.routing import PROXY_HEADER, resolve_proxy
from gateway.sse_relay import (
    DIVERGED_CODE,
    ChatChunks,
    Frames,
    Pieces,
    StreamDiverged,
    StreamEnd,
    TextRelay,
    final_attempt_text,
)
from producer.batch_format import check_request

router = APIRouter()
GatewayDep = Annotated[Gateway, Depends(gateway)]
CLIENT_CLOSED = 499  # never seen by the client: it has gone
_PARAM = re.compile(r'"body\.([^"]+)"')
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
Relayed = AsyncGenerator[Pieces, None]  # the final attempt's text, then its end


# The call routes take the `Gateway` from the request rather than as a dependency, and
# answer with a `Response` (nothing for FastAPI to validate or encode): every dependency and
# every model costs FastAPI time on each call.


@router.post("/chat/completions")
async def chat_completions(request: Request, _: Owner) -> Response:
    return await _direct(request, await gateway(request), JobKind.CHAT)


@router.post("/responses")
async def responses(request: Request, _: Owner) -> Response:
    return await _direct(request, await gateway(request), JobKind.RESPONSES)


@router.post("/embeddings")
async def embeddings(request: Request, _: Owner) -> Response:
    return await _direct(request, await gateway(request), JobKind.EMBEDDINGS)


@router.get("/models")
async def list_models(_: Owner, gw: GatewayDep) -> JSONResponse:
    return JSONResponse({"object": "list", "data": _models(await _known(gw))})


@router.get("/models/{model:path}")
async def retrieve_model(model: str, _: Owner, gw: GatewayDep) -> JSONResponse:
    found = [entry for entry in _models(await _known(gw)) if entry["id"] == model]
    if not found:
        raise OpenAIError(404, f"The model '{model}' does not exist or no proxy serves it.",
                          param="model", code="model_not_found")
    return JSONResponse(found[0])


async def _known(gw: Gateway) -> Snapshot:
    snapshot = await gw.proxies.snapshot()
    if not snapshot.proxies and await gw.proxies.refresh(gw.client):
        snapshot = await gw.proxies.snapshot()
    return snapshot


def _models(snapshot: Snapshot) -> list[dict[str, Any]]:
    """One entry per model and proxy serving it (a model two proxies serve is listed twice:
    its calls must name the proxy)."""
    created = {proxy.name: proxy.created for proxy in snapshot.proxies}
    return [{"id": model, "object": "model", "created": created[name], "owned_by": name}
            for model, names in sorted(snapshot.models().items()) for name in names]


# ---- calls ---------------------------------------------------------------------------------


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    return body


def _check(kind: JobKind, body: dict[str, Any]) -> bool:
    """Whether the call streams; `OpenAIError` 400 naming the field that is wrong."""
    try:
        check_request(kind, body)
    except ValueError as exc:
        match = _PARAM.search(str(exc))
        message = str(exc).replace('"body.', '"')
        raise OpenAIError(400, message, param=match.group(1) if match else None) from None
    stream = body.get("stream") is True
    if stream and (body.get("tools") or body.get("functions")):
        # The job's stream carries text only: tool calls would be lost on the way.
        raise OpenAIError(400, "Streaming a reply with tools is not supported by mpq: call "
                          "without stream.", param="stream")
    return stream


async def _direct(request: Request, gw: Gateway, kind: JobKind) -> Response:
    body = await _body(request)
    stream = _check(kind, body)
    model = body.get("model")
    proxy = await resolve_proxy(gw, model if isinstance(model, str) else None,
                                request.headers.get(PROXY_HEADER))
    call = await DirectCall.start(gw, kind, proxy, body)
    if stream:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return await _stream(request, call, kind, str(model or proxy), include_usage)
    try:
        record = await call.race(request, outcome(call.job))
    except BaseException as exc:
        return await _unanswered(call, exc)
    call.finished = True
    # The slot is freed once the answer is sent: the client does not wait for that.
    freed = BackgroundTask(call.end)
    if record.result is None or record.status is not JobStatus.SUCCEEDED:
        return Failure.of(record).response(call.headers(record), freed)
    return JSONResponse(record.result, headers=call.headers(record), background=freed)


async def _unanswered(call: DirectCall, exc: BaseException) -> Response:
    """The call lost its race (`DirectCall.race`): its job is ended; a client that left gets
    499, a passed deadline 504, and anything else is raised again."""
    await call.end()
    if isinstance(exc, ClientGone):
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(exc, TimeoutError):
        raise call.timed_out() from None
    raise exc


# ---- streams -------------------------------------------------------------------------------


def _frames(kind: JobKind, call: DirectCall, model: str, include_usage: bool) -> Frames:
    created = int(time.time())
    if kind == JobKind.CHAT:
        return ChatChunks(f"chatcmpl-{call.job.id}", created, model, include_usage)
    return ResponseEvents(call.job.id, model, created)


async def _stream(request: Request, call: DirectCall, kind: JobKind, model: str,
                  include_usage: bool) -> Response:
    """Wait for the first text (or the end) as a plain call, then relay the rest as SSE."""
    relay = TextRelay()
    timeout_s = call.deadline - asyncio.get_running_loop().time()
    relayed = final_attempt_text(call.job.stream_batches(timeout=timeout_s), relay)
    try:
        first = await call.race(request, anext(relayed, None))
    except BaseException as exc:
        await _close(relayed)
        return await _unanswered(call, exc)
    if first is None:  # the job ended with no text: answered as a plain call
        record = await call.job.record()
        call.finished = True
        await _close(relayed)
        await call.end()
        return Failure.of(record).response(call.headers(record))
    frames = _frames(kind, call, model, include_usage)
    return StreamingResponse(_relay(call, relayed, first, frames, relay), headers={
        **call.headers(), **_STREAM_HEADERS}, media_type="text/event-stream")


async def _relay(call: DirectCall, relayed: Relayed, first: Pieces, frames: Frames,
                 relay: TextRelay) -> AsyncIterator[bytes]:
    """The SSE body, one write for the pieces that arrived together (not one each: every
    write is an HTTP frame and a send call); on any end (the client leaving included) the
    call is ended. The job's stream raises `TimeoutError` at the call's deadline."""
    try:
        out = frames.start()
        pieces: Pieces | None = first
        while pieces is not None:
            out += b"".join([frames.text(piece) for piece in pieces if isinstance(piece, str)])
            if isinstance(pieces[-1], StreamEnd):
                break
            yield out
            out = b""
            try:
                pieces = await anext(relayed, None)
            except TimeoutError:
                yield frames.error(call.timed_out().body()["error"])
                return
            except StreamDiverged as exc:
                yield frames.error(error_body(str(exc), "server_error",
                                              code=DIVERGED_CODE)["error"])
                return
        if out:
            yield out
        record = await call.job.record()
        call.finished = record.status.is_final
        yield _last(frames, pieces[-1] if pieces else None, record, relay.sent)
    finally:
        await _close(relayed)
        await call.end()


def _last(frames: Frames, end: str | StreamEnd | None, record: JobRecord, text: str) -> bytes:
    if not isinstance(end, StreamEnd):  # the job failed or was cancelled after text was sent
        return frames.error(Failure.of(record).error)
    return frames.end(end.data, record.result or {}, text)


async def _close(relayed: Relayed) -> None:
    with anyio.CancelScope(shield=True):
        await relayed.aclose()

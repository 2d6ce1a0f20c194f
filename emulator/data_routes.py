"""The data plane: `POST /models/{name}/v1/chat/completions`, `.../v1/responses` and
`.../v1/embeddings`.

Order of checks, as a gateway answers: auth (dependency), 404 unknown proxy, 409 proxy not
READY, 400 bad body or model, injected error faults, 429 from the proxy's policies, then the
synthetic model's answer, paced by `ttft_s` (before the first token) and `tpot_s` (before
each later token), whole or as SSE with one frame per token. Its length is the proxy's or the
emulator's `reply_tokens` when set (else short and varying), cut by the request's max tokens.
A runaway fault (`emulator.faults`) sends it padded, endless or dripping instead.

Every answer of these routes, error or not, carries `x-request-id`: the id an OpenAI-compatible
model server gives each request (`req_` and 32 hex digits), besides AgentRun's own
`x-acs-request-id` (added to every answer by `emulator.middleware`).

Embeddings take the same path, with no stream: their prompt tokens count against the token
limits, they hold a concurrency slot for `ttft_s` (one forward pass), and their vectors are
`settings.dimensions_of(model)` long unless the request asks for fewer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from emulator.auth import require_data_auth
from emulator.embeddings import input_tokens, unit_vector
from emulator.faults import (
    FaultPlan,
    FaultSource,
    StreamCut,
    quiet_stream_cuts,
    runaway_body,
    runaway_frames,
)
from emulator.openai_errors import WireError
from emulator.openai_models import OpenAIError
from emulator.openai_requests import (
    InferenceRequest,
    output_dimensions,
    parse_embeddings,
    parse_json,
    resolve_model,
)
from emulator.openai_wire import (
    CHAT_API,
    RESPONSES_API,
    Api,
    Frame,
    Reply,
    embedding_list,
    json_bytes,
    new_reply,
)
from emulator.policies import Lease, PolicyRegistry, Rejection, retry_after_headers
from emulator.settings import EmulatorSettings
from emulator.state import ProxyRecord, ProxyStore
from emulator.stats import record_data_request, stats_of
from emulator.synthetic import complete, count_tokens
from emulator.wire import ErrorBody


def _openai_error(description: str) -> dict[str, Any]:
    return {"model": OpenAIError, "description": description}


# Every status the data plane answers, for /openapi.json (auth errors come from the shared
# dependency and carry the control plane's `ErrorBody`).
DATA_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The reply; with `stream: true`, SSE events",
          "content": {"application/json": {}, "text/event-stream": {}}},
    400: _openai_error("Invalid request body or model"),
    401: {"model": ErrorBody, "description": "Missing API key or signature"},
    403: {"model": ErrorBody, "description": "Signature does not match"},
    404: _openai_error("No such model proxy"),
    409: _openai_error("The proxy is not READY"),
    413: {"model": ErrorBody, "description": "The request body is too large"},
    415: _openai_error("The body is not JSON (Content-Type)"),
    429: _openai_error("Rate limited by the proxy's policies (Retry-After), or a fault"),
    500: _openai_error("Injected fault"),
    503: _openai_error("Injected fault"),
}
# Prompts can be long; a body past this is refused with 413 before it is read whole.
MAX_BODY_BYTES = 16 * 1024 * 1024
router = APIRouter(responses=DATA_RESPONSES, max_body_size=MAX_BODY_BYTES)
JSON = "application/json"
MODEL_REQUEST_ID_HEADER = "x-request-id"
UNPACED_YIELD_EVERY = 64  # token frames
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class DataPlane:
    """Per-app state of the data plane: policy windows and the fault draws."""

    policies: PolicyRegistry = field(default_factory=PolicyRegistry)
    faults: FaultSource = field(default_factory=FaultSource)


def data_plane(request: Request) -> DataPlane:
    """The app's `DataPlane`, made on first use (assign a new one to reset it)."""
    plane: DataPlane | None = getattr(request.app.state, "data_plane", None)
    if plane is None:
        plane = request.app.state.data_plane = DataPlane()
    return plane


@router.post("/models/{name}/v1/chat/completions", dependencies=[Depends(require_data_auth)])
async def chat_completions(name: str, request: Request) -> Response:
    return await _serve(request, name, partial(_answer, request, name, CHAT_API))


@router.post("/models/{name}/v1/responses", dependencies=[Depends(require_data_auth)])
async def responses(name: str, request: Request) -> Response:
    return await _serve(request, name, partial(_answer, request, name, RESPONSES_API))


@router.post(
    "/models/{name}/v1/embeddings",
    dependencies=[Depends(require_data_auth)],
    responses={200: {"description": "The embeddings", "content": {"application/json": {}}}},
)
async def embeddings(name: str, request: Request) -> Response:
    return await _serve(request, name, partial(_embed, request, name))


async def _serve(
    request: Request, name: str, answer: Callable[[], Awaitable[Response]]
) -> Response:
    try:
        response = await answer()
    except WireError as error:
        response = Response(json_bytes(error.body()), error.status, error.headers, JSON)
    response.headers[MODEL_REQUEST_ID_HEADER] = f"req_{uuid.uuid4().hex}"
    record_data_request(request, name, response.status_code)
    return response


async def _ready_body(request: Request, name: str) -> tuple[ProxyRecord, dict[str, Any]]:
    """The READY proxy addressed and the request's JSON body."""
    record = _ready_record(request.app.state.store, name)
    _check_content_type(request.headers.get("content-type"))
    return record, parse_json(await request.body())


async def _answer(request: Request, name: str, api: Api) -> Response:
    store: ProxyStore = request.app.state.store
    record, body = await _ready_body(request, name)
    wanted = api.parse(body)
    model = resolve_model(wanted.model, name, record.wire)
    settings = store.settings
    plane = data_plane(request)
    plan = plane.faults.decide(store.faults_for(record), settings.seed, wanted.stream)
    _raise_injected_error(request, plan)
    reply = _reply(api, wanted, model, settings, store.reply_tokens_for(record))
    expected_s = _expected_s(reply, settings, plan)
    flight = _InFlight(_admit(plane, record, reply.prompt_tokens, expected_s))
    try:
        await _sleep(plan.slow_s)
        if wanted.stream:
            on_cut = partial(stats_of(request).incr, "stream_cut")
            frames = runaway_frames(api.frames(reply), plan)
            return _ManagedStream(_paced(frames, settings, plan, flight, on_cut), flight.close)
        await _sleep(_generation_s(reply.completion_tokens, settings))
        flight.tokens = reply.completion_tokens
    except BaseException:  # e.g. cancelled in a slow sleep because the client left
        flight.close()
        raise
    flight.close()
    return _json_answer(json_bytes(api.body(reply)), plan)


async def _embed(request: Request, name: str) -> Response:
    store: ProxyStore = request.app.state.store
    record, body = await _ready_body(request, name)
    wanted = parse_embeddings(body)
    model = resolve_model(wanted.model, name, record.wire)
    settings = store.settings
    dimensions = output_dimensions(wanted.dimensions, model, settings.dimensions_of(model))
    plane = data_plane(request)
    plan = plane.faults.decide(store.faults_for(record), settings.seed, False)
    _raise_injected_error(request, plan)
    items = wanted.items
    prompt_tokens = sum(input_tokens(item) for item in items)
    delay_s = plan.slow_s + settings.ttft_s
    flight = _InFlight(_admit(plane, record, prompt_tokens, delay_s))
    try:
        await _sleep(delay_s)
    finally:  # also when cancelled because the client left
        flight.close()
    vectors = [unit_vector(model, item, dimensions) for item in items]
    answer = embedding_list(model, vectors, wanted.encoding_format, prompt_tokens)
    return _json_answer(json_bytes(answer), plan)


def _json_answer(body: bytes, plan: FaultPlan) -> Response:
    """A non-streamed answer, as it is or as the plan's runaway fault sends it."""
    runaway = runaway_body(body, plan)
    if runaway is not None:
        return StreamingResponse(runaway, media_type=JSON)
    return Response(body, 200, media_type=JSON)


@dataclass
class _InFlight:
    """An admitted request until its last byte: frees its slot, charges its tokens."""

    lease: Lease | None
    tokens: int = 0

    def close(self) -> None:
        if self.lease is not None:
            self.lease.finish(self.tokens, time.monotonic())


class _ManagedStream(StreamingResponse):
    """A stream that runs `on_close` however it ends: done, cut, or client gone."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def _paced(
    frames: Iterator[Frame],
    settings: EmulatorSettings,
    plan: FaultPlan,
    flight: _InFlight,
    on_cut: Callable[[], None],
) -> AsyncIterator[bytes]:
    """The frames, paced; a planned cut lands before the final frame at the latest."""
    cut_after = plan.cut_after_chunks
    for sent, frame in enumerate(frames):
        if cut_after is not None and (sent >= cut_after or frame.kind == "final"):
            quiet_stream_cuts()
            on_cut()
            raise StreamCut(f"injected cut after {sent} chunks")
        if frame.kind == "token":
            delay_s = plan.drip_s or (settings.tpot_s if flight.tokens else settings.ttft_s)
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            elif flight.tokens % UNPACED_YIELD_EVERY == UNPACED_YIELD_EVERY - 1:
                await asyncio.sleep(0)  # a long unpaced stream lets other requests in
            flight.tokens += 1
        if plan.runaway:
            # Its client will leave mid-stream, which is seen only when the loop gets a
            # turn; until then each write to the closed socket logs a warning.
            await asyncio.sleep(0)
        yield frame.data


async def _sleep(delay_s: float) -> None:
    if delay_s > 0:  # no await at all when unpaced: keeps zero-latency requests cheap
        await asyncio.sleep(delay_s)


def _check_content_type(value: str | None) -> None:
    """JSON bodies only (a missing Content-Type is read as JSON, as the OpenAI SDK sends it)."""
    if value is None:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media == JSON or (media.startswith("application/") and media.endswith("+json")):
        return
    raise WireError(415, f"Content-Type must be {JSON}, not '{media}'",
                    code="unsupported_media_type")


def _ready_record(store: ProxyStore, name: str) -> ProxyRecord:
    record = store.get(name)
    if record is None:
        raise WireError(
            404,
            f"model proxy '{name}' does not exist",
            "not_found_error",
            code="model_proxy_not_found",
        )
    if record.status != "READY":
        raise WireError(
            409,
            f"model proxy '{name}' is {record.status or 'not ready'}, not READY;"
            " retry once it is READY",
            "conflict_error",
            code="model_proxy_not_ready",
        )
    return record


_INJECTED = {
    500: ("internal server error (injected fault)", "server_error", "internal_error"),
    503: ("service unavailable (injected fault)", "server_error", "service_unavailable"),
    429: ("rate limit exceeded (injected fault)", "rate_limit_error", "rate_limit_exceeded"),
}


def _raise_injected_error(request: Request, plan: FaultPlan) -> None:
    status = plan.error_status
    if status is None:
        return
    stats_of(request).incr(f"injected_{status}")
    message, type_, code = _INJECTED[status]
    headers = retry_after_headers(plan.retry_after_s) if status == 429 else None
    raise WireError(status, message, type_, code=code, headers=headers)


def _reply(
    api: Api,
    wanted: InferenceRequest,
    model: str,
    settings: EmulatorSettings,
    length: int | None,
) -> Reply:
    answer = complete(
        wanted.prompt,
        wanted.max_tokens,
        settings.seed,
        settings.default_completion_tokens,
        length=length,
    )
    return new_reply(
        api.id_prefix,
        model,
        pieces=answer.pieces,
        finish_reason=answer.finish_reason,
        prompt_tokens=count_tokens(wanted.prompt),
        include_usage=wanted.include_usage,
    )


def _generation_s(tokens: int, settings: EmulatorSettings) -> float:
    """First token after ttft_s, each later one after tpot_s."""
    return settings.ttft_s + settings.tpot_s * max(tokens - 1, 0)


def _expected_s(reply: Reply, settings: EmulatorSettings, plan: FaultPlan) -> float:
    return plan.slow_s + _generation_s(reply.completion_tokens, settings)


def _admit(
    plane: DataPlane, record: ProxyRecord, prompt_tokens: int, expected_s: float
) -> Lease | None:
    now = time.monotonic()
    policies = (record.wire.get("proxyConfig") or {}).get("policies")
    limiter = plane.policies.limiter_for(
        record.name, str(record.wire.get("modelProxyId", "")), policies, now
    )
    if limiter is None:
        return None
    decision = limiter.admit(now, prompt_tokens, expected_s)
    if isinstance(decision, Rejection):
        raise WireError(
            429,
            f"model proxy '{record.name}': {decision.reason}",
            "rate_limit_error",
            code="rate_limit_exceeded",
            headers=decision.headers(),
        )
    return decision

"""One direct call's job, from its slot to its answer: admitted (backpressure), submitted,
waited for against the client leaving and the call timeout, and ended (slot freed, the job
cancelled unless it finished). A failed job becomes OpenAI's error answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from core.contract import JobKind, JobRecord, JobStatus
from gateway.context import Gateway
from gateway.errors import OpenAIError, error_body
from producer.batch_format import error_code
from producer.jobs import AsyncJob, JobFailedError

T = TypeVar("T")
TIMEOUT_CODES = frozenset({"APITimeoutError", "DeadlineExceededError"})
REQUEST_ID = "x-request-id"
UPSTREAM_REQUEST_ID = "x-upstream-request-id"


class ClientGone(Exception):
    """The client closed its connection before the answer."""


@dataclass(frozen=True)
class Failure:
    """How a job that did not succeed is answered: the upstream's own refusal (4xx) as it
    gave it, else 502 (504 for a timeout) with the reason."""

    status: int
    error: dict[str, Any]

    @classmethod
    def of(cls, record: JobRecord) -> Failure:
        status = record.upstream_status
        if status is not None and 400 <= status < 500 and record.upstream_error:
            return cls(status, record.upstream_error)
        if record.status is JobStatus.CANCELLED:
            return cls(502, error_body(f"the job {record.id} was cancelled",
                                       "server_error", code="cancelled")["error"])
        code = error_code(record)
        status = 504 if code in TIMEOUT_CODES else 502
        message = f"the upstream call failed: {record.error or record.status.value}"
        return cls(status, error_body(message, "server_error", code=code)["error"])

    def response(self, headers: dict[str, str],
                 background: BackgroundTask | None = None) -> JSONResponse:
        return JSONResponse({"error": self.error}, status_code=self.status, headers=headers,
                            background=background)


async def _until_disconnected(request: Request) -> None:
    """Returns when the client has closed its connection. The body is read already, so the
    server's next message is the disconnect, whenever it comes."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def outcome(job: AsyncJob) -> JobRecord:
    """The job's final record (an embeddings job's with its vectors, as its request asked)."""
    try:
        return await job.result()
    except JobFailedError as exc:
        return exc.record


@dataclass
class DirectCall:
    gw: Gateway
    job: AsyncJob
    slot: str
    deadline: float  # on the event loop's clock
    finished: bool = False  # the job is known to be final: nothing to cancel

    @classmethod
    async def start(cls, gw: Gateway, kind: JobKind, proxy: str,
                    body: dict[str, Any]) -> DirectCall:
        deadline = asyncio.get_running_loop().time() + gw.settings.gateway_call_timeout_s
        slot = await gw.in_flight.admit()
        try:
            job = await gw.client.submit(kind, proxy, body)
        except ValueError as exc:
            await gw.in_flight.release(slot)
            raise OpenAIError(400, str(exc)) from None
        except BaseException:
            await gw.in_flight.release(slot)
            raise
        return cls(gw, job, slot, deadline)

    def headers(self, record: JobRecord | None = None) -> dict[str, str]:
        headers = {REQUEST_ID: self.job.id}
        if record is not None and record.upstream_request_id:
            headers[UPSTREAM_REQUEST_ID] = record.upstream_request_id
        return headers

    def timed_out(self) -> OpenAIError:
        timeout_s = self.gw.settings.gateway_call_timeout_s
        return OpenAIError(504, f"no answer within {timeout_s:g} s; the job {self.job.id} was "
                           "cancelled", code="timeout", type="server_error",
                           headers=self.headers())

    async def race(self, request: Request, work: Awaitable[T]) -> T:
        """`work`'s result; `ClientGone` if the client leaves first, `TimeoutError` at the
        deadline. `work` is cancelled (and waited for) when it loses; the watch on the client
        is only cancelled (waiting for that would delay every answer by a loop turn)."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(_until_disconnected(request))
        timeout_s = max(0.0, self.deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait({task, watch}, timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.gather(task, return_exceptions=True)
        if task.done() and not task.cancelled():
            return task.result()
        if watch.done() and not watch.cancelled():
            raise ClientGone
        raise TimeoutError

    async def end(self) -> None:
        """Free the slot, and cancel the job unless it finished. Shielded: it runs when the
        call is being cancelled too (a client that left mid-stream)."""
        with anyio.CancelScope(shield=True):
            if not self.finished:
                await self.job.cancel()
            await self.gw.in_flight.release(self.slot)

"""One delivery of one job, start to end: claim → run under a lease → write the final
state once (or schedule the next attempt). Returns what the Celery shell should do."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from core.contract import JobKind, JobRecord, JobStatus
from core.dispatch import lane_of
from core.store import Claim
from modelproxy.errors import ModelProxyError, RateLimitedError
from worker.inference import JobResult, NoPermit, run_inference
from worker.lease import AttemptStopped
from worker.management import run_management
from worker.retry import describe, retry_after_s, retry_delay_s, should_retry
from worker.runtime import Runtime
from worker.upstream import UpstreamRefused, error_object

logger = logging.getLogger(__name__)

# A redelivered message waits for the other delivery's lease a little past its end.
BUSY_MARGIN_S = 0.5
# The status of an attempt that found no rate-limit permit: released, it never ran.
WAITING = "waiting"


@dataclass(frozen=True)
class Outcome:
    """`later` means: publish this job again after `delay_s` (a retry or a deferral)."""

    action: Literal["done", "later", "skip"]
    status: str
    delay_s: float = 0.0
    message: str = ""


async def run_job(rt: Runtime, job_id: str) -> Outcome:
    claim = await rt.store.claim(job_id, rt.worker_name, rt.settings.lease_s)
    if claim.outcome in ("final", "missing"):
        return Outcome("skip", claim.outcome)
    if claim.outcome == "busy":
        return Outcome("later", "deferred", claim.wait_s + BUSY_MARGIN_S,
                       "another delivery of this job is running")
    job = claim.job
    assert job is not None  # a claim returns the record it claimed
    started = time.monotonic()
    # DEBUG: the end line below says it all (its elapsed_s dates the start), and
    # mpq_jobs{state="running"} counts starts; a second line per job costs the worker CPU.
    logger.debug("job %s %s attempt %d started", job_id, job.kind, claim.attempt)
    rt.metrics.job_started(job.kind)
    rt.metrics.queue_wait(lane_of(job), claim.queued_s)
    outcome = await _attempt(rt, job, claim)
    rt.metrics.job_outcome(job.kind, outcome.status)
    # Why the job did not succeed goes on this one line: an expected failure (a 4xx, a
    # missing proxy) is a warning, not a traceback.
    level = logging.WARNING if outcome.status == JobStatus.FAILED else logging.INFO
    logger.log(level, "job %s %s attempt %d %s elapsed_s=%.3f delay_s=%.3f%s", job_id,
               job.kind, claim.attempt, outcome.status, time.monotonic() - started,
               outcome.delay_s, f": {outcome.message}" if outcome.message else "")
    return outcome


async def _attempt(rt: Runtime, job: JobRecord, claim: Claim) -> Outcome:
    try:
        succeeded = await rt.leases.run(job.id, claim.attempt,
                                        _execute(rt, job, claim.attempt))
    except AttemptStopped:
        return await _stopped(rt, job.id, claim.attempt)
    except NoPermit as wait:
        # No permit, so no upstream call and nothing written under this attempt's number:
        # the release gives the number back (a wait is not a try, see core/lua/claim_job.lua).
        await rt.store.release(job.id, claim.attempt)
        return Outcome("later", WAITING, wait.wait_s, str(wait))
    except (UpstreamRefused, ModelProxyError, ValidationError) as exc:
        return await _failed(rt, job, claim, exc)
    except Exception as exc:
        logger.exception("job %s: unexpected error", job.id)
        return await _failed(rt, job, claim, exc)
    written = await rt.store.finish(job.id, claim.attempt, JobStatus.SUCCEEDED,
                                    result=succeeded.result, usage=succeeded.usage,
                                    last_chunk=succeeded.last_chunk,
                                    vectors=succeeded.vectors,
                                    upstream_request_id=succeeded.request_id)
    rt.metrics.tokens(job.proxy, succeeded.usage)  # the upstream counted them either way
    if not written:
        return Outcome("skip", "stopped", message="final write refused: cancelled or superseded")
    return Outcome("done", JobStatus.SUCCEEDED.value)


async def _stopped(rt: Runtime, job_id: str, attempt: int) -> Outcome:
    """The attempt was told to stop. Cancelled, finished or taken over: nothing is left to
    do. Still this attempt's, not final: its lease lapsed (a paused process) and its writes
    were refused, yet nobody took over, so the job goes back to the queue at once and the
    next delivery claims it as a new attempt."""
    record = await rt.store.load(job_id)
    if record is None or record.status.is_final or record.attempt != attempt:
        return Outcome("skip", "stopped", message="cancelled or superseded while running")
    await rt.store.mark_published([job_id])  # a requeue, as the orphan sweep counts them
    return Outcome("later", "stopped", 0.0, "lease lapsed while running: runs again")


async def _execute(rt: Runtime, job: JobRecord, attempt: int) -> JobResult:
    if JobKind(job.kind).is_management:
        return JobResult(await run_management(rt, job))
    return await run_inference(rt, job, attempt)


async def _failed(rt: Runtime, job: JobRecord, claim: Claim, failure: BaseException) -> Outcome:
    # The upstream model's error answer is judged as any other error, and kept in the record
    # if the job ends here.
    refused = failure.error if isinstance(failure, UpstreamRefused) else None
    exc = failure if refused is None else refused
    message = describe(exc, claim.attempt)
    rt.metrics.attempt_failed(job.proxy, exc)
    if isinstance(exc, RateLimitedError):
        # Everyone backs off from this proxy, not only this worker.
        cooldown_s = exc.retry_after_s or rt.settings.default_cooldown_s
        await rt.limiter.start_cooldown(rt.keys.limiter(job.proxy), cooldown_s)
    failures = claim.failures + 1
    if should_retry(exc) and failures < rt.settings.max_attempts:
        delay_s = retry_delay_s(
            failures, base_s=rt.settings.backoff_base_s, max_s=rt.settings.backoff_max_s,
            retry_after=retry_after_s(exc),
        )
        await rt.store.mark_retrying(job.id, claim.attempt, message, delay_s)
        return Outcome("later", JobStatus.RETRYING.value, delay_s, message)
    if refused is None:
        await rt.store.finish(job.id, claim.attempt, JobStatus.FAILED, error=message)
    else:
        await rt.store.finish(job.id, claim.attempt, JobStatus.FAILED, error=message,
                              upstream_request_id=refused.request_id,
                              upstream_status=refused.status_code,
                              upstream_error=error_object(refused))
    return Outcome("done", JobStatus.FAILED.value, message=message)

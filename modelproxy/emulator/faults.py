"""Injected faults: which requests fail, answer slowly, or have their stream cut.

Each request with any fault rate set draws three numbers from one `random.Random` seeded by
`settings.seed`, so a run with the same seed and request order sees the same faults:

1. an error: 500, 503 or 429 with the rates as shares of requests (500 first, then 503, then
   429; they stack up to 1). An error is answered at once, before the policies are applied.
2. slow: sleep `slow_s` before the first byte of the answer.
3. cut (streams only): send `cut_after_chunks` SSE events, then drop the connection without
   the terminating chunk, so the client sees a broken body and no `[DONE]`.

A cut is done by raising `StreamCut` inside the response: uvicorn then closes the socket
mid-body (the terminating zero-length chunk is never sent). `quiet_stream_cuts` replaces
uvicorn's traceback for it with one INFO line.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from modelproxy.emulator.settings import Faults

logger = logging.getLogger(__name__)
UVICORN_ERROR_LOGGER = "uvicorn.error"


class StreamCut(BaseException):
    """Raised inside a streaming body to drop the connection on purpose.

    A `BaseException`, like `CancelledError`: it must pass every `except Exception` (the app's
    error handlers would log it and Starlette's would try to answer 500) up to the server,
    which then closes the connection mid-body."""


@dataclass(frozen=True)
class FaultPlan:
    error_status: int | None = None
    retry_after_s: float = 0.0
    slow_s: float = 0.0
    cut_after_chunks: int | None = None


NO_FAULT = FaultPlan()


def plan_from_draws(faults: Faults, draws: tuple[float, float, float], stream: bool) -> FaultPlan:
    """The faults for one request, from three uniform draws in [0, 1)."""
    error_draw, slow_draw, cut_draw = draws
    return FaultPlan(
        error_status=_error_status(faults, error_draw),
        retry_after_s=faults.retry_after_s,
        slow_s=faults.slow_s if slow_draw < faults.slow_rate else 0.0,
        cut_after_chunks=(
            faults.cut_after_chunks if stream and cut_draw < faults.cut_stream_rate else None
        ),
    )


def _error_status(faults: Faults, draw: float) -> int | None:
    threshold = 0.0
    for status, rate in (
        (500, faults.error_500_rate),
        (503, faults.error_503_rate),
        (429, faults.error_429_rate),
    ):
        threshold += rate
        if draw < threshold:
            return status
    return None


@dataclass
class FaultSource:
    """The seeded draws; reseeded when `settings.seed` changes."""

    seed: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def decide(self, faults: Faults, seed: int, stream: bool) -> FaultPlan:
        if not faults.any():  # no draws: the fast path stays fast
            return NO_FAULT
        if seed != self.seed:
            self.seed, self._rng = seed, random.Random(seed)
        draws = (self._rng.random(), self._rng.random(), self._rng.random())
        return plan_from_draws(faults, draws, stream)


def _is_cut(exc: BaseException | None) -> bool:
    if isinstance(exc, BaseExceptionGroup):  # anyio task groups may wrap it
        return all(_is_cut(inner) for inner in exc.exceptions)
    return isinstance(exc, StreamCut)


class _QuietStreamCut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if _is_cut(exc):
            logger.info("stream cut on purpose: %s", exc)
            return False
        return True


_QUIET_FILTER = _QuietStreamCut()


def quiet_stream_cuts() -> None:
    """Idempotent: keep uvicorn from logging a traceback for each injected cut."""
    uvicorn_logger = logging.getLogger(UVICORN_ERROR_LOGGER)
    if _QUIET_FILTER not in uvicorn_logger.filters:
        uvicorn_logger.addFilter(_QUIET_FILTER)

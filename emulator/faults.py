"""Injected faults: which requests fail, answer slowly, or have their stream cut.

Each request with any fault rate set draws three numbers from one `random.Random` seeded by
`settings.seed`, so a run with the same seed and request order sees the same faults:

1. an error: 500, 503 or 429 with the rates as shares of requests (500 first, then 503, then
   429; they stack up to 1). An error is answered at once, before the policies are applied.
2. slow: sleep `slow_s` before the first byte of the answer.
3. cut (streams only): send `cut_after_chunks` SSE events, then drop the connection without
   the terminating chunk, so the client sees a broken body and no `[DONE]`.
4. runaway, drawn only when a runaway rate is set (so seeded runs without one see the same
   faults as before): a drip (one chunk, or one space of a non-streamed reply, every `drip_s`,
   forever), a huge body (padded to `huge_body_bytes`), or an endless stream (its token
   chunks over and over). Each is sent as it is made, never held whole.

A cut is done by raising `StreamCut` inside the response: uvicorn then closes the socket
mid-body (the terminating zero-length chunk is never sent). `quiet_stream_cuts` replaces
uvicorn's traceback for it with one INFO line.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from emulator.openai_wire import Frame
from emulator.settings import Faults

logger = logging.getLogger(__name__)
UVICORN_ERROR_LOGGER = "uvicorn.error"
PAD_PIECE = b"x" * (64 * 1024)  # a huge body is sent in pieces of this one buffer
NO_RUNAWAY_DRAW = 1.0  # a draw no rate exceeds


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
    drip_s: float = 0.0  # > 0: a chunk (or a space) this often, and never the end
    pad_to_bytes: int | None = None  # a huge body this long
    endless: bool = False  # a stream that never sends its final frames

    @property
    def runaway(self) -> bool:
        """A body that does not end, or not soon: its client will leave mid-body."""
        return self.endless or self.pad_to_bytes is not None


NO_FAULT = FaultPlan()


def plan_from_draws(
    faults: Faults,
    draws: tuple[float, float, float],
    stream: bool,
    runaway_draw: float = NO_RUNAWAY_DRAW,
) -> FaultPlan:
    """The faults for one request, from three uniform draws in [0, 1) (and a fourth for
    the runaway faults)."""
    error_draw, slow_draw, cut_draw = draws
    return FaultPlan(
        error_status=_error_status(faults, error_draw),
        retry_after_s=faults.retry_after_s,
        slow_s=faults.slow_s if slow_draw < faults.slow_rate else 0.0,
        cut_after_chunks=(
            faults.cut_after_chunks if stream and cut_draw < faults.cut_stream_rate else None
        ),
        **_runaway(faults, runaway_draw, stream),
    )


def _runaway(faults: Faults, draw: float, stream: bool) -> dict[str, Any]:
    """By shares: a drip, a huge body, then (streams only) an endless stream."""
    if draw < faults.drip_rate:
        return {"drip_s": faults.drip_s, "endless": stream}
    threshold = faults.drip_rate + faults.huge_body_rate
    if draw < threshold:
        return {"pad_to_bytes": faults.huge_body_bytes}
    if stream and draw < threshold + faults.endless_stream_rate:
        return {"endless": True}
    return {}


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
        runaway = self._rng.random() if faults.any_runaway() else NO_RUNAWAY_DRAW
        return plan_from_draws(faults, draws, stream, runaway)


def runaway_frames(frames: Iterator[Frame], plan: FaultPlan) -> Iterator[Frame]:
    """A stream's frames as the plan's runaway fault sends them (as they are otherwise)."""
    if plan.pad_to_bytes is not None:
        frames = itertools.chain(_comment_frames(plan.pad_to_bytes), frames)
    return _endless(frames) if plan.endless else frames


def _comment_frames(size: int) -> Iterator[Frame]:
    """One SSE comment `size` bytes long (at least its 4 bytes of syntax), in pieces."""
    yield Frame(b": ", "meta")
    for piece in _filler(size - 4):
        yield Frame(piece, "meta")
    yield Frame(b"\n\n", "meta")


def _endless(frames: Iterator[Frame]) -> Iterator[Frame]:
    """The frames up to the last token one, then the token frames over and over (a reply of
    no tokens ends as usual)."""
    tokens: list[Frame] = []
    for frame in frames:
        if frame.kind == "token":
            tokens.append(frame)
        elif tokens:
            break
        yield frame
    yield from itertools.cycle(tokens)


def runaway_body(body: bytes, plan: FaultPlan) -> AsyncIterator[bytes] | None:
    """A non-streamed reply's body as the plan's runaway fault sends it; None: as it is."""
    if plan.drip_s > 0:
        return _dripped(plan.drip_s)
    if plan.pad_to_bytes is not None:
        return _each(_padded(body, plan.pad_to_bytes))
    return None


async def _dripped(every_s: float) -> AsyncIterator[bytes]:
    while True:
        yield b" "  # JSON may start with any amount of whitespace
        await asyncio.sleep(every_s)


def _padded(body: bytes, size: int) -> Iterator[bytes]:
    """`body` (a JSON object) led by a `padding` member that makes it `size` bytes long."""
    head, tail = b'{"padding":"', b'",' + body[1:]
    yield head
    yield from _filler(size - len(head) - len(tail))
    yield tail


def _filler(size: int) -> Iterator[bytes]:
    """`size` bytes of filler, in pieces of one shared buffer."""
    whole, rest = divmod(max(size, 0), len(PAD_PIECE))
    yield from itertools.repeat(PAD_PIECE, whole)
    if rest:
        yield PAD_PIECE[:rest]


async def _each(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    """Sent from the event loop (a plain iterator would hop to a thread for every piece),
    which gets a turn after each: a client that left is seen only then, and until then
    every write to its socket logs a warning."""
    for piece in pieces:
        yield piece
        await asyncio.sleep(0)


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

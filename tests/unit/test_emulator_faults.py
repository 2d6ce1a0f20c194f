"""Fault plans from draws, and the seeded source."""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from emulator.faults import (
    NO_FAULT,
    FaultPlan,
    FaultSource,
    StreamCut,
    plan_from_draws,
    quiet_stream_cuts,
    runaway_body,
    runaway_frames,
)
from emulator.openai_wire import Frame, FrameKind
from emulator.settings import Faults

ERRORS = Faults(error_500_rate=0.1, error_503_rate=0.2, error_429_rate=0.3, retry_after_s=2.5)


@pytest.mark.parametrize(
    ("draw", "status"),
    [(0.0, 500), (0.099, 500), (0.1, 503), (0.299, 503), (0.301, 429), (0.599, 429), (0.601, None)],
)
def test_error_rates_are_shares_of_requests(draw: float, status: int | None) -> None:
    plan = plan_from_draws(ERRORS, (draw, 0.9, 0.9), stream=False)
    assert plan.error_status == status
    assert plan.retry_after_s == 2.5


def test_slow_and_cut() -> None:
    faults = Faults(slow_rate=0.5, slow_s=3.0, cut_stream_rate=0.5, cut_after_chunks=4)
    assert plan_from_draws(faults, (0.0, 0.4, 0.4), stream=True) == FaultPlan(
        None, 1.0, slow_s=3.0, cut_after_chunks=4
    )
    assert plan_from_draws(faults, (0.0, 0.6, 0.6), stream=True) == FaultPlan(None, 1.0)


def test_cut_only_for_streams() -> None:
    faults = Faults(cut_stream_rate=1.0)
    assert plan_from_draws(faults, (0.5, 0.5, 0.5), stream=False).cut_after_chunks is None
    assert plan_from_draws(faults, (0.5, 0.5, 0.5), stream=True).cut_after_chunks == 2


def test_rate_one_always_fires() -> None:
    faults = Faults(error_503_rate=1.0)
    source = FaultSource()
    assert {source.decide(faults, 0, False).error_status for _ in range(100)} == {503}


def test_no_faults_no_draws() -> None:
    source = FaultSource()
    assert source.decide(Faults(), 0, True) is NO_FAULT


def test_same_seed_same_sequence() -> None:
    faults = Faults(error_500_rate=0.5)

    def run(seed: int) -> list[int | None]:
        source = FaultSource()
        return [source.decide(faults, seed, False).error_status for _ in range(50)]

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert 10 < run(3).count(500) < 40


def test_changing_the_seed_reseeds() -> None:
    faults = Faults(error_500_rate=0.5)
    source = FaultSource()
    first = [source.decide(faults, 9, False) for _ in range(20)]
    source.decide(faults, 1, False)
    assert [source.decide(faults, 9, False) for _ in range(20)] == first


def test_quiet_filter_drops_only_cuts(caplog: pytest.LogCaptureFixture) -> None:
    quiet_stream_cuts()
    quiet_stream_cuts()
    uvicorn_logger = logging.getLogger("uvicorn.error")
    assert len(uvicorn_logger.filters) == 1
    with caplog.at_level(logging.INFO):
        uvicorn_logger.error("Exception in ASGI application", exc_info=StreamCut("cut"))
        group = BaseExceptionGroup("g", [StreamCut("cut")])
        uvicorn_logger.error("Exception in ASGI application", exc_info=group)
        uvicorn_logger.error("Exception in ASGI application", exc_info=ValueError("real"))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "stream cut on purpose" in caplog.text


RUNAWAY = Faults(drip_rate=0.1, drip_s=2.0, huge_body_rate=0.2, huge_body_bytes=1000,
                 endless_stream_rate=0.3)


@pytest.mark.parametrize(
    ("draw", "stream", "expected"),
    [(0.05, False, {"drip_s": 2.0}), (0.05, True, {"drip_s": 2.0, "endless": True}),
     (0.2, False, {"pad_to_bytes": 1000}), (0.2, True, {"pad_to_bytes": 1000}),
     (0.4, True, {"endless": True}), (0.4, False, {}), (0.7, True, {})],
)
def test_runaway_faults_are_shares_of_requests(
    draw: float, stream: bool, expected: dict[str, Any]
) -> None:
    plan = plan_from_draws(RUNAWAY, (0.9, 0.9, 0.9), stream, runaway_draw=draw)
    assert plan == FaultPlan(None, 1.0, **expected)
    assert plan.runaway == bool(expected.get("endless") or expected.get("pad_to_bytes"))


def test_runaway_faults_draw_only_when_set() -> None:
    """A seeded run without runaway faults sees the same faults as before they existed."""
    faults = Faults(error_500_rate=0.5)
    source = FaultSource()
    statuses = [source.decide(faults, 5, False).error_status for _ in range(30)]
    rng = random.Random(5)
    expected = []
    for _ in range(30):
        draws = (rng.random(), rng.random(), rng.random())
        expected.append(plan_from_draws(faults, draws, False).error_status)
    assert statuses == expected


def frames_of(kinds: str) -> list[Frame]:
    names: dict[str, FrameKind] = {"m": "meta", "t": "token", "f": "final"}
    return [Frame(f"{i}".encode(), names[k]) for i, k in enumerate(kinds)]


def test_endless_stream_repeats_its_tokens_and_never_ends() -> None:
    frames = frames_of("mttmmf")
    sent = list(itertools.islice(runaway_frames(iter(frames), FaultPlan(endless=True)), 9))
    assert [f.data for f in sent] == [b"0", b"1", b"2", b"1", b"2", b"1", b"2", b"1", b"2"]
    assert list(runaway_frames(iter(frames), NO_FAULT)) == frames


def test_huge_stream_starts_with_one_long_comment() -> None:
    frames = frames_of("mtf")
    plan = FaultPlan(pad_to_bytes=200_000)
    data = b"".join(f.data for f in runaway_frames(iter(frames), plan))
    assert data == b": " + b"x" * (200_000 - 4) + b"\n\n" + b"012"


async def test_huge_body_is_the_reply_padded_to_its_size() -> None:
    body = json.dumps({"id": "r", "choices": []}).encode()
    pieces = runaway_body(body, FaultPlan(pad_to_bytes=300_000))
    assert pieces is not None
    sent = [piece async for piece in pieces]
    assert max(map(len, sent)) <= 64 * 1024
    whole = b"".join(sent)
    assert len(whole) == 300_000
    decoded = json.loads(whole)
    assert set(decoded.pop("padding")) == {"x"}
    assert decoded == {"id": "r", "choices": []}
    assert runaway_body(body, NO_FAULT) is None


async def test_drip_sends_whitespace_forever() -> None:
    pieces = runaway_body(b"{}", FaultPlan(drip_s=0.01))
    assert isinstance(pieces, AsyncGenerator)
    assert [await anext(pieces) for _ in range(3)] == [b" "] * 3
    await pieces.aclose()

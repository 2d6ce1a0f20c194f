"""Fault plans from draws, and the seeded source."""

from __future__ import annotations

import logging

import pytest

from modelproxy.emulator.faults import (
    NO_FAULT,
    FaultPlan,
    FaultSource,
    StreamCut,
    plan_from_draws,
    quiet_stream_cuts,
)
from modelproxy.emulator.settings import Faults

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

"""Policy maths of the rate limiter: merge, token estimate, GCRA parameters. (Reading a
proxy's declared policies: test_declared_limits.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.keys import LIMITER_PARTS
from worker.ratelimit.policy import (
    DEFAULT_BURST_RATIO,
    DEFAULT_COMPLETION_TOKENS,
    Buckets,
    Gcra,
    Limits,
    buckets,
    estimate_tokens,
    gcra,
    merge_limits,
)

NONE = Limits()


@pytest.mark.parametrize(
    ("settings", "declared", "expected"),
    [
        (NONE, NONE, NONE),
        (Limits(requests_per_minute=60), NONE, Limits(requests_per_minute=60)),
        (NONE, Limits(tokens_per_minute=1000), Limits(tokens_per_minute=1000)),
        (Limits(tokens_per_second=50), Limits(tokens_per_second=20), Limits(tokens_per_second=20)),
        (Limits(max_concurrency=3), Limits(max_concurrency=8), Limits(max_concurrency=3)),
        (
            Limits(requests_per_minute=100, tokens_per_minute=9000),
            Limits(tokens_per_minute=5000, max_concurrency=4),
            Limits(requests_per_minute=100, tokens_per_minute=5000, max_concurrency=4),
        ),
        (Limits(tokens_per_hour=10), Limits(tokens_per_day=5), Limits(tokens_per_hour=10,
                                                                      tokens_per_day=5)),
        (Limits(tokens_per_day=500), Limits(tokens_per_day=90_000, tokens_per_hour=7),
         Limits(tokens_per_day=500, tokens_per_hour=7)),
    ],
)
def test_merge_limits_stricter_non_none_wins(
    settings: Limits, declared: Limits, expected: Limits
) -> None:
    assert merge_limits(settings, declared) == expected
    assert merge_limits(declared, settings) == expected


@pytest.mark.parametrize("field", ["requests_per_minute", "tokens_per_day", "max_concurrency"])
@pytest.mark.parametrize("value", [0, -1])
def test_limits_reject_non_positive(field: str, value: int) -> None:
    with pytest.raises(ValidationError):
        Limits.model_validate({field: value})


def test_limits_are_frozen_and_strict_about_fields() -> None:
    limits = Limits(requests_per_minute=1)
    with pytest.raises(ValidationError):
        limits.requests_per_minute = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Limits.model_validate({"rpm": 1})


D = DEFAULT_COMPLETION_TOKENS
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10_000}}


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        ({}, D),
        ({"messages": [{"role": "user", "content": "abcd"}]}, 2 + D),  # "user"+"abcd" = 8 chars
        ({"messages": [{"role": "user", "content": "abcde"}]}, 3 + D),  # 9 chars rounds up
        ({"messages": [], "max_tokens": 10}, 10),
        ({"messages": [], "max_completion_tokens": 7, "max_tokens": 10}, 7),
        ({"input": "x" * 400, "max_output_tokens": 50}, 100 + 50),
        ({"input": "x" * 40, "instructions": "y" * 40}, 20 + D),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "z" * 36}]}]},
            # "user" + "input_text" + 36 chars = 50 chars -> 13
            13 + D,
        ),
        # base64 image bytes are not text: only "user" + "image_url" count (13 chars)
        ({"messages": [{"role": "user", "content": [IMAGE]}]}, 4 + D),
        ({"messages": [], "max_tokens": 10, "n": 3}, 30),
        ({"messages": [], "max_tokens": 0}, D),
        ({"messages": [], "max_tokens": True}, D),
        ({"messages": [], "max_tokens": "100"}, D),
        ({"prompt": "p" * 8, "max_tokens": 1}, 2 + 1),
    ],
)
def test_estimate_tokens(request_body: dict[str, Any], expected: int) -> None:
    assert estimate_tokens(request_body) == expected


def test_estimate_counts_tool_definitions() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "d" * 100}}
    without = estimate_tokens({"messages": []})
    assert estimate_tokens({"messages": [], "tools": [tool]}) > without + 25


@pytest.mark.parametrize(
    ("limit", "period_s", "ratio", "expected"),
    [
        (None, 60, 0.1, None),
        (120, 60, 0.1, Gcra(interval_ms=500.0, burst=12.0)),
        (120, 60, 1.0, Gcra(interval_ms=500.0, burst=120.0)),
        (6000, 60, 0.1, Gcra(interval_ms=10.0, burst=600.0)),
        (5, 1, 0.1, Gcra(interval_ms=200.0, burst=1.0)),  # at least one unit of burst
    ],
)
def test_gcra_params(limit: int | None, period_s: float, ratio: float, expected: Gcra) -> None:
    assert gcra(limit, period_s, ratio) == expected


def test_buckets_map_each_limit_to_its_period() -> None:
    b = buckets(Limits(requests_per_minute=60, tokens_per_second=100, max_concurrency=2))
    assert b.rpm == Gcra(interval_ms=1000.0, burst=max(1.0, 60 * DEFAULT_BURST_RATIO))
    assert b.tpm is None
    assert b.tps == Gcra(interval_ms=10.0, burst=max(1.0, 100 * DEFAULT_BURST_RATIO))
    assert b.tph is None
    assert b.tpd is None
    b = buckets(Limits(tokens_per_hour=7200, tokens_per_day=864_000), burst_ratio=0.5)
    assert b.tph == Gcra(interval_ms=500.0, burst=3600.0)
    assert b.tpd == Gcra(interval_ms=100.0, burst=432_000.0)
    assert b.tokens() == (None, None, b.tph, b.tpd)


def test_buckets_are_in_the_order_of_the_limiter_keys() -> None:
    """The script takes each bucket's arguments in the order of its KEYS."""
    assert Buckets._fields == LIMITER_PARTS[: len(Buckets._fields)]
    assert LIMITER_PARTS[len(Buckets._fields):] == ("leases", "cooldown")


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5])
def test_buckets_reject_bad_burst_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="burst_ratio"):
        buckets(NONE, ratio)

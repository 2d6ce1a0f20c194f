"""A proxy's declared policies (spec §3.5) as the worker reads them, and the same tables read
by the emulator, which keeps its own reading written from the spec: both must find the same
limits, compared by what they mean (requests or tokens per period, concurrency) through the
buckets each side builds from them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from emulator import policies as emulator_policies
from modelproxy.models import ProxyConfigPolicies
from worker.ratelimit.policy import Limits, buckets, declared_limits

# What a reading found: {"tokens/3600s": 500, "requests/60s": 60, "concurrency": 2, ...}.
Meaning = dict[str, int]

TPS, TPM, TPH, TPD = "tokens/1s", "tokens/60s", "tokens/3600s", "tokens/86400s"
RPM, CONCURRENCY = "requests/60s", "concurrency"


def _per(kind: str, limit: int, period_s: float) -> tuple[str, int]:
    return f"{kind}/{round(period_s)}s", limit


def worker_meaning(limits: Limits) -> Meaning:
    """The worker's limits as the periods of its GCRA buckets (ratio 1: burst = the limit)."""
    found: Meaning = {}
    for name, bucket in zip(buckets(limits)._fields, buckets(limits, 1.0), strict=True):
        if bucket is not None:
            limit = round(bucket.burst)
            key, value = _per("requests" if name == "rpm" else "tokens", limit,
                              bucket.interval_ms * limit / 1000)
            found[key] = value
    if limits.max_concurrency is not None:
        found[CONCURRENCY] = limits.max_concurrency
    return found


def worker_reading(raw: dict[str, Any] | None) -> Meaning:
    policies = None if raw is None else ProxyConfigPolicies.model_validate(raw)
    return worker_meaning(declared_limits(policies))


def emulator_reading(raw: dict[str, Any] | None) -> Meaning:
    """The emulator's limits as the windows of the token buckets it enforces them with."""
    limits = emulator_policies.Limits.from_policies(raw)
    limiter = emulator_policies.ProxyLimiter.create(limits, now=0.0)
    found = dict(_per("tokens", round(b.capacity), b.capacity / b.rate_per_s)
                 for b in limiter.token_buckets.values())
    if limiter.request_bucket is not None:
        b = limiter.request_bucket
        found.update([_per("requests", round(b.capacity), b.capacity / b.rate_per_s)])
    if limits.concurrency is not None:
        found[CONCURRENCY] = limits.concurrency
    return found


# Policies as the wire carries them (whole-number counts, as both control planes accept).
SAME_READING: list[tuple[dict[str, Any] | None, Meaning]] = [
    # nothing declared
    (None, {}),
    ({}, {}),
    ({"fallbacks": [], "cache": True, "numRetries": 2, "requestTimeout": 30}, {}),
    ({"tokenRateLimiter": None, "concurrencyLimit": None}, {}),
    ({"tokenRateLimiter": {}}, {}),
    # each unit of the token rate limiter
    ({"tokenRateLimiter": {"tps": 5}}, {TPS: 5}),
    ({"tokenRateLimiter": {"tpm": 1000}}, {TPM: 1000}),
    ({"tokenRateLimiter": {"tph": 50_000}}, {TPH: 50_000}),
    ({"tokenRateLimiter": {"tpd": 1_000_000}}, {TPD: 1_000_000}),
    # several limiters at once
    ({"tokenRateLimiter": {"tps": 1, "tpm": 2, "tph": 3, "tpd": 4}},
     {TPS: 1, TPM: 2, TPH: 3, TPD: 4}),
    (
        {"concurrencyLimit": 2, "tokenRateLimiter": {"tpm": 6000, "tpd": 9},
         "requestRateLimiter": {"rpm": 60}, "fallbacks": []},
        {CONCURRENCY: 2, TPM: 6000, TPD: 9, RPM: 60},
    ),
    # missing and null fields leave the others
    ({"tokenRateLimiter": {"tph": None, "tpd": 7}}, {TPD: 7}),
    ({"tokenRateLimiter": {"tpm": None}, "concurrencyLimit": 1}, {CONCURRENCY: 1}),
    # zero means no limit
    ({"tokenRateLimiter": {"tps": 0, "tpm": 0, "tph": 0, "tpd": 0}, "concurrencyLimit": 0,
      "requestRateLimiter": {"rpm": 0}}, {}),
    ({"tokenRateLimiter": {"tps": 0, "tph": 10}}, {TPH: 10}),
    # unit names are the spec's, lower case; anything else is not a limit
    ({"tokenRateLimiter": {"TPM": 5, "tpw": 7, "rpm": 3, "tokensPerHour": 9}}, {}),
    ({"requestRateLimiter": {"tpm": 60, "RPM": 60}}, {}),
    ({"concurrency": 3, "rpm": 60, "tpm": 60}, {}),
    # the requestRateLimiter extension, read from its raw value by both
    ({"requestRateLimiter": {"rpm": 1}}, {RPM: 1}),
    ({"requestRateLimiter": {"rpm": -5}}, {}),
    ({"requestRateLimiter": {"rpm": True}}, {}),
    ({"requestRateLimiter": "60"}, {}),
    ({"requestRateLimiter": None}, {}),
    # large counts stay exact
    ({"tokenRateLimiter": {"tpd": 10**12}}, {TPD: 10**12}),
]


@pytest.mark.parametrize(("raw", "meaning"), SAME_READING)
def test_worker_and_emulator_read_the_same_limits(
    raw: dict[str, Any] | None, meaning: Meaning
) -> None:
    assert worker_reading(raw) == meaning
    assert emulator_reading(raw) == meaning


def test_the_worker_reads_each_field_into_its_limit() -> None:
    raw = {"concurrencyLimit": 3, "requestRateLimiter": {"rpm": 60},
           "tokenRateLimiter": {"tps": 1, "tpm": 2, "tph": 3, "tpd": 4}}
    assert declared_limits(ProxyConfigPolicies.model_validate(raw)) == Limits(
        requests_per_minute=60, tokens_per_second=1, tokens_per_minute=2, tokens_per_hour=3,
        tokens_per_day=4, max_concurrency=3,
    )
    assert declared_limits(None) == Limits()
    assert declared_limits(ProxyConfigPolicies(concurrency_limit=2)) == Limits(max_concurrency=2)


# Values the spec types as int that are not whole non-negative counts.
NOT_COUNTS = [-1, 1.5, "x", "5", True, 5.0]


@pytest.mark.parametrize("value", NOT_COUNTS)
@pytest.mark.parametrize("field", ["tps", "tpm", "tph", "tpd", "concurrencyLimit"])
def test_values_that_are_not_counts_never_make_the_worker_looser(
    field: str, value: object
) -> None:
    """The client's model refuses some (then the proxy cannot be read, nor called) and
    coerces the others ("5", true, 5.0); a value it keeps limits the worker at least as
    strictly as the emulator's reading of the raw value would."""
    raw = ({field: value} if field == "concurrencyLimit"
           else {"tokenRateLimiter": {field: value}})
    try:
        worker = worker_reading(raw)
    except ValidationError:
        return
    emulator = emulator_reading(raw)
    assert all(key in worker and worker[key] <= limit for key, limit in emulator.items())

"""Policy maths of the emulator's data plane, on a fake clock (plain floats)."""

from __future__ import annotations

from typing import Any

import pytest

from emulator.policies import (
    MIN_WAIT_S,
    OVERDUE_WAIT_S,
    Bucket,
    Lease,
    Limits,
    PolicyRegistry,
    ProxyLimiter,
    Rejection,
    retry_after_headers,
)


def limiter(policies: dict[str, Any], now: float = 0.0) -> ProxyLimiter:
    return ProxyLimiter.create(Limits.from_policies(policies), now)


def admitted(decision: Lease | Rejection) -> Lease:
    assert isinstance(decision, Lease), decision
    return decision


def refused(decision: Lease | Rejection) -> Rejection:
    assert isinstance(decision, Rejection), decision
    return decision


@pytest.mark.parametrize(
    ("policies", "limits"),
    [
        (None, Limits()),
        ({}, Limits()),
        ({"fallbacks": [], "cache": True}, Limits()),
        ({"tokenRateLimiter": {"tpm": 1000}}, Limits(tokens=(("tpm", 1000),))),
        (
            {"tokenRateLimiter": {"tpd": 9, "tps": 1, "tph": 0, "tpm": None}},
            Limits(tokens=(("tps", 1), ("tpd", 9))),
        ),
        ({"tokenRateLimiter": {"tps": True, "tpm": "5"}}, Limits()),
        ({"requestRateLimiter": {"rpm": 60}}, Limits(rpm=60)),
        ({"requestRateLimiter": 60}, Limits()),
        ({"concurrencyLimit": 4}, Limits(concurrency=4)),
        ({"concurrencyLimit": 0}, Limits()),
        ({"concurrencyLimit": -1}, Limits()),
    ],
)
def test_limits_from_policies(policies: Any, limits: Limits) -> None:
    assert Limits.from_policies(policies) == limits
    assert Limits.from_policies(policies).any() == (limits != Limits())


@pytest.mark.parametrize(
    ("wait_s", "seconds", "ms"),
    [
        (0.0, "0", "0"),
        (0.001, "1", "1"),
        (0.0004, "1", "1"),
        (0.5, "1", "500"),
        (1.0, "1", "1000"),
        (1.0000000001, "1", "1000"),
        (1.2, "2", "1200"),
        (59.99, "60", "59990"),
        (86.4, "87", "86400"),
    ],
)
def test_retry_after_headers(wait_s: float, seconds: str, ms: str) -> None:
    assert retry_after_headers(wait_s) == {"Retry-After": seconds, "retry-after-ms": ms}


def test_bucket_refills_up_to_capacity() -> None:
    bucket = Bucket.full(60, 60.0, now=0.0)
    bucket.take(60, 0.0)
    assert bucket.wait_s(0.0) == pytest.approx(1.0)
    assert bucket.wait_s(0.5) == pytest.approx(0.5)
    assert bucket.wait_s(1.0) == 0.0
    bucket.refill(1000.0)
    assert bucket.level == 60.0


def test_bucket_debt_must_be_repaid() -> None:
    bucket = Bucket.full(10, 1.0, now=0.0)  # tps=10
    bucket.take(35, 0.0)  # overdrawn to -25
    assert bucket.wait_s(0.0) == pytest.approx(2.6)  # (1 - -25) / 10 per s
    assert bucket.wait_s(2.6) == 0.0


def test_bucket_ignores_a_clock_going_back() -> None:
    bucket = Bucket.full(10, 1.0, now=5.0)
    bucket.take(10, 5.0)
    bucket.refill(4.0)
    assert bucket.level == 0.0
    assert bucket.updated == 5.0


def test_token_limit_admits_while_capacity_then_refuses() -> None:
    lim = limiter({"tokenRateLimiter": {"tpm": 100}})
    admitted(lim.admit(0.0, prompt_tokens=40, expected_s=0)).finish(20, 0.0)  # 60 used
    admitted(lim.admit(0.0, prompt_tokens=30, expected_s=0)).finish(30, 0.0)  # -20: overdrawn
    rejection = refused(lim.admit(0.0, prompt_tokens=1, expected_s=0))
    assert rejection.wait_s == pytest.approx(21 * 60 / 100)  # until 1 token is back
    assert "tpm=100" in rejection.reason
    assert rejection.headers() == {"Retry-After": "13", "retry-after-ms": "12600"}
    refused(lim.admit(12.5, prompt_tokens=1, expected_s=0))
    admitted(lim.admit(12.6, prompt_tokens=1, expected_s=0))


def test_tokens_count_prompt_at_admission_and_completion_at_end() -> None:
    lim = limiter({"tokenRateLimiter": {"tps": 10}})
    lease = admitted(lim.admit(0.0, prompt_tokens=9, expected_s=0))
    admitted(lim.admit(0.0, prompt_tokens=5, expected_s=0))  # 1 token left: admitted
    lease.finish(6, 0.0)
    assert lim.token_buckets["tps"].level == pytest.approx(-10)
    assert refused(lim.admit(0.0, 1, 0)).wait_s == pytest.approx(1.1)


def test_the_longest_token_window_binds() -> None:
    lim = limiter({"tokenRateLimiter": {"tps": 100, "tph": 100}})
    admitted(lim.admit(0.0, prompt_tokens=100, expected_s=0))
    rejection = refused(lim.admit(0.0, 1, 0))
    assert "tph" in rejection.reason
    assert rejection.wait_s == pytest.approx(36.0)  # 1 token at 100/3600 per s


def test_request_rate_limit() -> None:
    lim = limiter({"requestRateLimiter": {"rpm": 2}})
    admitted(lim.admit(0.0, 1000, 0))
    admitted(lim.admit(0.0, 1000, 0))
    rejection = refused(lim.admit(0.0, 0, 0))
    assert "2 rpm" in rejection.reason
    assert rejection.wait_s == pytest.approx(30.0)
    admitted(lim.admit(30.0, 0, 0))


def test_refused_requests_take_nothing() -> None:
    lim = limiter({"requestRateLimiter": {"rpm": 1}, "tokenRateLimiter": {"tps": 10}})
    admitted(lim.admit(0.0, 5, 0))
    for _ in range(10):
        refused(lim.admit(0.0, 5, 0))
    assert lim.token_buckets["tps"].level == 5
    assert lim.request_bucket is not None
    assert lim.request_bucket.level == 0


def test_concurrency_limit_and_retry_after_from_expected_end() -> None:
    lim = limiter({"concurrencyLimit": 2})
    first = admitted(lim.admit(0.0, 1, expected_s=3.0))
    admitted(lim.admit(1.0, 1, expected_s=5.0))
    rejection = refused(lim.admit(1.5, 1, expected_s=1.0))
    assert "concurrency limit of 2" in rejection.reason
    assert rejection.wait_s == pytest.approx(1.5)  # the first ends at 3.0
    first.finish(0, 2.0)
    admitted(lim.admit(2.0, 1, expected_s=1.0))


def test_concurrency_wait_when_a_request_is_overdue() -> None:
    lim = limiter({"concurrencyLimit": 1})
    admitted(lim.admit(0.0, 1, expected_s=0.0))
    assert refused(lim.admit(10.0, 1, 0)).wait_s == OVERDUE_WAIT_S
    assert refused(lim.admit(10.0, 1, 0)).headers()["retry-after-ms"] == "50"


def test_wait_is_never_zero() -> None:
    lim = limiter({"tokenRateLimiter": {"tps": 10_000}})  # 1 token back in 0.1 ms
    admitted(lim.admit(0.0, 9_999, 0)).finish(1, 0.0)
    assert refused(lim.admit(0.0, 1, 0)).wait_s == MIN_WAIT_S


def test_finish_is_idempotent() -> None:
    lim = limiter({"concurrencyLimit": 1, "tokenRateLimiter": {"tpm": 100}})
    lease = admitted(lim.admit(0.0, 10, 0))
    lease.finish(10, 0.0)
    lease.finish(10, 0.0)
    assert lim.in_flight == {}
    assert lim.token_buckets["tpm"].level == 80


def test_registry_keeps_state_while_policies_are_unchanged() -> None:
    registry = PolicyRegistry()
    policies = {"concurrencyLimit": 1, "cache": False}
    first = registry.limiter_for("p", "id-1", policies, 0.0)
    assert first is not None
    admitted(first.admit(0.0, 1, 10.0))
    same = registry.limiter_for("p", "id-1", {**policies, "cache": True}, 1.0)
    assert same is first
    refused(same.admit(1.0, 1, 0))


@pytest.mark.parametrize(
    ("proxy_id", "policies"),
    [("id-1", {"concurrencyLimit": 2}), ("id-2", {"concurrencyLimit": 1})],
)
def test_registry_resets_on_new_limits_or_new_proxy(proxy_id: str, policies: Any) -> None:
    registry = PolicyRegistry()
    first = registry.limiter_for("p", "id-1", {"concurrencyLimit": 1}, 0.0)
    assert first is not None
    admitted(first.admit(0.0, 1, 10.0))
    fresh = registry.limiter_for("p", proxy_id, policies, 1.0)
    assert fresh is not None
    assert fresh is not first
    admitted(fresh.admit(1.0, 1, 0))


def test_registry_without_limits() -> None:
    registry = PolicyRegistry()
    assert registry.limiter_for("p", "id", {"fallbacks": []}, 0.0) is None
    assert registry.limiter_for("p", "id", None, 0.0) is None

"""Per-proxy admission as the gateway enforces it: token rate, request rate, concurrency.

Limits read from `proxyConfig.policies` (a missing, null, zero or negative value means no limit):

- `tokenRateLimiter: {tps, tpm, tph, tpd}`: tokens per second / minute / hour / day. Each is a
  token bucket holding at most the limit, refilled at limit/window per second (so a full
  window's worth may be spent at once, then the rate is steady). A request is admitted while
  every bucket has at least one token; its prompt tokens are taken at admission and its
  completion tokens when it ends, so one request may overdraw a bucket (the completion length
  is unknown at admission) and later requests wait until the debt is refilled.
- `requestRateLimiter: {rpm}`: **our extension**, not in the AgentRun API. Requests per minute,
  a bucket of `rpm` requests refilled at rpm/60 per second; each admitted request takes one.
- `concurrencyLimit`: requests in flight (streams until their last byte). One more is refused.

A refused request gets HTTP 429 with `Retry-After` (whole seconds, rounded up) and
`retry-after-ms`: the time until every binding limit has capacity again. For the concurrency
limit that is the earliest expected end among the requests in flight (their expected duration
comes from the emulator's latency settings), and at least `OVERDUE_WAIT_S`.

The maths takes the clock as an argument; `PolicyRegistry` keeps one `ProxyLimiter` per proxy
and starts afresh when the proxy's id or limits change.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

TOKEN_WINDOWS_S = {"tps": 1.0, "tpm": 60.0, "tph": 3600.0, "tpd": 86400.0}
REQUEST_WINDOW_S = 60.0
MIN_WAIT_S = 0.001
# An overdue request (past its expected end) gives no estimate; this floor keeps clients that
# honour retry-after-ms from spinning.
OVERDUE_WAIT_S = 0.05
_EPSILON = 1e-9  # float slack, so a bucket refilled to exactly 1 token admits


def retry_after_headers(wait_s: float) -> dict[str, str]:
    """`Retry-After` in whole seconds (ceil) and `retry-after-ms`, from one rounding."""
    wait_ms = max(0, math.ceil(wait_s * 1000 - 1e-6))
    return {"Retry-After": str(math.ceil(wait_ms / 1000)), "retry-after-ms": str(wait_ms)}


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return int(value)


@dataclass(frozen=True)
class Limits:
    tokens: tuple[tuple[str, int], ...] = ()  # (name, limit), e.g. ("tpm", 1000)
    rpm: int | None = None
    concurrency: int | None = None

    @classmethod
    def from_policies(cls, policies: Any) -> Limits:
        if not isinstance(policies, dict):
            return cls()
        token_cfg = policies.get("tokenRateLimiter")
        token_cfg = token_cfg if isinstance(token_cfg, dict) else {}
        tokens = tuple(
            (key, limit)
            for key in TOKEN_WINDOWS_S
            if (limit := _positive_int(token_cfg.get(key))) is not None
        )
        request_cfg = policies.get("requestRateLimiter")
        rpm = _positive_int(request_cfg.get("rpm")) if isinstance(request_cfg, dict) else None
        return cls(tokens, rpm, _positive_int(policies.get("concurrencyLimit")))

    def any(self) -> bool:
        return bool(self.tokens) or self.rpm is not None or self.concurrency is not None


@dataclass
class Bucket:
    """A token bucket: `level` refills at `rate_per_s` up to `capacity`; it may go negative."""

    capacity: float
    rate_per_s: float
    level: float
    updated: float

    @classmethod
    def full(cls, limit: int, window_s: float, now: float) -> Bucket:
        return cls(float(limit), limit / window_s, float(limit), now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
            self.updated = now

    def wait_s(self, now: float, need: float = 1.0) -> float:
        """Seconds until the level reaches `need` (0 when it already has)."""
        self.refill(now)
        missing = need - self.level
        return 0.0 if missing <= _EPSILON else missing / self.rate_per_s

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount


@dataclass(frozen=True)
class Rejection:
    reason: str
    wait_s: float

    def headers(self) -> dict[str, str]:
        return retry_after_headers(self.wait_s)


@dataclass
class Lease:
    """An admitted request. `finish` (idempotent) frees its slot and charges its completion."""

    limiter: ProxyLimiter
    slot: int
    done: bool = False

    def finish(self, completion_tokens: int, now: float) -> None:
        if not self.done:
            self.done = True
            self.limiter.release(self.slot, completion_tokens, now)


@dataclass
class ProxyLimiter:
    limits: Limits
    token_buckets: dict[str, Bucket]
    request_bucket: Bucket | None
    in_flight: dict[int, float] = field(default_factory=dict)  # slot -> expected end
    _slots: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    def create(cls, limits: Limits, now: float) -> ProxyLimiter:
        buckets = {
            key: Bucket.full(limit, TOKEN_WINDOWS_S[key], now) for key, limit in limits.tokens
        }
        requests = Bucket.full(limits.rpm, REQUEST_WINDOW_S, now) if limits.rpm else None
        return cls(limits, buckets, requests)

    def admit(self, now: float, prompt_tokens: int, expected_s: float) -> Lease | Rejection:
        """Admit (taking the prompt tokens and a request) or refuse with the longest wait."""
        waits = self._waits(now)
        if waits:
            reason, wait_s = max(waits, key=lambda item: item[1])
            return Rejection(reason, max(wait_s, MIN_WAIT_S))
        for bucket in self.token_buckets.values():
            bucket.take(prompt_tokens, now)
        if self.request_bucket is not None:
            self.request_bucket.take(1, now)
        slot = next(self._slots)
        self.in_flight[slot] = now + expected_s
        return Lease(self, slot)

    def release(self, slot: int, completion_tokens: int, now: float) -> None:
        self.in_flight.pop(slot, None)
        for bucket in self.token_buckets.values():
            bucket.take(completion_tokens, now)

    def _waits(self, now: float) -> list[tuple[str, float]]:
        waits: list[tuple[str, float]] = []
        limit = self.limits.concurrency
        if limit is not None and len(self.in_flight) >= limit:
            wait = max(min(self.in_flight.values()) - now, OVERDUE_WAIT_S)
            waits.append((f"concurrency limit of {limit} requests in flight reached", wait))
        if self.request_bucket is not None and (wait := self.request_bucket.wait_s(now)) > 0:
            waits.append((f"request rate limit of {self.limits.rpm} rpm exceeded", wait))
        for key, bucket in self.token_buckets.items():
            if (wait := bucket.wait_s(now)) > 0:
                waits.append((f"token rate limit {key}={int(bucket.capacity)} exceeded", wait))
        return waits


@dataclass
class PolicyRegistry:
    """One limiter per proxy name, replaced when the proxy's id or limits change."""

    _limiters: dict[str, tuple[tuple[str, Limits], ProxyLimiter]] = field(default_factory=dict)

    def limiter_for(
        self, name: str, proxy_id: str, policies: Any, now: float
    ) -> ProxyLimiter | None:
        limits = Limits.from_policies(policies)
        if not limits.any():
            self._limiters.pop(name, None)
            return None
        key = (proxy_id, limits)
        held = self._limiters.get(name)
        if held is not None and held[0] == key:
            return held[1]
        limiter = ProxyLimiter.create(limits, now)
        self._limiters[name] = (key, limiter)
        return limiter

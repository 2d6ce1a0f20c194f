"""Cluster-wide rate limiter for one proxy: a thin async shell over ``limiter.lua``.

Every decision is one atomic script call on Redis, timed by Redis ``TIME``, so all worker
processes on all machines share one set of buckets, one lease semaphore and one cool-down.
The numbers the script works with (GCRA interval and burst) come from ``policy``.

Sub-keys are ``key_base + ":rpm"`` and so on. On Redis Cluster all five must share a hash
slot, so put a hash tag in the key base there (``"mpq:rl:{myproxy}"``).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.typing import EncodableT

from worker.ratelimit.policy import DEFAULT_BURST_RATIO, Gcra, Limits, buckets

# A full semaphore is re-polled this often at most: a release can come at any time.
DEFAULT_POLL_MS = 50
# Sleep a little past each wait so coroutines that were refused together do not all
# retry in the same millisecond.
_JITTER_FRACTION = 0.1
_JITTER_MIN_S = 0.005

_SCRIPT_TEXT = Path(__file__).with_name("limiter.lua").read_text(encoding="utf-8")
# Order matters: it is the KEYS layout of limiter.lua.
_KEY_SUFFIXES = ("rpm", "tpm", "tps", "leases", "cooldown")


@dataclass(frozen=True, slots=True)
class Permit:
    """Admitted; release the lease when the call ends (it expires on its own otherwise)."""

    lease_id: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Refused; nothing was recorded. ``reason`` names the limit that waits longest."""

    wait_s: float
    reason: str


def limiter_keys(key_base: str) -> list[str]:
    return [f"{key_base}:{suffix}" for suffix in _KEY_SUFFIXES]


def _interval_ms(bucket: Gcra | None) -> float:
    return 0.0 if bucket is None else bucket.interval_ms  # 0 tells the script "no limit"


def _burst(bucket: Gcra | None) -> float:
    return 0.0 if bucket is None else bucket.burst


def _text(value: bytes | str) -> str:
    # The caller's client may or may not decode responses.
    return value.decode() if isinstance(value, bytes) else value


class RateLimiter:
    """Shared limits for proxies, keyed by a per-proxy ``key_base``."""

    def __init__(
        self,
        redis: Redis,
        *,
        burst_ratio: float = DEFAULT_BURST_RATIO,
        poll_ms: int = DEFAULT_POLL_MS,
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(_SCRIPT_TEXT)
        self._burst_ratio = burst_ratio
        self._poll_ms = poll_ms
        buckets(Limits(), burst_ratio)  # fail here, not on the first call, if the ratio is bad

    async def acquire(
        self, key_base: str, limits: Limits, cost_tokens: int, lease_id: str, lease_ttl_s: float
    ) -> Permit | Wait:
        """One attempt: admit now (recording the cost and the lease) or say how long to wait."""
        if lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be positive, got {lease_ttl_s}")
        b = buckets(limits, self._burst_ratio)
        args: list[EncodableT] = [
            "acquire", self._poll_ms, max(cost_tokens, 0),
            lease_id, max(1, round(lease_ttl_s * 1000)), limits.max_concurrency or 0,
            _interval_ms(b.rpm), _burst(b.rpm),
            _interval_ms(b.tpm), _burst(b.tpm),
            _interval_ms(b.tps), _burst(b.tps),
        ]  # fmt: skip
        admitted, wait_ms, reason = await self._script(keys=limiter_keys(key_base), args=args)
        if admitted:
            return Permit(lease_id)
        return Wait(wait_s=int(wait_ms) / 1000, reason=_text(reason))

    async def release(self, key_base: str, lease_id: str) -> bool:
        """Free a concurrency slot; False if the lease had already expired or was released."""
        held = await self._script(keys=limiter_keys(key_base), args=["release", lease_id])
        return bool(held)

    async def reconcile(self, key_base: str, limits: Limits, delta_tokens: int) -> None:
        """Settle actual - estimated tokens on the token buckets (negative gives back)."""
        b = buckets(limits, self._burst_ratio)
        if delta_tokens == 0 or (b.tpm is None and b.tps is None):
            return
        intervals_ms = [_interval_ms(b.tpm), _interval_ms(b.tps)]
        args: list[EncodableT] = ["reconcile", delta_tokens, *intervals_ms]
        await self._script(keys=limiter_keys(key_base), args=args)

    async def settle(
        self, key_base: str, lease_id: str, limits: Limits, delta_tokens: int
    ) -> None:
        """After a call: free its concurrency slot and reconcile its tokens, in one round
        trip."""
        b = buckets(limits, self._burst_ratio)
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._script(keys=limiter_keys(key_base), args=["release", lease_id],
                               client=pipe)
            if delta_tokens != 0 and (b.tpm is not None or b.tps is not None):
                intervals_ms = [_interval_ms(b.tpm), _interval_ms(b.tps)]
                args: list[EncodableT] = ["reconcile", delta_tokens, *intervals_ms]
                await self._script(keys=limiter_keys(key_base), args=args, client=pipe)
            await pipe.execute()

    async def start_cooldown(self, key_base: str, seconds: float) -> float:
        """Make every worker wait ``seconds`` (e.g. a 429's Retry-After); returns remaining_s.

        An existing longer cool-down is kept.
        """
        args: list[EncodableT] = ["cooldown", max(0, round(seconds * 1000))]
        remaining_ms = await self._script(keys=limiter_keys(key_base), args=args)
        return int(remaining_ms) / 1000

    async def cooldown_remaining_s(self, key_base: str) -> float:
        remaining_ms = await self._redis.pttl(limiter_keys(key_base)[4])
        return max(int(remaining_ms), 0) / 1000  # -2 (no key) means none

    async def wait_for_permit(  # noqa: PLR0917 - mirrors acquire() plus the deadline
        self,
        key_base: str,
        limits: Limits,
        cost_tokens: int,
        lease_id: str,
        lease_ttl_s: float,
        max_wait_s: float,
    ) -> Permit | Wait:
        """Acquire, sleeping on the event loop while the waits stay within ``max_wait_s``.

        Returns the ``Wait`` as soon as the next wait would end past the deadline, so the
        caller can re-queue the job instead of holding a worker slot.
        """
        deadline = time.monotonic() + max_wait_s
        while True:
            result = await self.acquire(key_base, limits, cost_tokens, lease_id, lease_ttl_s)
            if isinstance(result, Permit):
                return result
            remaining_s = deadline - time.monotonic()
            if result.wait_s > remaining_s:
                return result
            jitter_s = random.uniform(0, _JITTER_MIN_S + result.wait_s * _JITTER_FRACTION)
            await asyncio.sleep(min(result.wait_s + jitter_s, remaining_s))

"""Cluster-wide rate limiter for one proxy: a thin async shell over ``limiter.lua``.

Every decision is one atomic script call on Redis, timed by Redis ``TIME``, so all worker
processes on all machines share one set of buckets, one lease semaphore and one cool-down.
The numbers the script works with (GCRA interval and burst) come from ``policy``.

A proxy's keys come from ``Keys.limiter`` (their order is the script's KEYS). On Redis
Cluster they must share a hash slot: a hash tag in the proxy's part of the key.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT

from core.keys import LIMITER_PARTS, LimiterKeys
from worker.ratelimit.policy import DEFAULT_BURST_RATIO, Buckets, Gcra, Limits, buckets

# A full semaphore is re-polled this often at most: a release can come at any time.
DEFAULT_POLL_MS = 50
# Sleep a little past each wait so coroutines that were refused together do not all
# retry in the same millisecond.
_JITTER_FRACTION = 0.1
_JITTER_MIN_S = 0.005

# A proxy without limits still checks the shared cool-down before each call: one PTTL per
# job. Answered from memory for this long (one PTTL per proxy per window, however many jobs
# ask), a cool-down another process starts reaches this one at most this much later.
COOLDOWN_MEMO_S = 0.05

_SCRIPT_TEXT = Path(__file__).with_name("limiter.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Permit:
    """Admitted; renew the lease while the call runs and release it when the call ends (it
    expires on its own otherwise)."""

    lease_id: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Refused; nothing was recorded. ``reason`` names the limit that waits longest."""

    wait_s: float
    reason: str


def _interval_ms(bucket: Gcra | None) -> float:
    return 0.0 if bucket is None else bucket.interval_ms  # 0 tells the script "no limit"


def _burst(bucket: Gcra | None) -> float:
    return 0.0 if bucket is None else bucket.burst


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _reconcile_args(b: Buckets, delta_tokens: int) -> list[EncodableT] | None:
    """The script's reconcile arguments, or None when there is nothing to settle."""
    tokens = b.tokens()
    if delta_tokens == 0 or all(bucket is None for bucket in tokens):
        return None
    return ["reconcile", delta_tokens, *(_interval_ms(bucket) for bucket in tokens)]


_COOLDOWN = LIMITER_PARTS.index("cooldown")


def _cooldown_key(keys: LimiterKeys) -> str:
    return keys[_COOLDOWN]


def _text(value: bytes | str) -> str:
    # The caller's client may or may not decode responses.
    return value.decode() if isinstance(value, bytes) else value


class RateLimiter:
    """Shared limits for proxies, each with its own keys (``Keys.limiter``)."""

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
        # By cool-down key: (monotonic time the answer is good until, when it ends) and the
        # one PTTL under way.
        self._cooldowns: dict[str, tuple[float, float]] = {}
        self._cooldown_lookups: dict[str, asyncio.Future[float]] = {}
        buckets(Limits(), burst_ratio)  # fail here, not on the first call, if the ratio is bad

    async def acquire(
        self, keys: LimiterKeys, limits: Limits, cost_tokens: int, lease_id: str, lease_ttl_s: float
    ) -> Permit | Wait:
        """One attempt: admit now (recording the cost and the lease) or say how long to wait."""
        if lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be positive, got {lease_ttl_s}")
        b = buckets(limits, self._burst_ratio)
        args: list[EncodableT] = [
            "acquire", self._poll_ms, max(cost_tokens, 0),
            lease_id, _ms(lease_ttl_s), limits.max_concurrency or 0,
            *chain.from_iterable((_interval_ms(bucket), _burst(bucket)) for bucket in b),
        ]  # fmt: skip
        admitted, wait_ms, reason = await self._script(keys=keys, args=args)
        if admitted:
            return Permit(lease_id)
        return Wait(wait_s=int(wait_ms) / 1000, reason=_text(reason))

    async def release(self, keys: LimiterKeys, lease_id: str) -> bool:
        """Free a concurrency slot; False if the lease had already expired or was released."""
        held = await self._script(keys=keys, args=["release", lease_id])
        return bool(held)

    async def renew(self, keys: LimiterKeys, lease_id: str, lease_ttl_s: float) -> bool:
        """Extend a lease to ``lease_ttl_s`` from now; False if it is gone (released, or
        expired and reaped by an acquire)."""
        held = await self._script(keys=keys, args=self._renew_args(lease_id, lease_ttl_s))
        return bool(held)

    async def queue_renew(
        self, pipe: Pipeline, keys: LimiterKeys, lease_id: str, lease_ttl_s: float
    ) -> None:
        """``renew`` as one command queued on ``pipe``; its reply is the pipeline's (1 or 0)."""
        await self._script(keys=keys, args=self._renew_args(lease_id, lease_ttl_s), client=pipe)

    @staticmethod
    def _renew_args(lease_id: str, lease_ttl_s: float) -> list[EncodableT]:
        if lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be positive, got {lease_ttl_s}")
        return ["renew", lease_id, _ms(lease_ttl_s)]

    async def reconcile(self, keys: LimiterKeys, limits: Limits, delta_tokens: int) -> None:
        """Settle actual - estimated tokens on the token buckets (negative gives back)."""
        args = _reconcile_args(buckets(limits, self._burst_ratio), delta_tokens)
        if args is not None:
            await self._script(keys=keys, args=args)

    async def settle(
        self, keys: LimiterKeys, lease_id: str, limits: Limits, delta_tokens: int
    ) -> None:
        """After a call: free its concurrency slot and reconcile its tokens, in one round
        trip."""
        reconcile = _reconcile_args(buckets(limits, self._burst_ratio), delta_tokens)
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._script(keys=keys, args=["release", lease_id], client=pipe)
            if reconcile is not None:
                await self._script(keys=keys, args=reconcile, client=pipe)
            await pipe.execute()

    async def start_cooldown(self, keys: LimiterKeys, seconds: float) -> float:
        """Make every worker wait ``seconds`` (e.g. a 429's Retry-After); returns remaining_s.

        An existing longer cool-down is kept.
        """
        args: list[EncodableT] = ["cooldown", max(0, round(seconds * 1000))]
        remaining_s = int(await self._script(keys=keys, args=args)) / 1000
        self._remember_cooldown(_cooldown_key(keys), remaining_s)
        return remaining_s

    async def cooldown_remaining_s(self, keys: LimiterKeys) -> float:
        remaining_ms = await self._redis.pttl(_cooldown_key(keys))
        return max(int(remaining_ms), 0) / 1000  # -2 (no key) means none

    async def recent_cooldown_s(self, keys: LimiterKeys) -> float:
        """`cooldown_remaining_s` as seen at most `COOLDOWN_MEMO_S` ago (see there)."""
        key = _cooldown_key(keys)
        now = time.monotonic()
        known = self._cooldowns.get(key)
        if known is not None and now < known[0]:
            return max(known[1] - now, 0.0)
        lookup = self._cooldown_lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up_cooldown(key, keys))
            self._cooldown_lookups[key] = lookup
            lookup.add_done_callback(partial(self._looked_up, key))
        return await asyncio.shield(lookup)

    async def _look_up_cooldown(self, key: str, keys: LimiterKeys) -> float:
        remaining_s = await self.cooldown_remaining_s(keys)
        self._remember_cooldown(key, remaining_s)
        return remaining_s

    def _looked_up(self, key: str, lookup: asyncio.Future[float]) -> None:
        del self._cooldown_lookups[key]
        if not lookup.cancelled():
            lookup.exception()  # retrieved: a lookup nobody waits for any more is quiet

    def _remember_cooldown(self, key: str, remaining_s: float) -> None:
        now = time.monotonic()
        self._cooldowns[key] = (now + COOLDOWN_MEMO_S, now + remaining_s)

    async def wait_for_permit(  # noqa: PLR0917 - mirrors acquire() plus the deadline
        self,
        keys: LimiterKeys,
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
            result = await self.acquire(keys, limits, cost_tokens, lease_id, lease_ttl_s)
            if isinstance(result, Permit):
                return result
            remaining_s = deadline - time.monotonic()
            if result.wait_s > remaining_s:
                return result
            jitter_s = random.uniform(0, _JITTER_MIN_S + result.wait_s * _JITTER_FRACTION)
            await asyncio.sleep(min(result.wait_s + jitter_s, remaining_s))

"""Backpressure: a bound on the direct calls in flight across every gateway process.

Each call holds a slot, a member of one Redis sorted set scored by its start time (Redis
time), from before its job is submitted until it is answered: one round trip to take it
(lua/admit_call.lua), one to free it. A call that would hold more than
`gateway_max_interactive` slots gets 429 with `Retry-After` and nothing is submitted: a
client told to come back later beats one left waiting behind an unbounded queue. Slots of a
gateway that died without freeing them are dropped once older than the longest call can be.
"""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from core.contract import new_id
from core.keys import Keys
from gateway.errors import OpenAIError

RETRY_AFTER_S = 1
# A slot older than the call timeout by this much belongs to a gateway that went away.
STALE_MARGIN_S = 60.0
_ADMIT = (Path(__file__).parent / "lua" / "admit_call.lua").read_text(encoding="utf-8")


class InFlight:
    def __init__(self, redis: aioredis.Redis, keys: Keys, max_calls: int,
                 call_timeout_s: float) -> None:
        self._redis = redis
        self._key = keys.gateway_interactive()
        self.max_calls = max_calls
        self.stale_after_s = call_timeout_s + STALE_MARGIN_S
        self._admit = redis.register_script(_ADMIT)

    async def admit(self) -> str:
        """A new slot's id; `OpenAIError` 429 when all are taken."""
        slot = new_id()
        held = await self._admit(keys=[self._key], args=[
            slot, self.max_calls, int(self.stale_after_s * 1000)])
        if int(held) >= self.max_calls:
            raise OpenAIError(
                429, f"The gateway has {self.max_calls} direct calls in flight, its limit; "
                f"retry after {RETRY_AFTER_S} s (or use the Batch API for bulk work).",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(RETRY_AFTER_S),
                         "retry-after-ms": str(RETRY_AFTER_S * 1000)})
        return slot

    async def release(self, slot: str) -> None:
        await self._redis.zrem(self._key, slot)

    async def held(self) -> int:
        return int(await self._redis.zcard(self._key))

"""How batch lines reach the broker: per-batch pending lists and a feeder.

A batch line is not a broker message when it is submitted: its record is written and its
id goes to a pending list of its batch and proxy (a *flow*). Worker processes run the
feeder (worker/feeder.py), which moves lines from the flows into the broker a little ahead
of the free slots, several lines per message, taking turns by each batch's priority
(core/lua/feed_lines.lua). So what runs next is decided when a slot is about to free up:
a batch submitted later gets its share at once, a proxy out of permits is not fed (its
lines wait in Redis, not in slots), and cancelling a batch drops its pending lines in a
few script calls instead of sending 50,000 cancelled messages through the workers.

Nothing is lost or doubled when a process dies: each step is one script. A line taken by
the feeder is in `inflight` and in the open-jobs index with a fresh `published_ms` before
its message exists; if the process dies before it publishes, the orphan sweep sends it
(worker/orphans.py), and claims are fenced against any second delivery. `inflight` counts
the window: a line leaves it when it ends (finish_job.lua) or goes back to its flow.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, KeyT

from core.contract import JobRecord
from core.keys import Keys
from core.scripts import ID_SLOT, PUBLISHED_MS, lua_script, text

# Lines given to the broker beyond the live workers' slots, as a fraction of the slots: a
# slot that frees finds its next line waiting, between two feeder rounds.
AHEAD = 0.25
FLOWS_LOOKED_AT = 64  # per round, lowest pass first
CANCEL_ROUND = 2_000  # pending lines cancelled per script call
# A proxy's cap lives this long without a new refusal (finish_job.lua raises it meanwhile).
CAP_TTL_MS = 600_000
DEFAULT_PRIORITY = 1
MAX_PRIORITY = 100


@dataclass(frozen=True)
class FedMessage:
    """Lines of one flow for one broker message."""

    batch_id: str
    proxy: str
    priority: int
    share: float | None  # of the slots when the lines were taken (None: a resend)
    job_ids: list[str]


def check_priority(priority: int) -> None:
    if not DEFAULT_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be {DEFAULT_PRIORITY}-{MAX_PRIORITY} (got {priority})")


def flow_member(batch_id: str, proxy: str) -> str:
    return f"{batch_id}:{proxy}"


class Feed:
    """The flows, the window and the registered workers' slots; one per event loop."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, retention_s: int) -> None:
        self._redis = redis
        self.keys = keys
        self.retention_s = retention_s
        self._take = redis.register_script(lua_script("feed_lines.lua"))
        self._give_back = redis.register_script(lua_script("return_lines.lua"))
        self._cancel = redis.register_script(lua_script("cancel_pending.lua"))
        self._flows = keys.feed("flows")
        self._inflight = keys.feed("inflight")
        self._by_proxy = keys.feed("by_proxy")
        self._workers = keys.feed("workers")
        self._slots = keys.feed("slots")
        self._pending_template = keys.batch_pending(ID_SLOT, "x")[:-1]
        self._job_template = keys.job(ID_SLOT)
        self._pause_prefix = keys.feed_proxy("pause", "x")[:-1]
        self._cap_prefix = keys.feed_proxy("cap", "x")[:-1]

    def window_keys(self) -> list[str]:
        """What finish_job.lua updates when a fed line ends: inflight, by proxy, and the
        prefix of the proxies' caps."""
        return [self._inflight, self._by_proxy, self._cap_prefix]

    def add_pending(self, pipe: Pipeline, batch_id: str, records: Sequence[JobRecord]) -> None:
        """Queue the writes that put new lines at the end of their flows (the caller's
        pipeline also writes their records)."""
        by_proxy: dict[str, list[str]] = {}
        for record in records:
            by_proxy.setdefault(record.proxy, []).append(record.id)
        for proxy, ids in by_proxy.items():
            pipe.rpush(self.keys.batch_pending(batch_id, proxy), *ids)
            # A new flow's pass is raised to the feeder's clock when it is first looked at.
            pipe.zadd(self._flows, {flow_member(batch_id, proxy): 0}, nx=True)

    async def take(self, max_lines: int, per_message: int) -> list[FedMessage]:
        """Move what the window has room for out of the flows (see feed_lines.lua)."""
        keys: list[KeyT] = [self._flows, self.keys.feed("clock"), self._inflight,
                            self._by_proxy, self._workers, self._slots, self.keys.open_jobs()]
        args: list[EncodableT] = [
            int(time.time() * 1000), max_lines, per_message, AHEAD, FLOWS_LOOKED_AT,
            self.keys.batch(ID_SLOT), self._pending_template, self._job_template,
            self._pause_prefix, self._cap_prefix, PUBLISHED_MS]
        reply = await self._take(keys=keys, args=args)
        return [FedMessage(text(m[0]), text(m[1]), int(m[2]), float(m[3]),
                           [text(i) for i in m[4:]]) for m in reply]

    async def give_back(self, job_ids: Sequence[str], pause_s: float) -> int:
        """Lines whose attempt found no permit (released) go back to the front of their
        flows, and their proxy pauses for `pause_s` (see return_lines.lua)."""
        if not job_ids:
            return 0
        keys: list[KeyT] = [self._flows, self._inflight, self._by_proxy, self.keys.open_jobs()]
        args: list[EncodableT] = [int(pause_s * 1000), CAP_TTL_MS, self._job_template,
                                  self._pending_template, self._pause_prefix,
                                  self._cap_prefix, *job_ids]
        return int(await self._give_back(keys=keys, args=args))

    async def register_worker(self, name: str, slots: int, ttl_s: float) -> None:
        """This process runs `slots` jobs at a time for the next `ttl_s` (renewed)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._slots, name, slots)
            pipe.zadd(self._workers, {name: int((time.time() + ttl_s) * 1000)})
            await pipe.execute()

    async def unregister_worker(self, name: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._workers, name)
            pipe.hdel(self._slots, name)
            await pipe.execute()

    async def cancel_pending(self, batch_id: str, templates: Sequence[str]) -> int:
        """Cancel every line of the batch still in its flows; returns how many."""
        cancelled = 0
        while True:
            args: list[EncodableT] = [batch_id, time.time(), self.retention_s, CANCEL_ROUND,
                                      *templates, self._pending_template, self._job_template]
            done, left = await self._cancel(keys=[self._flows], args=args)
            cancelled += int(done)
            if not int(left):
                return cancelled

    async def in_flight(self, batch_id: str) -> list[str]:
        """The batch's lines given to the broker and not final yet."""
        ids = [text(cast(str, i)) for i in await self._redis.zrange(self._inflight, 0, -1)]
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.keys.job(job_id), "batch_id")
            owners = await pipe.execute()
        return [job_id for job_id, owner in zip(ids, owners, strict=True)
                if owner is not None and text(owner) == batch_id]

    async def shares(self) -> dict[str, float]:
        """Each batch with pending lines: its priority over the sum of theirs."""
        members = [text(cast(str, m)) for m in await self._redis.zrange(self._flows, 0, -1)]
        batch_ids = sorted({m.split(":", 1)[0] for m in members})
        if not batch_ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.hget(self.keys.batch(batch_id), "priority")
            priorities = await pipe.execute()
        weights = {b: max(int(cast(Any, p) or DEFAULT_PRIORITY), 1)
                   for b, p in zip(batch_ids, priorities, strict=True)}
        total = sum(weights.values())
        return {b: w / total for b, w in weights.items()}

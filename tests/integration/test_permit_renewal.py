"""A permit's concurrency slot lives as long as its call: renewed with the job's lease, lost
soon after the renewals stop. Against a real Redis: the lease keeper with a short lease, then
a real worker streaming longer than the slot's TTL through a proxy that allows one call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import pytest
from redis.asyncio import Redis
from stack import Stack

from core.contract import JobKind, JobRecord, JobStatus
from core.keys import Keys, LimiterKeys
from core.redis_client import redis_client
from core.store import JobStore
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from worker.lease import AttemptStopped, LeaseKeeper
from worker.ratelimit import Limits, Permit, RateLimiter, Wait

pytestmark = pytest.mark.timeout(120)

ONE_AT_A_TIME = Limits(max_concurrency=1)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[JobStore]:
    keys = Keys(f"mpqtest-{uuid.uuid4().hex[:8]}:")
    client = redis_client(redis_url)
    yield JobStore(client, keys, 600)
    async for key in client.scan_iter(match=f"{keys.prefix}*"):
        await client.unlink(key)
    await client.aclose()


@pytest.fixture
async def limiter(redis_url: str) -> AsyncIterator[RateLimiter]:
    client = redis_client(redis_url)
    yield RateLimiter(client)
    await client.aclose()


@pytest.fixture
async def keys(client: Redis, store: JobStore) -> AsyncIterator[LimiterKeys]:
    keys = store.keys.limiter(uuid.uuid4().hex)
    yield keys
    await client.delete(*keys)


async def running_attempt(store: JobStore, lease_s: float) -> tuple[str, int]:
    [job] = await store.create_jobs([JobRecord(kind=JobKind.CHAT, proxy="p", request={})])
    claim = await store.claim(job.id, "tester", lease_s)
    assert claim.outcome == "claimed"
    return job.id, claim.attempt


async def intruders_refused(limiter: RateLimiter, keys: LimiterKeys, for_s: float) -> int:
    """Ask for the one slot every 50 ms for ``for_s``; fails at the first permit."""
    asked = 0
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        intruder = await limiter.acquire(keys, ONE_AT_A_TIME, 1, uuid.uuid4().hex, 30)
        assert isinstance(intruder, Wait), f"a second call got in after {asked} refusals"
        assert intruder.reason == "concurrency"
        asked += 1
        await asyncio.sleep(0.05)
    return asked


async def test_keeper_renews_a_held_slot_with_the_lease_and_drops_it_after(
    store: JobStore, limiter: RateLimiter, keys: LimiterKeys
) -> None:
    keeper = LeaseKeeper(store, lease_s=0.6, check_s=0.1)  # renews every 0.2 s
    ttl_s = keeper.hold_ttl_s
    assert ttl_s == pytest.approx(1.2)
    job_id, attempt = await running_attempt(store, 0.6)
    renew = partial(limiter.queue_renew, keys=keys, lease_id="call", lease_ttl_s=ttl_s)

    async def long_call() -> int:
        permit = await limiter.acquire(keys, ONE_AT_A_TIME, 1, "call", ttl_s)
        assert isinstance(permit, Permit)
        with keeper.holding(job_id, attempt, renew):
            return await intruders_refused(limiter, keys, 3 * ttl_s)

    refused = await keeper.run(job_id, attempt, long_call())
    print(f"slot kept {3 * ttl_s:.1f} s (TTL {ttl_s:.1f} s); {refused} intruders refused")
    # The call ended without releasing (a lost release): the slot frees within its TTL.
    started = time.monotonic()
    while not isinstance(await limiter.acquire(keys, ONE_AT_A_TIME, 1, "next", 30), Permit):
        assert time.monotonic() - started < ttl_s + 0.5, "the slot outlived its TTL"
        await asyncio.sleep(0.05)


async def test_keeper_stops_renewing_the_slot_of_a_cancelled_attempt(
    store: JobStore, limiter: RateLimiter, keys: LimiterKeys
) -> None:
    keeper = LeaseKeeper(store, lease_s=0.6, check_s=0.1)
    ttl_s = keeper.hold_ttl_s
    job_id, attempt = await running_attempt(store, 0.6)
    renew = partial(limiter.queue_renew, keys=keys, lease_id="call", lease_ttl_s=ttl_s)
    released: list[bool] = []

    async def call_released_when_stopped() -> None:
        assert isinstance(await limiter.acquire(keys, ONE_AT_A_TIME, 1, "call", ttl_s), Permit)
        try:
            with keeper.holding(job_id, attempt, renew):
                await asyncio.sleep(30)
        finally:  # as inference settles
            released.append(await limiter.release(keys, "call"))

    task = asyncio.ensure_future(keeper.run(job_id, attempt, call_released_when_stopped()))
    await asyncio.sleep(2 * ttl_s)
    assert not task.done()
    assert isinstance(await limiter.acquire(keys, ONE_AT_A_TIME, 1, "next", 30), Wait)
    assert await store.cancel(job_id)
    with pytest.raises(AttemptStopped):
        await asyncio.wait_for(task, 5)
    assert released == [True]
    assert isinstance(await limiter.acquire(keys, ONE_AT_A_TIME, 1, "next", 30), Permit)


# ---------------------------------------------------------------- a real worker

LEASE_S = 1.5  # the slot's TTL is two leases: 3 s
STREAM_TOKENS, TPOT_S = 200, 0.05  # a 9-10 s stream


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0, delete_delay_s=0, tpot_s=TPOT_S,
                                default_completion_tokens=STREAM_TOKENS)
    with EmulatorServer(settings=settings) as server:
        yield server


@pytest.fixture
async def stack(redis_url: str, emulator: EmulatorServer) -> AsyncIterator[Stack]:
    # No redelivery of a message while its stream runs: this test is about the slot only.
    stack = Stack.create(redis_url, emulator.url, lease_s=LEASE_S, visibility_timeout_s=60)
    yield stack
    await stack.close()


async def test_a_stream_longer_than_the_slot_ttl_keeps_the_proxy_at_one_call(
    stack: Stack, start_worker: Callable[..., Any]
) -> None:
    proxy = await stack.proxy(policies={"concurrencyLimit": 1})
    start_worker(stack.settings, stack.emulator_url)
    request = {"messages": [{"role": "user", "content": "long"}], "stream": True}
    jobs = await stack.submit(JobKind.CHAT, proxy, request, count=2)
    done = [await stack.wait(job.id, timeout_s=60) for job in jobs]

    statuses = [record.status for record in done]
    assert statuses == [JobStatus.SUCCEEDED] * 2, [record.errors for record in done]
    durations = sorted((r.finished_at or 0) - (r.started_at or 0) for r in done)
    # The first stream ran past twice its slot's TTL: only renewals kept the slot.
    assert durations[0] > 2 * (2 * LEASE_S)
    # The emulator refuses a second call in flight with a 429: there was none.
    by_proxy = stack.emulator_stats()["by_proxy"][proxy]
    print(f"\ntwo streams, concurrency 1, slot TTL {2 * LEASE_S:.0f} s: durations "
          f"{[round(d, 1) for d in durations]} s, answers {by_proxy}")
    assert by_proxy.get("429", 0) == 0
    assert all(record.errors == [] for record in done)

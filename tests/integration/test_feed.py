"""The feeder's scripts (core/feed.py) on real servers: the window, turns by priority,
pauses and caps of a proxy out of permits, cheap cancels, and lines that moved on."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from polling import until
from stack import Stack
from workers import WorkerProcess

from core.contract import JobKind, JobRecord, JobStatus, new_id
from core.dispatch import INFERENCE_QUEUE, MANAGEMENT_QUEUE, cancel_batch
from core.feed import FedMessage
from core.store import JobStore
from emulator.server import EmulatorServer

SLOTS = 40  # one registered worker: a window of SLOTS * (1 + AHEAD) = 50 lines
WINDOW = 50
PER_MESSAGE = 4


def lines(count: int, proxy: str = "p1") -> list[JobRecord]:
    return [JobRecord(kind=JobKind.CHAT, proxy=proxy, custom_id=f"line-{i}",
                      request={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            for i in range(count)]


async def submit(store: JobStore, records: list[JobRecord], priority: int = 1) -> str:
    batch_id = new_id()
    await store.open_batch(batch_id, None, [], priority=priority)
    await store.create_jobs(records, batch_id, pending=True)
    await store.seal_batch(batch_id)
    return batch_id


def by_batch(messages: list[FedMessage]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for message in messages:
        counts[message.batch_id] += len(message.job_ids)
    return counts


async def finish_all(store: JobStore, messages: list[FedMessage]) -> None:
    for message in messages:
        for job_id in message.job_ids:
            claim = await store.claim(job_id, "w", 60)
            await store.finish(job_id, claim.attempt, JobStatus.SUCCEEDED, result={})


async def fed_over(store: JobStore, rounds: int) -> Counter[str]:
    """Lines fed to each batch over `rounds` rounds, every line ending before the next."""
    shares: Counter[str] = Counter()
    for _ in range(rounds):
        fed = await store.feed.take(1000, PER_MESSAGE)
        shares += by_batch(fed)
        await finish_all(store, fed)
    return shares


async def test_nothing_is_fed_without_a_live_worker(store: JobStore) -> None:
    await submit(store, lines(10))
    assert await store.feed.take(1000, PER_MESSAGE) == []
    await store.feed.register_worker("gone", SLOTS, ttl_s=0.05)
    await asyncio.sleep(0.1)  # its registration lapsed: it died
    assert await store.feed.take(1000, PER_MESSAGE) == []


async def test_the_window_is_the_live_slots_and_a_little_ahead(store: JobStore) -> None:
    batch_id = await submit(store, lines(200))
    await store.feed.register_worker("w", SLOTS, ttl_s=60)
    first = await store.feed.take(1000, PER_MESSAGE)
    assert sum(len(m.job_ids) for m in first) == WINDOW
    assert all(len(m.job_ids) <= PER_MESSAGE and m.batch_id == batch_id for m in first)
    assert await store.feed.take(1000, PER_MESSAGE) == []  # full until lines end
    await finish_all(store, first[:2])
    again = await store.feed.take(1000, PER_MESSAGE)
    assert sum(len(m.job_ids) for m in again) == 2 * PER_MESSAGE
    # Input order within the batch; a line fed is in flight until it ends.
    ids = await store.batch_job_ids(batch_id)
    assert [i for m in first + again for i in m.job_ids] == ids[:WINDOW + 2 * PER_MESSAGE]
    waiting = first[-1].job_ids[0]
    record = await store.load(waiting)
    assert record is not None and record.status == JobStatus.QUEUED
    assert waiting in await store.feed.in_flight(batch_id)


async def test_equal_batches_take_turns_and_a_later_one_gets_its_share_at_once(
    store: JobStore
) -> None:
    await store.feed.register_worker("w", SLOTS, ttl_s=60)
    early = await submit(store, lines(500))
    fed = await store.feed.take(1000, PER_MESSAGE)
    assert by_batch(fed)[early] == WINDOW
    await finish_all(store, fed)
    late = await submit(store, lines(500))
    shares = await fed_over(store, rounds=4)
    assert abs(shares[early] - shares[late]) <= PER_MESSAGE, shares


async def test_priority_is_a_weight(store: JobStore) -> None:
    await store.feed.register_worker("w", SLOTS, ttl_s=60)
    low = await submit(store, lines(500), priority=1)
    high = await submit(store, lines(500), priority=3)
    shares = await fed_over(store, rounds=6)
    assert 2.5 <= shares[high] / shares[low] <= 3.5, shares
    assert await store.feed.shares() == {low: 0.25, high: 0.75}


async def test_a_proxy_out_of_permits_pauses_and_leaves_the_room_to_others(
    store: JobStore
) -> None:
    await store.feed.register_worker("w", SLOTS, ttl_s=60)
    await submit(store, lines(100, proxy="slow"))
    fed = await store.feed.take(PER_MESSAGE * 2, PER_MESSAGE)
    ids = [i for m in fed for i in m.job_ids]
    # One line holds a permit; the others found none: released, then given back.
    for job_id in ids:
        await store.claim(job_id, "w", 60)
    for job_id in ids[1:]:
        await store.release(job_id, 1)
    assert await store.feed.give_back(ids[1:], pause_s=0.3) == len(ids) - 1
    free = await submit(store, lines(100, proxy="free"))
    paused = await store.feed.take(1000, PER_MESSAGE)
    assert {m.proxy for m in paused} == {"free"}
    await finish_all(store, paused)
    await asyncio.sleep(0.35)
    # The pause is over; the cap is the one line still in flight: nothing more yet.
    after = await store.feed.take(1000, PER_MESSAGE)
    assert "slow" not in {m.proxy for m in after}
    assert {m.batch_id for m in after} == {free}
    # Each line of the proxy that ends lets one more in (the one that ended, and one
    # more); the given-back lines come first, in order.
    await store.finish(ids[0], 1, JobStatus.SUCCEEDED, result={})
    await finish_all(store, after)
    resumed = [m for m in await store.feed.take(1000, PER_MESSAGE) if m.proxy == "slow"]
    assert [i for m in resumed for i in m.job_ids] == ids[1:3]


async def test_cancel_ends_pending_lines_in_bulk_and_the_fed_ones_one_by_one(
    store: JobStore
) -> None:
    await store.feed.register_worker("w", SLOTS, ttl_s=60)
    batch_id = await submit(store, lines(3000))
    fed = await store.feed.take(1000, PER_MESSAGE)
    assert await cancel_batch(store, batch_id) == 3000
    batch = await store.batch(batch_id)
    assert batch is not None and batch.status == "finished"
    assert batch.counts[JobStatus.CANCELLED] == 3000
    assert await store.feed.take(1000, PER_MESSAGE) == []
    assert await store.feed.in_flight(batch_id) == []
    # A fed line's message still comes: its claim finds it final.
    claim = await store.claim(fed[0].job_ids[0], "w", 60)
    assert claim.outcome == "final"


async def test_a_line_cancelled_on_its_own_while_pending_is_dropped(store: JobStore) -> None:
    await store.feed.register_worker("w", SLOTS, ttl_s=60)
    batch_id = await submit(store, lines(3))
    first, *rest = await store.batch_job_ids(batch_id)
    assert await store.cancel(first)
    fed = await store.feed.take(1000, PER_MESSAGE)
    assert [i for m in fed for i in m.job_ids] == rest
    assert sorted(await store.feed.in_flight(batch_id)) == sorted(rest)


async def test_only_workers_that_run_batch_lines_join_the_window(
    redis_url: str, emulator: EmulatorServer, start_worker: Callable[..., WorkerProcess],
) -> None:
    stack = Stack.create(redis_url, emulator.url)
    try:
        start_worker(stack.settings, emulator.url, slots=7, queues=MANAGEMENT_QUEUE)
        start_worker(stack.settings, emulator.url, slots=5, queues=INFERENCE_QUEUE)
        slots_key = stack.store.keys.feed("slots")
        await until(lambda: stack.redis.hvals(slots_key), 20, 0.1,
                    what="a worker to register its slots")
        await asyncio.sleep(0.5)  # the management worker was ready first
        assert [int(v) for v in await stack.redis.hvals(slots_key)] == [5]
    finally:
        await stack.close()

"""The shared stream reader (producer/stream_reader.py) on a real server: every follower
gets exactly its stream's entries in order, over one blocking connection; a follower that
joins while the read waits is served at once; quiet streams time out; errors reach the
followers."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis
from polling import until
from redis.exceptions import ConnectionError as RedisConnectionError
from workers import running

from core.contract import ChunkEntry, JobKind, JobRecord, JobStatus
from core.embedded_redis import free_port
from core.keys import Keys
from core.redis_client import redis_client
from core.store import JobStore
from producer import jobs
from producer.jobs import AsyncJob
from producer.stream_reader import StreamReader

RETENTION_S = 600


def _entry(seq: int) -> ChunkEntry:
    return ChunkEntry(attempt=1, seq=seq, kind="delta", data=f'{{"text":"{seq}"}}')


async def _collect(reader: StreamReader, job_id: str, count: int) -> list[str]:
    seqs: list[str] = []
    async with reader.follow(job_id) as follow:
        while len(seqs) < count:
            entries = await follow.read(5.0)
            assert entries, f"{job_id}: nothing new after {seqs}"
            seqs += [fields["seq"] for _, fields in entries]
    return seqs


async def test_many_followers_get_their_entries_in_order_on_one_connection(
    store: JobStore, any_redis_url: str
) -> None:
    name = f"reader-{uuid.uuid4().hex[:8]}"
    reader_client = redis_client(f"{any_redis_url}?client_name={name}")
    reader = StreamReader(JobStore(reader_client, store.keys, RETENTION_S), block_ms=200)
    observer = aioredis.Redis.from_url(any_redis_url, decode_responses=True)
    jobs = [f"job{i}" for i in range(40)]
    await running(store, *jobs)

    async def write(job_id: str) -> None:
        for seq in range(15):
            await store.append_chunks(job_id, [_entry(seq)])
            await asyncio.sleep(0.005)  # on purpose: the writes interleave with the reads

    try:
        readers = [asyncio.ensure_future(_collect(reader, job_id, 15)) for job_id in jobs]

        async def reading() -> bool:
            return any(c["name"] == name and "b" in c["flags"]
                       for c in await observer.client_list())

        await until(reading, 5, 0.01, what="the followers' read to block in XREAD")
        await asyncio.gather(*(write(job_id) for job_id in jobs))
        connections = [c for c in await observer.client_list() if c["name"] == name]
        results = await asyncio.gather(*readers)
    finally:
        await reader.aclose()
        await reader_client.aclose()
        await observer.aclose()
    assert results == [[str(seq) for seq in range(15)]] * len(jobs)
    assert len(connections) <= 2  # the blocking read, and one for a wake-up at most


async def test_a_follower_that_joins_while_the_read_waits_is_served_at_once(
    store: JobStore,
) -> None:
    reader = StreamReader(store, block_ms=5_000)
    await running(store, "late")
    await store.append_chunks("late", [_entry(0)])
    try:
        async with reader.follow("early") as early:
            assert await early.read(0.2) == []  # the 5 s read is now waiting
            started = time.monotonic()
            async with reader.follow("late") as late:
                entries = await late.read(5.0)
            waited_s = time.monotonic() - started
    finally:
        await reader.aclose()
    assert [fields["seq"] for _, fields in entries] == ["0"]
    assert waited_s < 1.0


async def test_two_followers_of_one_stream_each_get_what_follows_their_position(
    store: JobStore,
) -> None:
    await running(store, "shared")
    ids = await store.append_chunks("shared", [_entry(seq) for seq in range(4)])
    assert ids is not None
    reader = StreamReader(store, block_ms=200)
    try:
        async with reader.follow("shared") as whole, reader.follow("shared", ids[1]) as tail:
            first, second = await whole.read(2.0), await tail.read(2.0)
    finally:
        await reader.aclose()
    assert [entry_id for entry_id, _ in first] == ids
    assert [entry_id for entry_id, _ in second] == ids[2:]


async def test_a_quiet_stream_times_out_empty(store: JobStore) -> None:
    reader = StreamReader(store, block_ms=100)
    try:
        async with reader.follow("quiet") as follow:
            started = time.monotonic()
            assert await follow.read(0.3) == []
            assert 0.25 < time.monotonic() - started < 2.0
    finally:
        await reader.aclose()


async def test_followers_hear_of_a_lost_server() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", retries=0)
    reader = StreamReader(JobStore(client, Keys("mpqtest-reader-gone:"), RETENTION_S))
    try:
        async with reader.follow("a") as follow:
            with pytest.raises(RedisConnectionError):
                await follow.read(5.0)
    finally:
        await reader.aclose()
        await client.aclose()


async def test_a_job_that_ended_while_its_first_read_waited_streams_everything(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read comes back empty, the entries reach the follow while the record is
    loaded, and the record is final by then: the stream must still yield them all (it
    once judged "drained" from the follow's position and ended with nothing)."""
    monkeypatch.setattr(jobs, "STREAM_BLOCK_S", 0.0)  # every read returns at once
    [record] = await store.create_jobs([JobRecord(kind=JobKind.CHAT, proxy="p", request={})])
    await store.claim(record.id, "w1", lease_s=600)
    await store.append_chunks(record.id, [_entry(seq) for seq in range(3)])
    done = ChunkEntry(attempt=1, seq=3, kind="done", data="{}")
    assert await store.finish(record.id, 1, JobStatus.SUCCEEDED, result={}, last_chunk=done)
    for _ in range(5):  # the race is likely, not certain, on each try: the fix makes it moot
        reader = StreamReader(store)
        try:
            events = [event async for event in AsyncJob(store, record.id, reader).stream()]
        finally:
            await reader.aclose()
        assert [event.kind for event in events] == ["delta"] * 3 + ["done"]


async def test_a_stream_skips_entries_of_an_attempt_older_than_one_it_saw(
    store: JobStore, any_redis_url: str
) -> None:
    """Entries of a superseded attempt after its successor's first one (the store refuses
    them now; a stream written before that fence may hold some) are never yielded: after
    the `restart` comes the final attempt's text alone."""
    raw = aioredis.Redis.from_url(any_redis_url)  # plain XADDs: around the fence
    written = [(1, "delta", "a"), (2, "delta", "B"), (1, "delta", "stale"), (1, "error", ""),
               (2, "delta", "C"), (2, "done", "")]
    try:
        for seq, (attempt, kind, text) in enumerate(written):
            entry = ChunkEntry(attempt=attempt, seq=seq, kind=kind, data=f'{{"text":"{text}"}}')
            await raw.xadd(store.keys.job_chunks("mixed"), dict(entry.to_redis()))
    finally:
        await raw.aclose()
    events = [event async for event in AsyncJob(store, "mixed").stream()]
    assert [(event.kind, event.attempt, event.text) for event in events] == [
        ("delta", 1, "a"), ("restart", 2, ""), ("delta", 2, "B"), ("delta", 2, "C"),
        ("done", 2, "")]


async def test_a_stream_that_does_not_end_in_time_raises_and_the_job_runs_on(
    store: JobStore,
) -> None:
    await running(store, "slow")
    await store.append_chunks("slow", [_entry(0)])
    started = time.monotonic()
    seen: list[str] = []
    with pytest.raises(jobs.JobTimeoutError):
        async for event in AsyncJob(store, "slow").stream(timeout=0.3):
            seen.append(event.text)
    assert seen == ["0"]
    assert 0.25 < time.monotonic() - started < 2.0
    record = await store.load("slow")
    assert record is not None
    assert record.status == JobStatus.RUNNING

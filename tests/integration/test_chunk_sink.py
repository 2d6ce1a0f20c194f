"""The worker's shared chunk sink (worker/chunks.py) on a real server: the entries of many
streams are written together and each stream keeps its order; a failed write fails the
attempts it carried when they close; a refused write stops its attempt only; a cancelled job
does not cancel a shared write."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from workers import running

from core.embedded_redis import free_port, redis_server
from core.keys import Keys
from core.redis_client import redis_client
from core.store import JobStore
from worker.chunks import ChunkSink
from worker.lease import AttemptStopped

RETENTION_S = 600


async def _texts(store: JobStore, job_id: str) -> list[tuple[int, str]]:
    return [(entry.seq, entry.payload()["text"] if entry.kind == "delta" else entry.kind)
            for _, entry in await store.read_chunks(job_id)]


async def test_streams_keep_their_order_across_many_writes(store: JobStore) -> None:
    sink = ChunkSink(store)

    async def stream(job_id: str, count: int) -> None:
        writer = sink.writer(job_id, attempt=1)
        for i in range(count):
            writer.delta({"text": f"{job_id}-{i}"})
            if i % 3 == 0:
                await asyncio.sleep(0)  # later entries land in later writes
        await writer.error("cut")
        assert writer.written == count + 1

    jobs = {f"job{n}": 20 + 7 * n for n in range(12)}
    await running(store, *jobs)
    await asyncio.gather(*(stream(job_id, count) for job_id, count in jobs.items()))
    for job_id, count in jobs.items():
        expected = [(i, f"{job_id}-{i}") for i in range(count)] + [(count, "error")]
        assert await _texts(store, job_id) == expected


async def test_one_iterations_entries_go_in_one_script_call() -> None:
    with redis_server(None) as url:  # its own server: the call count is ours alone
        client = redis_client(url)
        store = JobStore(client, Keys("mpqtest-sink:"), RETENTION_S)
        sink = ChunkSink(store)
        await running(store, "warm-up")
        await running(store, *(f"job{n}" for n in range(50)), attempt=2)
        warm_up = sink.writer("warm-up", attempt=1)
        await warm_up.error("")  # loads the script: from now on one call is one EVALSHA
        counter = redis.Redis.from_url(url)
        before = counter.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        writers = [sink.writer(f"job{n}", attempt=2) for n in range(50)]
        for writer in writers:
            writer.delta({"text": "a"})
            writer.delta({"text": "b"})
        await asyncio.gather(*(writer.close() for writer in writers))
        stats = counter.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] - before == 1
        assert [w.written for w in writers] == [2] * 50
        assert await _texts(store, "job49") == [(0, "a"), (1, "b")]
        counter.close()
        await client.aclose()


async def test_a_failed_write_fails_each_attempt_it_carried() -> None:
    dead = redis_client(f"redis://127.0.0.1:{free_port()}/0", retries=0)
    sink = ChunkSink(JobStore(dead, Keys("mpqtest-sink-dead:"), RETENTION_S))
    first, second = sink.writer("a", attempt=1), sink.writer("b", attempt=1)
    first.delta({"text": "x"})
    second.delta({"text": "y"})
    with pytest.raises(RedisConnectionError):
        await first.error("upstream cut")
    with pytest.raises(RedisConnectionError):
        await second.close()
    assert (first.written, second.written) == (0, 0)
    await dead.aclose()


async def test_a_cancelled_job_does_not_cancel_a_shared_write(store: JobStore) -> None:
    sink = ChunkSink(store)
    await running(store, "cancelled", "other")
    cancelled, other = sink.writer("cancelled", attempt=1), sink.writer("other", attempt=1)
    cancelled.delta({"text": "c"})
    other.delta({"text": "o"})
    closing = asyncio.ensure_future(cancelled.close())
    await asyncio.sleep(0)  # the write is under way and `closing` waits for it
    closing.cancel()
    await other.close()
    assert await _texts(store, "other") == [(0, "o")]
    assert await _texts(store, "cancelled") == [(0, "c")]
    with pytest.raises(asyncio.CancelledError):
        await closing


async def test_a_refused_write_stops_its_attempt_only(store: JobStore) -> None:
    """One write carries a superseded attempt's entries, an ended job's and a live one's:
    the live one's go in; each of the others stops its attempt (`AttemptStopped`) at its
    next entry or close, and queues nothing more (not even its `error`)."""
    sink = ChunkSink(store)
    await running(store, "live", "ended")
    await running(store, "taken-over", attempt=2)
    assert await store.cancel("ended")
    live, ended = sink.writer("live", attempt=1), sink.writer("ended", attempt=1)
    zombie = sink.writer("taken-over", attempt=1)
    for writer in (live, ended, zombie):
        writer.delta({"text": writer.job_id})
    await live.close()
    for writer in (ended, zombie):
        with pytest.raises(AttemptStopped):
            writer.delta({"text": "more"})
        with pytest.raises(AttemptStopped):
            await writer.error("stopped")
        assert writer.written == 0
        assert await _texts(store, writer.job_id) == []
    assert (live.written, await _texts(store, "live")) == (1, [(0, "live")])

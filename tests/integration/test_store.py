"""JobStore against real servers: the embedded Valkey, and the system Redis
(redis://127.0.0.1:6379/0) when CI is set or that server answers.

Each test works under its own random key prefix and deletes only those keys,
so a shared server is never flushed.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from polling import until

from core.contract import BatchStatus, ChunkEntry, JobRecord, JobStatus
from core.embedded_redis import EmbeddedRedis, redis_server
from core.keys import Keys
from core.store import Claim, JobStore

SYSTEM_REDIS_URL = "redis://127.0.0.1:6379/0"
RETENTION_S = 300
LEASE_S = 600


@functools.cache
def _system_redis_wanted() -> bool:
    if os.environ.get("CI"):
        return True  # CI starts it; a missing server must fail, not skip
    try:
        with redis.Redis.from_url(SYSTEM_REDIS_URL, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(params=["embedded", "system"])
def server_url(request: pytest.FixtureRequest) -> str:
    if request.param == "system":
        if not _system_redis_wanted():
            pytest.skip("no Redis at 127.0.0.1:6379 and CI not set")
        return SYSTEM_REDIS_URL
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def keys() -> Keys:
    return Keys(f"mpqtest-{uuid.uuid4().hex}:")


@pytest.fixture
async def client(server_url: str, keys: Keys) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server_url, decode_responses=True)
    yield client
    async for key in client.scan_iter(match=keys.pattern(), count=500):
        await client.unlink(key)
    await client.aclose()


@pytest.fixture
def store(client: aioredis.Redis, keys: Keys) -> JobStore:
    return JobStore(client, keys, retention_s=RETENTION_S)


def _records(n: int, **fields: object) -> list[JobRecord]:
    return [
        JobRecord.model_validate(
            {"kind": "chat", "proxy": "p1", "request": {"n": i, "text": "héllo"}, **fields}
        )
        for i in range(n)
    ]


async def _counts(store: JobStore, batch_id: str) -> dict[str, int]:
    batch = await store.batch(batch_id)
    assert batch is not None
    return {status.value: n for status, n in batch.counts.items() if n}


async def test_round_trip(store: JobStore) -> None:
    records = _records(3, custom_id="line")
    stored = await store.create_jobs(records, batch_id="b1")
    assert [r.batch_id for r in stored] == ["b1"] * 3
    for record in stored:
        assert await store.load(record.id) == record
    assert await store.load("missing") is None
    assert await store.batch_job_ids("b1") == [r.id for r in records]
    batch = await store.batch("b1")
    assert batch is not None
    assert (batch.total, batch.status, batch.done) == (3, BatchStatus.IN_PROGRESS, 0)
    assert await _counts(store, "b1") == {"queued": 3}
    assert await store.batch("missing") is None


async def test_round_trip_without_decode_responses(server_url: str, keys: Keys) -> None:
    raw_client = aioredis.Redis.from_url(server_url)
    try:
        store = JobStore(raw_client, keys, retention_s=RETENTION_S)
        [record] = await store.create_jobs(_records(1), batch_id="b1")
        assert await store.load(record.id) == record
        assert await store.batch_job_ids("b1") == [record.id]
        assert (await store.claim(record.id, "w1", LEASE_S)).outcome == "claimed"
        await store.append_chunks(record.id, [ChunkEntry(attempt=1, seq=0, kind="done")])
        [(_, entry)] = await store.read_chunks(record.id)
        assert entry.kind == "done"
    finally:
        async for key in raw_client.scan_iter(match=keys.pattern()):
            await raw_client.unlink(key)
        await raw_client.aclose()


async def test_batches_grow_across_calls(store: JobStore) -> None:
    first, second = _records(2), _records(3)
    await store.create_jobs(first, batch_id="b1")
    await store.create_jobs(second, batch_id="b1")
    assert await store.batch_job_ids("b1") == [r.id for r in first + second]
    assert await store.batch_job_ids("b1", 1, 2) == [first[1].id, second[0].id]
    assert await _counts(store, "b1") == {"queued": 5}


async def test_finish_fenced_by_attempt(store: JobStore) -> None:
    [job] = await store.create_jobs(_records(1, attempt=1), batch_id="b1")  # one ran before
    assert (await store.claim(job.id, "w1", LEASE_S)).attempt == 2
    assert (await store.claim(job.id, "w-stale", LEASE_S)).outcome == "busy"
    assert not await store.finish(job.id, 1, JobStatus.FAILED, error="stale")
    assert await store.finish(job.id, 2, JobStatus.SUCCEEDED, result={"ok": 1}, usage={"t": 3})
    assert not await store.finish(job.id, 2, JobStatus.FAILED, error="dup")
    assert not await store.finish(job.id, 3, JobStatus.FAILED, error="later")
    assert (await store.claim(job.id, "w2", LEASE_S)).outcome == "final"
    assert not await store.cancel(job.id)
    done = await store.load(job.id)
    assert done is not None
    assert (done.status, done.attempt, done.worker) == (JobStatus.SUCCEEDED, 2, "w1")
    assert (done.result, done.usage, done.error) == ({"ok": 1}, {"t": 3}, None)
    assert done.finished_at is not None
    assert await _counts(store, "b1") == {"succeeded": 1}


async def test_retry_path_keeps_one_error_per_attempt(store: JobStore) -> None:
    [job] = await store.create_jobs(_records(1), batch_id="b1")
    assert (await store.claim(job.id, "w1", LEASE_S)).attempt == 1
    assert await _counts(store, "b1") == {"running": 1}
    assert await store.mark_retrying(job.id, 1, "503 upstream")
    assert not await store.mark_retrying(job.id, 1, "503 upstream")  # redelivered report
    assert await _counts(store, "b1") == {"retrying": 1}
    assert (await store.claim(job.id, "w2", LEASE_S)).attempt == 2
    assert (await store.claim(job.id, "w3", LEASE_S)).outcome == "busy"  # redelivered
    assert await store.finish(job.id, 2, JobStatus.FAILED, error="400 bad request")
    done = await store.load(job.id)
    assert done is not None
    assert done.errors == ["503 upstream", "400 bad request"]
    assert (done.error, done.worker) == ("400 bad request", "w2")
    assert await _counts(store, "b1") == {"failed": 1}


async def test_cancel(store: JobStore) -> None:
    queued, running = await store.create_jobs(
        [*_records(1), *_records(1, attempt=3)], batch_id="b1")
    assert (await store.claim(running.id, "w1", LEASE_S)).attempt == 4
    assert await store.cancel(queued.id)
    assert await store.cancel(running.id)
    assert not await store.cancel(running.id)
    assert not await store.finish(running.id, 4, JobStatus.SUCCEEDED, result={})
    record = await store.load(running.id)
    assert record is not None
    assert (record.status, record.attempt) == (JobStatus.CANCELLED, 4)
    assert await _counts(store, "b1") == {"cancelled": 2}
    assert not await store.cancel("missing")


async def test_finish_needs_final_status(store: JobStore) -> None:
    with pytest.raises(ValueError, match="final status"):
        await store.finish("x", 1, JobStatus.RUNNING)


async def test_unknown_job_never_moves(store: JobStore, client: aioredis.Redis, keys: Keys) -> None:
    assert (await store.claim("ghost", "w1", LEASE_S)).outcome == "missing"
    assert not await store.mark_retrying("ghost", 1, "x")
    assert await store.append_chunks("ghost", [ChunkEntry(attempt=1, seq=0, kind="delta")]) is None
    assert not await store.finish("ghost", 1, JobStatus.SUCCEEDED)
    assert await client.exists(keys.job("ghost"), keys.job_chunks("ghost")) == 0


async def test_concurrent_duplicate_finishes_count_once(store: JobStore) -> None:
    jobs = await store.create_jobs(_records(10), batch_id="b1")
    await asyncio.gather(*(store.claim(j.id, "w1", LEASE_S) for j in jobs))

    async def reporter(n: int) -> list[bool]:
        status = JobStatus.SUCCEEDED if n % 2 else JobStatus.FAILED
        attempt = 0 if n % 5 == 0 else 1  # some stale reports from an older attempt
        return [await store.finish(j.id, attempt, status, error=f"r{n}") for j in jobs]

    won = await asyncio.gather(*(reporter(n) for n in range(20)))
    assert sum(map(sum, won)) == len(jobs)
    final = [await store.load(j.id) for j in jobs]
    expected = Counter(r.status.value for r in final if r is not None)
    counts = await _counts(store, "b1")
    assert counts == dict(expected)
    assert sum(counts.values()) == len(jobs)
    events = await store.read_batch_events("b1")
    assert sorted(e["job_id"] for _, e in events) == sorted(j.id for j in jobs)
    batch = await store.batch("b1")
    assert batch is not None
    assert (batch.status, batch.done) == (BatchStatus.FINISHED, 10)
    assert all(r is not None and len(r.errors) <= 1 for r in final)


async def test_retention_ttl_applied_at_finish(
    store: JobStore, client: aioredis.Redis, keys: Keys
) -> None:
    first, second = await store.create_jobs(_records(2), batch_id="b1")
    await store.claim(first.id, "w1", LEASE_S)
    assert await store.append_chunks(first.id, [ChunkEntry(attempt=1, seq=0, kind="done")])
    assert await client.ttl(keys.job(first.id)) == -1
    assert await store.finish(first.id, 1, JobStatus.SUCCEEDED, result={})
    for key in (keys.job(first.id), keys.job_chunks(first.id)):
        assert 0 < await client.ttl(key) <= RETENTION_S
    assert await client.ttl(keys.batch("b1")) == -1  # the batch is still open

    assert await store.finish(second.id, 1, JobStatus.FAILED, error="x")
    for key in (keys.batch("b1"), keys.batch_jobs("b1"), keys.batch_events("b1")):
        assert 0 < await client.ttl(key) <= RETENTION_S


async def _status(store: JobStore, batch_id: str) -> BatchStatus:
    batch = await store.batch(batch_id)
    assert batch is not None
    return batch.status


async def _finish_all(store: JobStore, jobs: list[JobRecord]) -> None:
    for job in jobs:
        assert await store.finish(job.id, 1, JobStatus.SUCCEEDED, result={})


async def test_an_opened_batch_finishes_only_once_sealed(
    store: JobStore, client: aioredis.Redis, keys: Keys
) -> None:
    await store.open_batch("b1", "input.jsonl", [])
    await _finish_all(store, await store.create_jobs(_records(2), batch_id="b1"))
    # Every job so far has ended, but the producer is still adding: not finished.
    batch = await store.batch("b1")
    assert batch is not None
    assert (batch.status, batch.done, batch.submitting) == (BatchStatus.IN_PROGRESS, 2, True)
    assert await client.ttl(keys.batch("b1")) == -1
    await _finish_all(store, await store.create_jobs(_records(1), batch_id="b1"))
    assert await _status(store, "b1") == BatchStatus.IN_PROGRESS
    assert await store.seal_batch("b1")
    batch = await store.batch("b1")
    assert batch is not None
    assert (batch.status, batch.total, batch.submitting) == (BatchStatus.FINISHED, 3, False)
    assert batch.finished_at is not None
    for key in (keys.batch("b1"), keys.batch_jobs("b1"), keys.batch_events("b1")):
        assert 0 < await client.ttl(key) <= RETENTION_S


async def test_a_sealed_batch_finishes_with_its_last_job(store: JobStore) -> None:
    await store.open_batch("b1", None, [])
    first, second = await store.create_jobs(_records(2), batch_id="b1")
    assert await store.seal_batch("b1")
    await _finish_all(store, [first])
    assert await _status(store, "b1") == BatchStatus.IN_PROGRESS
    await _finish_all(store, [second])
    assert await _status(store, "b1") == BatchStatus.FINISHED


async def test_a_hold_keeps_a_batch_open_and_is_taken_once(store: JobStore) -> None:
    assert await store.hold_batch("b1")  # a batch made by rounds of create_jobs
    await _finish_all(store, await store.create_jobs(_records(2), batch_id="b1"))
    assert await _status(store, "b1") == BatchStatus.IN_PROGRESS
    assert await store.seal_batch("b1")
    assert await _status(store, "b1") == BatchStatus.FINISHED
    await store.open_batch("b2", None, [])
    assert not await store.hold_batch("b2")  # its producer holds it until it seals it


async def test_sealing_a_batch_without_jobs_finishes_it(
    store: JobStore, client: aioredis.Redis, keys: Keys
) -> None:
    await store.open_batch("b1", None, ['{"error": "line 1"}'])
    assert await store.seal_batch("b1")
    batch = await store.batch("b1")
    assert batch is not None
    assert (batch.status, batch.total, batch.invalid) == (BatchStatus.FINISHED, 0, 1)
    assert 0 < await client.ttl(keys.batch_invalid("b1")) <= RETENTION_S
    assert not await store.seal_batch("missing")
    assert await store.batch("missing") is None


async def test_a_streams_done_entry_comes_with_the_final_state(store: JobStore) -> None:
    [job] = await store.create_jobs(_records(1, attempt=1))
    assert (await store.claim(job.id, "w1", LEASE_S)).attempt == 2
    await store.append_chunks(job.id, [ChunkEntry(attempt=2, seq=0, kind="delta", data='"a"')])
    done = ChunkEntry(attempt=2, seq=1, kind="done", data='{"finish_reason":"stop"}')
    # A stale attempt's final write is refused, and its `done` with it.
    stale = ChunkEntry(attempt=1, seq=0, kind="done")
    assert not await store.finish(job.id, 1, JobStatus.SUCCEEDED, result={}, last_chunk=stale)
    assert await store.finish(job.id, 2, JobStatus.SUCCEEDED, result={"ok": 1}, last_chunk=done)
    read = [entry for _, entry in await store.read_chunks(job.id)]
    assert [(e.seq, e.kind) for e in read] == [(0, "delta"), (1, "done")]
    assert read[1].payload() == {"finish_reason": "stop"}
    record = await store.load(job.id)
    assert record is not None
    assert (record.status, record.result) == (JobStatus.SUCCEEDED, {"ok": 1})
    assert not await store.finish(job.id, 2, JobStatus.SUCCEEDED, result={}, last_chunk=done)
    assert len(await store.read_chunks(job.id)) == 2


async def _lease_ran_out(client: aioredis.Redis, keys: Keys, job_id: str) -> bool:
    seconds, micros = await client.time()
    lease_until_ms = int(await client.hget(keys.job(job_id), "lease_until_ms") or 0)
    return lease_until_ms <= seconds * 1000 + micros // 1000


def _delta(attempt: int) -> list[ChunkEntry]:
    return [ChunkEntry(attempt=attempt, seq=0, kind="delta", data='"x"')]


async def test_chunk_writes_are_fenced_by_attempt_and_lease(
    store: JobStore, client: aioredis.Redis, keys: Keys
) -> None:
    """Entries go in only from the attempt that runs its job under a live lease: in one call
    for many jobs, each other attempt's entries are refused and its stream left alone. A
    paused worker's attempt (its lease ran out, another took over) cannot write its final
    state either."""
    current, superseded, lapsed, ended, queued = await store.create_jobs(_records(5))
    for job in (current, ended):
        await store.claim(job.id, "w1", LEASE_S)
    assert await store.cancel(ended.id)
    for job in (superseded, lapsed):
        await store.claim(job.id, "w-paused", 0.001)
        await until(functools.partial(_lease_ran_out, client, keys, job.id), 5, 0.005,
                    what=f"the lease of {job.id} to run out")
    takeover = await store.claim(superseded.id, "w2", LEASE_S)
    assert (takeover.outcome, takeover.attempt) == ("claimed", 2)

    written = await store.append_to_streams({
        (current.id, 1): _delta(1), (superseded.id, 1): _delta(1),
        (superseded.id, 2): _delta(2), (lapsed.id, 1): _delta(1), (ended.id, 1): _delta(1),
        (queued.id, 1): _delta(1),
    })
    assert {key for key, ids in written.items() if ids is not None} == {
        (current.id, 1), (superseded.id, 2)}
    for job, attempts in ((current, [1]), (superseded, [2]), (lapsed, []), (ended, []),
                          (queued, [])):
        assert [entry.attempt for _, entry in await store.read_chunks(job.id)] == attempts

    zombie_done = ChunkEntry(attempt=1, seq=1, kind="done")
    assert not await store.finish(superseded.id, 1, JobStatus.SUCCEEDED, result={},
                                  last_chunk=zombie_done)
    done = ChunkEntry(attempt=2, seq=1, kind="done")
    assert await store.finish(superseded.id, 2, JobStatus.SUCCEEDED, result={}, last_chunk=done)
    assert await store.append_chunks(superseded.id, _delta(2)) is None  # final now
    read = [(entry.attempt, entry.kind) for _, entry in await store.read_chunks(superseded.id)]
    assert read == [(2, "delta"), (2, "done")]
    record = await store.load(superseded.id)
    assert record is not None
    assert (record.status, record.attempt, record.worker) == (JobStatus.SUCCEEDED, 2, "w2")


async def test_chunks_in_order(store: JobStore) -> None:
    [job] = await store.create_jobs(_records(1))
    await store.claim(job.id, "w1", LEASE_S)
    deltas = [ChunkEntry(attempt=1, seq=i, kind="delta", data=f'"t{i}"') for i in range(40)]
    first = await store.append_chunks(job.id, deltas[:25])
    rest = await store.append_chunks(
        job.id, [*deltas[25:], ChunkEntry(attempt=1, seq=40, kind="done")]
    )
    assert first is not None and rest is not None
    ids = first + rest
    assert await store.append_chunks(job.id, []) == []
    read = await store.read_chunks(job.id)
    assert [entry_id for entry_id, _ in read] == ids
    assert [e.seq for _, e in read] == list(range(41))
    assert read[-1][1].kind == "done"
    assert read[3][1].payload() == "t3"
    assert await store.read_chunks(job.id, last_id=ids[-1]) == []
    page = await store.read_chunks(job.id, last_id=ids[9], count=5)
    assert [e.seq for _, e in page] == [10, 11, 12, 13, 14]


async def test_read_chunks_blocks_until_one_arrives(
    store: JobStore, client: aioredis.Redis, server_url: str, keys: Keys
) -> None:
    [job] = await store.create_jobs(_records(1))
    await store.claim(job.id, "w1", LEASE_S)
    written = await store.append_chunks(job.id, [ChunkEntry(attempt=1, seq=0, kind="delta")])
    assert written is not None
    [first] = written
    name = f"waiter-{uuid.uuid4().hex[:8]}"  # its connection, told apart in CLIENT LIST
    waiter_client = aioredis.Redis.from_url(server_url, client_name=name)
    waiter_store = JobStore(waiter_client, keys, retention_s=RETENTION_S)
    try:
        waiter = asyncio.create_task(
            waiter_store.read_chunks(job.id, last_id=first, block_ms=5_000))

        async def blocked() -> bool:
            return any(c["name"] == name and "b" in c["flags"]
                       for c in await client.client_list())

        await until(blocked, 5, 0.01, what="the read to block in XREAD")
        await store.append_chunks(job.id, [ChunkEntry(attempt=1, seq=1, kind="error")])
        [(_, entry)] = await asyncio.wait_for(waiter, timeout=5)
    finally:
        await waiter_client.aclose()
    assert (entry.seq, entry.kind) == (1, "error")
    assert await store.read_chunks(job.id, last_id="$", block_ms=10) == []


# -- the embedded server itself -----------------------------------------------


async def test_restart_keeps_data_with_appendonly() -> None:
    keys = Keys("mpqtest:")
    with EmbeddedRedis(appendonly=True) as server:
        url = server.url
        client = aioredis.Redis.from_url(url, decode_responses=True)
        store = JobStore(client, keys, retention_s=RETENTION_S)
        [job] = await store.create_jobs(_records(1), batch_id="b1")
        await client.aclose()

        server.restart()
        assert server.url == url
        client = aioredis.Redis.from_url(url, decode_responses=True)
        store = JobStore(client, keys, retention_s=RETENTION_S)
        assert await store.load(job.id) == job
        # Scripts load again after the restart.
        assert (await store.claim(job.id, "w1", LEASE_S)).outcome == "claimed"
        assert await _counts(store, "b1") == {"running": 1}
        await client.aclose()


def test_stop_removes_private_dir_only(tmp_path: Path) -> None:
    server = EmbeddedRedis()
    server.start()
    private = server.data_dir
    assert private.is_dir()
    server.stop()
    server.stop()  # repeated stop is harmless
    assert not private.exists()

    given = tmp_path / "data"
    with EmbeddedRedis(data_dir=given) as kept:
        assert kept.data_dir == given
        with redis.Redis.from_url(kept.url) as client:
            assert client.ping()
    assert given.is_dir()


def test_redis_server_passes_a_given_url_through() -> None:
    with redis_server("redis://example.invalid:6390/2") as url:
        assert url == "redis://example.invalid:6390/2"


def test_redis_server_embedded_url() -> None:
    with redis_server(None) as url:
        assert url.startswith("redis://mpq:")  # its user, with a generated password
        assert "@127.0.0.1:" in url
        assert url.endswith("/0")
        with redis.Redis.from_url(url) as client:
            assert client.set("mpq-embedded-url-test", "1")
            assert client.delete("mpq-embedded-url-test") == 1


# -- what `attempt` counts: tries, not claims (lua/claim_job.lua) ---------------------------

SHORT_LEASE_S = 0.05


async def _claimed(store: JobStore, job_id: str, worker: str) -> Claim | None:
    claim = await store.claim(job_id, worker, LEASE_S)
    return claim if claim.outcome == "claimed" else None


async def test_permit_waits_give_their_attempt_number_back(store: JobStore) -> None:
    """A job released four times for a permit, then run once: attempt 1, no failure."""
    [job] = await store.create_jobs(_records(1), batch_id="b1")
    for _ in range(4):
        claim = await store.claim(job.id, "w1", LEASE_S)
        assert (claim.outcome, claim.attempt, claim.failures) == ("claimed", 1, 0)
        assert await store.release(job.id, 1)
        assert await _counts(store, "b1") == {"queued": 1}
    claim = await store.claim(job.id, "w1", LEASE_S)
    assert (claim.attempt, claim.failures) == (1, 0)
    assert await store.finish(job.id, 1, JobStatus.SUCCEEDED, result={})
    done = await store.load(job.id)
    assert done is not None
    assert (done.status, done.attempt, done.errors) == (JobStatus.SUCCEEDED, 1, [])


async def test_a_deferred_delivery_uses_no_attempt(store: JobStore) -> None:
    [job] = await store.create_jobs(_records(1))
    assert (await store.claim(job.id, "w1", LEASE_S)).attempt == 1
    for _ in range(3):  # redelivered messages while the lease lives
        assert (await store.claim(job.id, "w2", LEASE_S)).outcome == "busy"
    assert await store.mark_retrying(job.id, 1, "503", delay_s=60)
    assert (await store.claim(job.id, "w2", LEASE_S)).outcome == "busy"  # backing off
    record = await store.load(job.id)
    assert record is not None
    assert (record.status, record.attempt) == (JobStatus.RETRYING, 1)


async def test_a_retry_takes_a_new_number_and_its_waits_keep_it(store: JobStore) -> None:
    """The failed try wrote under its number: the retry gets the next one, keeps it across
    permit waits, and the failed try's late writes stay refused."""
    [job] = await store.create_jobs(_records(1), batch_id="b1")
    assert (await store.claim(job.id, "w1", LEASE_S)).attempt == 1
    assert await store.mark_retrying(job.id, 1, "attempt 1: 503")
    for _ in range(3):
        claim = await store.claim(job.id, "w2", LEASE_S)
        assert (claim.attempt, claim.failures) == (2, 1)
        assert await store.release(job.id, 2)
        assert not await store.finish(job.id, 1, JobStatus.SUCCEEDED, result={})
        assert not await store.mark_retrying(job.id, 1, "attempt 1: late")
    assert (await store.claim(job.id, "w2", LEASE_S)).attempt == 2
    assert await store.finish(job.id, 2, JobStatus.FAILED, error="attempt 2: 400")
    done = await store.load(job.id)
    assert done is not None
    assert (done.attempt, done.errors) == (2, ["attempt 1: 503", "attempt 2: 400"])
    assert await _counts(store, "b1") == {"failed": 1}


async def test_only_the_holding_attempt_releases_and_a_lost_number_stays_used(
    store: JobStore,
) -> None:
    """A paused worker's attempt (its lease ran out, another took over) may have called the
    upstream: its number is never handed out again, nor can it release the job."""
    [job] = await store.create_jobs(_records(1))
    assert not await store.release(job.id, 1)  # queued: nothing to release
    assert (await store.claim(job.id, "w-paused", SHORT_LEASE_S)).attempt == 1
    assert await store.release(job.id, 1)
    assert not await store.release(job.id, 1)  # once
    assert (await store.claim(job.id, "w-paused", SHORT_LEASE_S)).attempt == 1
    takeover = await until(lambda: _claimed(store, job.id, "w2"), 5, 0.01,
                           what="the paused attempt's lease to run out")
    assert (takeover.attempt, takeover.failures) == (2, 1)  # attempt 1: worker lost
    assert not await store.release(job.id, 1)  # the paused one wakes up: refused
    assert await store.release(job.id, 2)
    assert not await store.finish(job.id, 1, JobStatus.SUCCEEDED, result={})
    assert (await store.claim(job.id, "w2", LEASE_S)).attempt == 2
    assert await store.finish(job.id, 2, JobStatus.SUCCEEDED, result={})
    done = await store.load(job.id)
    assert done is not None
    assert (done.status, done.attempt, done.errors) == (
        JobStatus.SUCCEEDED, 2, ["attempt 1: worker lost"])


async def test_a_release_after_a_cancel_is_refused(store: JobStore) -> None:
    [job] = await store.create_jobs(_records(1))
    assert (await store.claim(job.id, "w1", LEASE_S)).attempt == 1
    assert await store.cancel(job.id)
    assert not await store.release(job.id, 1)
    assert (await store.claim(job.id, "w1", LEASE_S)).outcome == "final"

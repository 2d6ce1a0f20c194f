"""Enqueue: a 10,000-line batch through `core.dispatch.enqueue` against an embedded Valkey:
each line's job record, and its id in the batch's job list and pending list (the feeder
gives the lines their broker messages later, as slots free up: core/feed.py).

Limit: a raw pipelined write of the same data from one client: one HSET of the same record
fields and one RPUSH of the job id per line, 1,000 lines per round trip (what any queue of
records needs at least). Each figure is the best of `--repeat` runs. Target: at least 0.6
of the limit.

For reference (no target): the path before the feeder, records and then one broker message
per line written in bulk (`publish`), and the old `send_task` loop (a loop of Celery
`.delay()` calls does about 1,600/s on this kind of machine)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import redis
from redis.typing import EncodableT, FieldT

from bench.harness import arguments
from core.celery_app import create_app
from core.contract import JobKind, JobRecord
from core.dispatch import enqueue, message_for, publish, send_each
from core.embedded_redis import redis_server
from core.keys import Keys
from core.redis_client import redis_client
from core.settings import Settings
from core.store import JobStore

LINES = 10_000
TARGET = 0.6
CHUNK = 1_000  # lines per round trip in the limit, as the producer's pipelines do
DEFAULT_REPEAT = 3


def batch_lines(count: int, batch_id: str | None = None) -> list[JobRecord]:
    """Lines shaped like an OpenAI Batch file's: a short chat request and a custom id."""
    return [JobRecord(kind=JobKind.CHAT, proxy="bench-proxy", custom_id=f"request-{i}",
                      batch_id=batch_id,
                      request={"model": "qwen-plus", "max_tokens": 64, "messages": [
                          {"role": "user", "content": f"Summarise item {i} in one line."}]})
            for i in range(count)]


async def best_of(repeat: int, run: Callable[[list[JobRecord]], Awaitable[None]],
                  batch_id: str | None = None) -> float:
    """Shortest wall time of ``repeat`` runs, in seconds, each with new records made before
    its clock starts (every path starts from the same records)."""
    times = []
    for _ in range(repeat):
        records = batch_lines(LINES, batch_id)
        started = time.perf_counter()
        await run(records)
        times.append(time.perf_counter() - started)
    return min(times)


def send_task_loop_publish(settings: Settings) -> Callable[[Sequence[JobRecord]], None]:
    """The old `publish`: one `send_task` per job over one producer."""
    celery = create_app(settings)

    def publish(records: Sequence[JobRecord]) -> None:
        with celery.producer_or_acquire() as producer:
            send_each(celery, producer, [message_for(r) for r in records])

    return publish


Path = Literal["enqueue", "messages", "send_task"]


async def time_enqueue(redis_url: str, repeat: int, path: Path) -> float:
    """Seconds per batch: through `enqueue`, or records and one message per line
    (pipelined, or with the old loop)."""
    settings = Settings(redis_url=redis_url, key_prefix=f"bench-{uuid.uuid4().hex[:6]}:")
    client = redis_client(redis_url)
    store = JobStore(client, Keys(settings.key_prefix), settings.result_ttl_s)
    celery = create_app(settings)
    old_publish = send_task_loop_publish(settings)

    async def run(records: Sequence[JobRecord]) -> None:
        batch_id = uuid.uuid4().hex
        if path == "enqueue":
            await enqueue(store, celery, records, batch_id)
            return
        stored = await store.create_jobs(records, batch_id)
        if path == "messages":
            await asyncio.to_thread(publish, celery, stored)
        else:
            await asyncio.to_thread(old_publish, stored)

    await run(batch_lines(100))  # connections and queue declarations, outside the timing
    seconds = await best_of(repeat, run)
    await client.aclose()
    return seconds


def raw_write(redis_url: str, records: Sequence[JobRecord]) -> None:
    """The limit: the same HSETs and an RPUSH of each id, CHUNK lines per round trip."""
    prefix = f"bench-raw-{uuid.uuid4().hex[:6]}:"
    client = redis.Redis.from_url(redis_url)
    try:
        with client.pipeline(transaction=False) as pipe:
            for start in range(0, len(records), CHUNK):
                for record in records[start:start + CHUNK]:
                    fields: dict[FieldT, EncodableT] = {
                        k: v for k, v in record.to_redis().items()}
                    pipe.hset(f"{prefix}job:{record.id}", mapping=fields)
                    pipe.rpush(f"{prefix}queue", record.id)
                pipe.execute()
    finally:
        client.close()


async def results(repeat: int = DEFAULT_REPEAT) -> dict[str, Any]:
    """Seconds per batch of each path, best of `repeat`, for `python -m bench`."""
    with redis_server(None) as redis_url:
        enqueue_s = await time_enqueue(redis_url, repeat, "enqueue")
        messages_s = await time_enqueue(redis_url, repeat, "messages")
        old_s = await time_enqueue(redis_url, repeat, "send_task")

        async def limit_run(records: list[JobRecord]) -> None:
            raw_write(redis_url, records)

        limit_s = await best_of(repeat, limit_run, batch_id="b")
    return {"lines": LINES, "repeat": repeat, "enqueue_s": enqueue_s,
            "messages_s": messages_s, "send_task_loop_s": old_s, "limit_s": limit_s,
            "ratio": limit_s / enqueue_s}


def report(found: dict[str, Any]) -> None:
    rows = [("enqueue (records, pending lists)", found["enqueue_s"]),
            ("records + a message per line", found["messages_s"]),
            ("records + the send_task loop", found["send_task_loop_s"]),
            ("limit: raw pipelined HSET + RPUSH", found["limit_s"])]
    print(f"{LINES} lines, best of {found['repeat']}")
    print(f"{'path':<36} {'seconds':>8} {'lines/s':>9} {'vs limit':>9}")
    for name, seconds in rows:
        print(f"{name:<36} {seconds:>8.2f} {LINES / seconds:>9.0f} "
              f"{found['limit_s'] / seconds:>9.2f}")
    verdict = "pass" if found["ratio"] >= TARGET else "FAIL"
    print(f"enqueue {found['ratio']:.2f} of the limit (target >= {TARGET}) {verdict}")


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    report(asyncio.run(results(parser.parse_args().repeat)))

"""Lanes: how long an interactive job waits in the queue while a big batch runs.

One `mpq worker --slots 200` (`--slots`), the emulator answering each request after 0.2 s
(`--latency-s`). First, on the idle system, 20 interactive chats (`AsyncClient.chat`, no
batch) one after another. Then a 20,000-line batch (`--lines`, `AsyncClient.submit_batch`)
and, once a slots' worth of lines is done, 50 interactive chats (`--interactive`) one after another
while the batch keeps its queue full. A job's queue wait is its record's `started_at` -
`created_at` (the claim's Redis clock minus the producer's clock, one host here).

Limit: the idle system's p99 wait plus a few slot-free intervals. A slot frees up every
latency / slots (1 ms) at best and every 1 / (the batch's measured rate) in fact; with the
interactive job first in line it starts at the next free slot, and the wait it adds to the
idle one is that interval, plus the worker's own lag in taking a message while it is busy
with 200 jobs (its consumer thread shares a GIL with 200 slots). Target: p99 under load <=
idle p99 + 10 x the measured slot-free interval + 50 ms, so that it holds on one core
(`taskset -c 0`) too. Without lanes the job would wait for every line queued ahead of it:
for reference, the lines still queued when the first interactive job was sent / the rate.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import (
    MODEL,
    batch_arguments,
    bench_settings,
    create_proxy,
    emulator_process,
    percentile,
    worker_environment,
    worker_process,
)
from core.contract import JobRecord, JobStatus
from core.dispatch import cancel_batch
from core.embedded_redis import redis_server
from producer.client import AsyncClient

DEFAULT_LINES = 20_000
DEFAULT_SLOTS = 200
DEFAULT_LATENCY_S = 0.2
DEFAULT_INTERACTIVE = 50
IDLE_JOBS = 20
WARM_UP_JOBS = 3
SLOT_INTERVALS = 10  # slot-free intervals allowed over the idle wait
LAG_ALLOWANCE_S = 0.05  # the busy worker's lag in taking a message
MESSAGES = [{"role": "user", "content": "Are you there?"}]


@dataclass(frozen=True)
class Waits:
    jobs: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def waits(records: list[JobRecord]) -> Waits:
    values = [((r.started_at or 0) - r.created_at) * 1000 for r in records]
    return Waits(len(values), percentile(values, 0.5), percentile(values, 0.99), max(values))


async def interactive(client: AsyncClient, proxy: str, count: int) -> list[JobRecord]:
    """`count` chats one after another, each waited for before the next."""
    done = []
    for _ in range(count):
        job = await client.chat(proxy, MESSAGES, model=MODEL)
        record = await job.result(timeout=60)
        if record.status != JobStatus.SUCCEEDED:
            raise RuntimeError(f"interactive job {record.id}: {record.status} {record.errors}")
        done.append(record)
    return done


async def busy(client: AsyncClient, batch_id: str, slots: int) -> None:
    """Until the worker is well into the batch: a slots' worth of lines done, some running
    (on one core the worker may never have every slot busy at once)."""
    while True:
        batch = await client.store.batch(batch_id)
        counts = batch.counts if batch is not None else {}
        if counts.get(JobStatus.SUCCEEDED, 0) >= slots and counts.get(JobStatus.RUNNING, 0):
            return
        await asyncio.sleep(0.02)


async def measure(lines: int = DEFAULT_LINES, slots: int = DEFAULT_SLOTS,
                  latency_s: float = DEFAULT_LATENCY_S,
                  count: int = DEFAULT_INTERACTIVE) -> dict[str, Any]:
    with redis_server(None) as redis_url, emulator_process(
        "--ttft-s", str(latency_s), "--lifecycle-delay-s", "0"
    ) as emulator_url:
        proxy = await create_proxy(emulator_url)
        settings = bench_settings(redis_url)
        env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                                 worker_slots=slots)
        body = [json.dumps({"custom_id": f"line-{i}", "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": {"model": MODEL, "messages": MESSAGES}})
                for i in range(lines)]
        async with AsyncClient(settings) as client:
            with worker_process(env, slots):
                await interactive(client, proxy, WARM_UP_JOBS)  # the proxy cache, connections
                idle = await interactive(client, proxy, IDLE_JOBS)
                batch, _ = await client.submit_batch(body, proxy)
                await busy(client, batch.id, slots)
                before = await client.store.batch(batch.id)
                started = time.monotonic()
                loaded = await interactive(client, proxy, count)
                elapsed_s = time.monotonic() - started
                after = await client.store.batch(batch.id)
                await cancel_batch(client.store, batch.id)
    if before is None or after is None:
        raise RuntimeError(f"batch {batch.id} is gone")
    done_during = after.counts.get(JobStatus.SUCCEEDED, 0) - \
        before.counts.get(JobStatus.SUCCEEDED, 0)
    rate = done_during / elapsed_s
    queued_after = after.counts.get(JobStatus.QUEUED, 0)
    if queued_after == 0:
        raise RuntimeError("the batch ran out before the interactive jobs were done")
    idle_w, loaded_w = waits(idle), waits(loaded)
    interval_ms = 1000 / rate
    limit_ms = idle_w.p99_ms + SLOT_INTERVALS * interval_ms + LAG_ALLOWANCE_S * 1000
    return {"lines": lines, "slots": slots, "latency_s": latency_s,
            "idle": asdict(idle_w), "loaded": asdict(loaded_w), "batch_rate": rate,
            "slot_interval_ms": interval_ms, "ideal_interval_ms": latency_s / slots * 1000,
            "limit_ms": limit_ms, "queued_before": before.counts.get(JobStatus.QUEUED, 0),
            "queued_after": queued_after,
            "fifo_wait_s": before.counts.get(JobStatus.QUEUED, 0) / rate,
            "ok": loaded_w.p99_ms <= limit_ms}


def report(r: dict[str, Any]) -> None:
    idle, loaded = r["idle"], r["loaded"]
    print(f"idle: {idle['jobs']} interactive jobs: queue wait p50 {idle['p50_ms']:.1f} ms, "
          f"p99 {idle['p99_ms']:.1f} ms")
    print(f"{r['lines']}-line batch, {r['slots']} slots, {r['latency_s']:g} s: "
          f"{r['batch_rate']:.0f} lines/s (a slot frees every {r['slot_interval_ms']:.2f} ms; "
          f"ideal {r['ideal_interval_ms']:.2f} ms); {r['queued_before']} lines queued, "
          f"{r['queued_after']} still queued after")
    print(f"loaded: {loaded['jobs']} interactive jobs: queue wait p50 {loaded['p50_ms']:.1f} "
          f"ms, p99 {loaded['p99_ms']:.1f} ms, max {loaded['max_ms']:.1f} ms (target <= "
          f"{r['limit_ms']:.1f} ms) {'pass' if r['ok'] else 'FAIL'}; without lanes about "
          f"{r['fifo_wait_s']:.1f} s")


if __name__ == "__main__":
    parser = batch_arguments(__doc__, DEFAULT_LINES, DEFAULT_SLOTS, DEFAULT_LATENCY_S)
    parser.add_argument("--interactive", type=int, default=DEFAULT_INTERACTIVE)
    args = parser.parse_args()
    report(asyncio.run(measure(args.lines, args.slots, args.latency_s, args.interactive)))

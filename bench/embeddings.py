"""Embeddings: a Batch file of 10,000 `/v1/embeddings` lines (`--jobs`), line i with
i % 16 + 1 short texts (8.5 on average), submitted with `AsyncClient.submit_batch` (the
producer's path: parse and check the lines, store the records, publish the messages),
through one `mpq worker --slots 40` (`--slots`) against the emulator answering each request
after 0.2 s (`--latency-s`) with 256-dimension vectors (`--dimensions`), no rate limits.
Rates: jobs and vectors / (last job's `finished_at` - start of the submit).

Limit: the chat throughput row's rule (`bench.throughput`), each part measured in this run
on this machine, the smallest wins: slots / latency; the emulator's capacity for a direct
client with as many requests in flight as the worker has slots, posting the very requests
the worker sends (`worker.embeddings.embeddings_request`: the same inputs, base64) with its
latency set to 0; Celery's no-op rate for as many messages as there are jobs. No target yet.

Storage: after the batch, the vectors key (`Keys.job_vectors`) of 200 jobs picked at random
(`--sample`, a fixed seed): `MEMORY USAGE <key> SAMPLES 0` / the job's vectors, the bytes
Redis holds a vector, against its raw float32 bytes (dimensions x 4); the mean over the jobs
and the largest (a job of one vector bears the key's whole overhead alone). Target: a mean
of at most 1.1 x raw.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import (
    MODEL,
    arguments,
    bench_settings,
    create_proxy,
    emulator_process,
    set_emulator,
    wait_batch,
    worker_environment,
    worker_process,
)
from bench.throughput import cpu_s, emulator_capacity, noop_rate
from core.contract import JobRecord, JobStatus
from core.embedded_redis import redis_server
from core.embeddings import FLOAT32_BYTES, VECTORS
from core.redis_client import redis_client
from producer.client import AsyncClient
from worker.embeddings import embeddings_request

DEFAULT_JOBS = 10_000
DEFAULT_SLOTS = 40
DEFAULT_LATENCY_S = 0.2
DIMENSIONS = 256
INPUTS_MAX = 16
DEFAULT_SAMPLE = 200
TARGET_BYTES_RATIO = 1.1
PATH = "/v1/embeddings"


def inputs(i: int) -> list[str]:
    """Line i's texts: i % 16 + 1 of them."""
    return [f"Item {i}, passage {k}: a short text to embed." for k in range(i % INPUTS_MAX + 1)]


def batch_lines(jobs: int) -> list[str]:
    return [json.dumps({"custom_id": f"request-{i}", "method": "POST", "url": PATH,
                        "body": {"model": MODEL, "input": inputs(i)}}) for i in range(jobs)]


def upstream_bodies() -> list[dict[str, Any]]:
    """What the worker posts for lines 0 to 15, in turn the same mix of sizes as the batch."""
    return [embeddings_request({"input": inputs(i)}, MODEL) for i in range(INPUTS_MAX)]


@dataclass(frozen=True)
class Run:
    slots: int
    jobs: int
    latency_s: float
    dimensions: int
    succeeded: int
    vectors: int
    elapsed_s: float
    rate: float
    vector_rate: float
    cpu_ms_per_job: float
    sampled: int
    bytes_per_vector_mean: float  # the mean over the sampled jobs of bytes / vectors
    bytes_per_vector_max: float
    max_at_vectors: int  # how many vectors the job of that maximum has
    bytes_ratio_mean: float  # those / raw float32 bytes per vector
    bytes_ratio_max: float


def shape(record: JobRecord) -> tuple[int, int]:
    """(vectors, dimensions) of a succeeded embeddings job, from its stored result."""
    stored = (record.result or {})[VECTORS]
    return int(stored["count"]), int(stored["dimensions"])


async def bytes_per_vector(redis_url: str, client: AsyncClient, records: list[JobRecord],
                           ) -> list[tuple[float, int]]:
    """(MEMORY USAGE of each record's vectors key / its vectors, its vectors)."""
    redis = redis_client(redis_url)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.memory_usage(client.keys.job_vectors(record.id), samples=0)
            used = await pipe.execute()
    finally:
        await redis.aclose()
    return [(int(size) / shape(record)[0], shape(record)[0])
            for record, size in zip(records, used, strict=True)]


async def mpq_run(redis_url: str, emulator_url: str, proxy: str, slots: int, jobs: int,
                  latency_s: float, sample: int) -> Run:
    """The batch through one `mpq worker --slots <slots>`, then its vectors' bytes."""
    set_emulator(emulator_url, ttft_s=latency_s)
    settings = bench_settings(redis_url)
    env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                             worker_slots=slots)
    lines = batch_lines(jobs)
    async with AsyncClient(settings) as client:
        with worker_process(env, slots) as process:
            cpu_before = cpu_s(process.pid)
            started = time.time()
            batch, invalid = await client.submit_batch(lines, proxy)
            if invalid:
                raise RuntimeError(f"invalid lines: {invalid[:3]}")
            await wait_batch(client.store, batch.id)
            cpu_used = cpu_s(process.pid) - cpu_before
        ids = await client.store.batch_job_ids(batch.id)
        finished = [r for r in await client.store.load_many(ids) if r]
        ok = [r for r in finished if r.status == JobStatus.SUCCEEDED]
        picked = random.Random(0).sample(ok, min(sample, len(ok)))
        sizes = await bytes_per_vector(redis_url, client, picked)
    end = max(r.finished_at or 0 for r in finished)
    vectors = sum(shape(r)[0] for r in ok)
    dimensions = {shape(r)[1] for r in ok}
    if len(dimensions) != 1:
        raise RuntimeError(f"vectors of {sorted(dimensions)} dimensions")
    raw = dimensions.pop() * FLOAT32_BYTES
    mean = statistics.fmean(size for size, _ in sizes)
    worst, worst_vectors = max(sizes)
    return Run(
        slots=slots, jobs=jobs, latency_s=latency_s, dimensions=raw // FLOAT32_BYTES,
        succeeded=len(ok), vectors=vectors, elapsed_s=end - started,
        rate=jobs / (end - started), vector_rate=vectors / (end - started),
        cpu_ms_per_job=cpu_used * 1000 / jobs, sampled=len(sizes),
        bytes_per_vector_mean=mean, bytes_per_vector_max=worst, max_at_vectors=worst_vectors,
        bytes_ratio_mean=mean / raw, bytes_ratio_max=worst / raw)


async def measure(jobs: int = DEFAULT_JOBS, slots: int = DEFAULT_SLOTS,
                  latency_s: float = DEFAULT_LATENCY_S, dimensions: int = DIMENSIONS,
                  sample: int = DEFAULT_SAMPLE) -> dict[str, Any]:
    """Every figure of this benchmark, limits included (one Redis, one emulator)."""
    with redis_server(None) as redis_url, emulator_process(
        "--ttft-s", str(latency_s), "--lifecycle-delay-s", "0"
    ) as emulator_url:
        set_emulator(emulator_url, default_embedding_dimensions=dimensions, ttft_s=0)
        proxy = await create_proxy(emulator_url)
        capacity = await emulator_capacity(emulator_url, proxy, slots, jobs, PATH,
                                           upstream_bodies())
        celery_rate, noop_cpu_ms = await asyncio.to_thread(
            noop_rate, redis_url, emulator_url, jobs, 1, slots)
        run = await mpq_run(redis_url, emulator_url, proxy, slots, jobs, latency_s, sample)
    slot_limit = slots / latency_s
    limit = min(slot_limit, capacity, celery_rate)
    return {"run": asdict(run), "slot_limit": slot_limit, "emulator_capacity": capacity,
            "celery_noop_rate": celery_rate, "celery_noop_cpu_ms_per_task": noop_cpu_ms,
            "limit": limit, "vector_limit": limit * run.vectors / run.jobs,
            "ratio": run.rate / limit, "target_bytes_ratio": TARGET_BYTES_RATIO}


def report(result: dict[str, Any]) -> None:
    run = result["run"]
    print(f"limits: slots/latency {result['slot_limit']:.0f}/s, emulator capacity "
          f"{result['emulator_capacity']:.0f}/s (direct client), Celery no-op "
          f"{result['celery_noop_rate']:.0f}/s ({result['celery_noop_cpu_ms_per_task']:.2f} CPU "
          f"ms/task) -> limit {result['limit']:.0f} jobs/s")
    print(f"{run['jobs']} jobs ({run['succeeded']} ok), {run['vectors']} vectors of "
          f"{run['dimensions']} dimensions, {run['slots']} slots, {run['latency_s']:g} s: "
          f"{run['elapsed_s']:.1f} s, {run['rate']:.0f} jobs/s, {run['vector_rate']:.0f} "
          f"vectors/s ({result['ratio']:.2f} of the limit), worker CPU "
          f"{run['cpu_ms_per_job']:.2f} ms/job")
    verdict = "pass" if run["bytes_ratio_mean"] <= TARGET_BYTES_RATIO else "FAIL"
    print(f"Redis bytes a vector, {run['sampled']} jobs (raw float32 "
          f"{run['dimensions'] * FLOAT32_BYTES}): mean {run['bytes_per_vector_mean']:.0f} = "
          f"{run['bytes_ratio_mean']:.3f} x raw (target <= {TARGET_BYTES_RATIO}) {verdict}, "
          f"max {run['bytes_per_vector_max']:.0f} = {run['bytes_ratio_max']:.3f} x raw (a job "
          f"of {run['max_at_vectors']} vector(s))")


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS)
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS)
    parser.add_argument("--latency-s", type=float, default=DEFAULT_LATENCY_S)
    parser.add_argument("--dimensions", type=int, default=DIMENSIONS)
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE)
    args = parser.parse_args()
    report(asyncio.run(measure(args.jobs, args.slots, args.latency_s, args.dimensions,
                               args.sample)))

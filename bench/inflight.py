"""In flight: one worker process at 50 and at 500 slots against the emulator with a fixed
latency per request (default 3 s; `--latency-s`). Limit: slots / latency. The rate at 500
must not fall below the rate at 50, and the peak in flight at the emulator shows whether
one process really holds 500 requests at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench.harness import (
    arguments,
    emulator_process,
    emulator_stats,
    reset_emulator_stats,
    worker_environment,
    worker_process,
)
from core.celery_app import create_app
from core.contract import JobKind, JobRecord, JobStatus
from core.dispatch import enqueue
from core.embedded_redis import redis_server
from core.keys import Keys
from core.redis_client import redis_client
from core.settings import Settings
from core.store import JobStore
from modelproxy import Config, ModelProxy, ModelProxyCreateInput, ProxyConfig, ProxyConfigEndpoint

DEFAULT_LATENCY_S = 3.0


async def measure(redis_url: str, emulator_url: str, slots: int, jobs: int) -> dict[str, Any]:
    settings = Settings(redis_url=redis_url, key_prefix=f"bench-{uuid.uuid4().hex[:6]}:")
    config = Config(control_endpoint=emulator_url, data_endpoint=emulator_url)
    name = f"bench-{uuid.uuid4().hex[:6]}"
    spec = ModelProxyCreateInput(model_proxy_name=name, proxy_config=ProxyConfig(
        endpoints=[ProxyConfigEndpoint(model_names=["m"])]))
    await (await ModelProxy.create_async(spec, config=config)).wait_until_ready_or_failed_async(
        interval_seconds=0.05)
    client = redis_client(redis_url)
    store = JobStore(client, Keys(settings.key_prefix), settings.result_ttl_s)
    env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                             worker_slots=slots)
    with worker_process(env, slots):
        reset_emulator_stats(emulator_url)
        records = [JobRecord(kind=JobKind.CHAT, proxy=name, request={"messages": [
            {"role": "user", "content": f"job {i}"}]}) for i in range(jobs)]
        started = time.time()
        await enqueue(store, create_app(settings), records, batch_id="b")
        enqueued_s = time.time() - started
        while True:
            batch = await store.batch("b")
            if batch is not None and batch.status == "finished":
                break
            await asyncio.sleep(0.2)
        finished = [r for r in [await store.load(r.id) for r in records] if r is not None]
    await client.aclose()
    end = max(r.finished_at or 0 for r in finished)
    ok = sum(r.status == JobStatus.SUCCEEDED for r in finished)
    stats = emulator_stats(emulator_url)
    service = sorted((r.finished_at or 0) - (r.started_at or 0) for r in finished)
    return {"slots": slots, "jobs": jobs, "succeeded": ok, "elapsed_s": end - started,
            "rate": jobs / (end - started), "peak_in_flight": stats["peak_in_flight"],
            "enqueue_s": enqueued_s,
            "service_p50_s": service[len(service) // 2],
            "service_p99_s": service[int(len(service) * 0.99)]}


async def results(latency_s: float = DEFAULT_LATENCY_S) -> dict[str, Any]:
    """Both runs (50 and 500 slots) with their limits, for `python -m bench`."""
    with redis_server(None) as redis_url, emulator_process(
        "--ttft-s", str(latency_s), "--lifecycle-delay-s", "0"
    ) as emulator_url:
        small = await measure(redis_url, emulator_url, 50, 300)
        large = await measure(redis_url, emulator_url, 500, 3000)
    for row in (small, large):
        row["limit"] = row["slots"] / latency_s
        row["ratio"] = row["rate"] / row["limit"]
    return {"latency_s": latency_s, "small": small, "large": large,
            "scaling": large["rate"] / small["rate"]}


def report(found: dict[str, Any]) -> None:
    small, large = found["small"], found["large"]
    print(f"latency per request: {found['latency_s']} s")
    print(f"{'slots':>6} {'jobs':>6} {'ok':>6} {'elapsed s':>10} {'jobs/s':>8} "
          f"{'limit/s':>8} {'ratio':>6} {'peak in flight':>15} {'job p50 s':>10} "
          f"{'job p99 s':>10}")
    for row in (small, large):
        print(f"{row['slots']:>6} {row['jobs']:>6} {row['succeeded']:>6} "
              f"{row['elapsed_s']:>10.1f} {row['rate']:>8.1f} {row['limit']:>8.0f} "
              f"{row['ratio']:>6.2f} {row['peak_in_flight']:>15} "
              f"{row['service_p50_s']:>10.2f} {row['service_p99_s']:>10.2f}")
    print(f"rate at 500 slots / rate at 50 slots: {found['scaling']:.2f}")
    print(f"enqueue: {small['enqueue_s']:.1f} s and {large['enqueue_s']:.1f} s")


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--latency-s", type=float, default=DEFAULT_LATENCY_S)
    report(asyncio.run(results(parser.parse_args().latency_s)))

"""Throughput: a batch of 5,000 chat jobs (`--jobs`) through one worker process with 500
slots (`--slots`) against the emulator answering each request after 1 s (`--latency-s`),
no rate limits. The rate is jobs / (last job's `finished_at` - start of the enqueue).

Limit, each part measured in this run on this machine, the smallest wins:
- slots / latency: what the slots allow;
- the emulator's capacity: a direct async client (httpx on the aiohttp transport, as the
  worker's) with as many requests in flight as the worker has slots, against the same
  emulator process with its latency set to 0, so only its own CPU limits it;
- Celery's own rate: a worker process of `bench.noop_app` (a Celery app configured like
  ours, with a task that does nothing), `celery -A bench.noop_app worker --pool=threads
  -c <slots>`, draining the same number of messages put on its queue beforehand; timed
  from the first message taken to the last one acknowledged.
Target: rate / limit >= 0.8.

For reference (no target): the same Celery worker draining the same number of tasks that
only sleep as long as the emulator's latency: what Celery's thread pool makes of 1-s tasks
with no Redis, no HTTP and no work of ours.

Also: the worker's CPU time per job (utime + stime of the worker process from
/proc/<pid>/stat, from the start of the enqueue to the last job's end), and its peak RSS
(VmHWM from /proc/<pid>/status) in a second run of 2,000 jobs with 1,000 slots and 8 s per
request (`--big-slots`, `--big-latency-s`), with the emulator's `peak_in_flight` to show the
1,000 really were in flight at once (at 4 s they are not: the worker takes jobs off the
queue at ~150/s here, so the first ones end before the 1,000th starts).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from httpx_aiohttp import AiohttpTransport

from bench.harness import (
    MODEL,
    ROOT,
    arguments,
    bench_settings,
    chat_records,
    create_proxy,
    emulator_process,
    emulator_stats,
    percentile,
    reset_emulator_stats,
    set_emulator,
    stopping,
    wait_batch,
    worker_environment,
    worker_process,
)
from bench.noop_app import NOOP_TASK, SLEEP_TASK, create_noop_app
from core.celery_app import create_app
from core.contract import JobStatus
from core.dispatch import INFERENCE_QUEUE, enqueue
from core.embedded_redis import redis_server
from core.keys import Keys
from core.redis_client import redis_client
from core.store import JobStore

DEFAULT_JOBS = 5_000
DEFAULT_SLOTS = 500
DEFAULT_LATENCY_S = 1.0
BIG_SLOTS = 1_000
BIG_LATENCY_S = 8.0  # a worker dispatches ~150 jobs/s here: 4 s would not fill 1,000 slots
TARGET = 0.8
CELERY = str(Path(sys.executable).parent / "celery")
NOOP_TIMEOUT_S = 120.0
POLL_S = 0.005
STABLE_POLLS = 10  # the queue must look empty this many polls in a row (see noop_rate)


# -- the worker process's CPU and memory ---------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5); the split starts at field 3 (state).
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


# -- the limits -----------------------------------------------------------------------


CHAT_BODY: dict[str, Any] = {
    "model": MODEL, "messages": [{"role": "user", "content": "Summarise item 1."}]}


async def emulator_capacity(url: str, proxy: str, concurrency: int, requests: int,
                            path: str = "/v1/chat/completions",
                            bodies: Sequence[dict[str, Any]] = (CHAT_BODY,)) -> float:
    """Requests/s of the emulator (latency 0) for a direct client with `concurrency` in
    flight, posting `bodies` in turn to `path` (a chat request by default); connections are
    opened by a first round that is not timed."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    endpoint = f"{url}/models/{proxy}{path}"
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits),
                                 timeout=60) as client:

        async def worker(todo: Iterator[int]) -> None:
            for i in todo:
                body = bodies[i % len(bodies)]
                (await client.post(endpoint, json=body)).raise_for_status()

        warm = iter(range(concurrency))
        await asyncio.gather(*(worker(warm) for _ in range(concurrency)))
        todo = iter(range(requests))
        started = time.perf_counter()
        await asyncio.gather(*(worker(todo) for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def noop_rate(redis_url: str, emulator_url: str, tasks: int, slots: int,
              sleep_s: float | None = None) -> tuple[float, float]:
    """Tasks/s of a `bench.noop_app` worker draining `tasks` messages queued beforehand,
    and its CPU ms per task: no-op tasks, or with `sleep_s` tasks that sleep that long.

    Timed from the first message taken off the queue to the moment the queue and the
    unacked set are both empty (several polls in a row: a message is off the list a moment
    before it is in the unacked set)."""
    settings = bench_settings(redis_url)
    sender = create_noop_app(settings)
    name, extra = (NOOP_TASK, []) if sleep_s is None else (SLEEP_TASK, [sleep_s])
    with sender.producer_or_acquire() as producer:
        for i in range(tasks):
            sender.send_task(name, args=[f"job-{i}", *extra], producer=producer)
    keys = Keys(settings.key_prefix)
    queue, unacked = keys.broker_queue(INFERENCE_QUEUE), keys.broker_unacked()
    client = redis.Redis.from_url(redis_url)
    if client.llen(queue) != tasks:
        raise RuntimeError(f"expected {tasks} messages on {queue}")
    env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                             worker_slots=slots)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log = Path(tempfile.gettempdir()) / f"mpq-bench-noop-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [CELERY, "-A", "bench.noop_app", "worker", "--pool=threads", "-c", str(slots),
             "-Q", INFERENCE_QUEUE, "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with stopping(process):
            (first, cpu_first), (last, cpu_last) = _watch_drain(
                client, queue, unacked, tasks, process, log)
    finally:
        client.close()
    return tasks / (last - first), (cpu_last - cpu_first) * 1000 / tasks


Moment = tuple[float, float]  # (time.perf_counter(), CPU seconds of the worker)


def _watch_drain(client: redis.Redis, queue: str, unacked: str, tasks: int,
                 process: subprocess.Popen[bytes], log: Path) -> tuple[Moment, Moment]:
    """(first message taken, queue and unacked set empty), polled every POLL_S."""
    deadline = time.monotonic() + NOOP_TIMEOUT_S
    first: Moment | None = None
    empty_since: Moment | None = None
    empty_polls = 0
    while True:
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.hlen(unacked)
            waiting, held = pipe.execute()
        now = (time.perf_counter(), cpu_s(process.pid))
        if first is None and waiting < tasks:
            first = now
        if waiting == 0 and held == 0:
            empty_since = empty_since or now
            empty_polls += 1
            if first is not None and empty_polls >= STABLE_POLLS:
                return first, empty_since
        else:
            empty_since, empty_polls = None, 0
        if process.poll() is not None:
            raise RuntimeError(f"the no-op worker stopped:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the no-op worker did not drain {tasks} tasks")
        time.sleep(POLL_S)


# -- the mpq run ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    slots: int
    jobs: int
    latency_s: float
    succeeded: int
    elapsed_s: float
    rate: float
    peak_in_flight: int
    cpu_ms_per_job: float
    peak_rss_mb: float
    service_p50_s: float
    service_p99_s: float


async def mpq_run(redis_url: str, emulator_url: str, proxy: str, slots: int, jobs: int,
                  latency_s: float) -> Run:
    """`jobs` chat jobs as one batch through one `mpq worker --slots <slots>`."""
    set_emulator(emulator_url, ttft_s=latency_s)
    settings = bench_settings(redis_url)
    client = redis_client(redis_url)
    store = JobStore(client, Keys(settings.key_prefix), settings.result_ttl_s)
    env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                             worker_slots=slots)
    try:
        with worker_process(env, slots) as process:
            reset_emulator_stats(emulator_url)
            records = chat_records(proxy, jobs)
            cpu_before = cpu_s(process.pid)
            started = time.time()
            await enqueue(store, create_app(settings), records, batch_id="b")
            await wait_batch(store, "b")
            cpu_used = cpu_s(process.pid) - cpu_before
            rss_mb = peak_rss_mb(process.pid)
        finished = [r for r in await store.load_many([r.id for r in records]) if r]
    finally:
        await client.aclose()
    end = max(r.finished_at or 0 for r in finished)
    service = [(r.finished_at or 0) - (r.started_at or 0) for r in finished]
    return Run(
        slots=slots, jobs=jobs, latency_s=latency_s,
        succeeded=sum(r.status == JobStatus.SUCCEEDED for r in finished),
        elapsed_s=end - started, rate=jobs / (end - started),
        peak_in_flight=emulator_stats(emulator_url)["peak_in_flight"],
        cpu_ms_per_job=cpu_used * 1000 / jobs, peak_rss_mb=rss_mb,
        service_p50_s=percentile(service, 0.5), service_p99_s=percentile(service, 0.99))


async def measure(jobs: int = DEFAULT_JOBS, slots: int = DEFAULT_SLOTS,
                  latency_s: float = DEFAULT_LATENCY_S, big_slots: int = BIG_SLOTS,
                  big_latency_s: float = BIG_LATENCY_S) -> dict[str, Any]:
    """Every figure of this benchmark, limits included (one Redis, one emulator)."""
    with redis_server(None) as redis_url, emulator_process(
        "--ttft-s", str(latency_s), "--lifecycle-delay-s", "0"
    ) as emulator_url:
        proxy = await create_proxy(emulator_url)
        set_emulator(emulator_url, ttft_s=0)
        capacity = await emulator_capacity(emulator_url, proxy, slots, jobs)
        celery_rate, noop_cpu_ms = await asyncio.to_thread(
            noop_rate, redis_url, emulator_url, jobs, slots)
        sleeping_rate, _ = await asyncio.to_thread(
            noop_rate, redis_url, emulator_url, jobs, slots, latency_s)
        run = await mpq_run(redis_url, emulator_url, proxy, slots, jobs, latency_s)
        big = await mpq_run(redis_url, emulator_url, proxy, big_slots, 2 * big_slots,
                            big_latency_s)
    slot_limit = slots / latency_s
    limit = min(slot_limit, capacity, celery_rate)
    return {"run": asdict(run), "big": asdict(big), "slot_limit": slot_limit,
            "emulator_capacity": capacity, "celery_noop_rate": celery_rate,
            "celery_noop_cpu_ms_per_task": noop_cpu_ms, "celery_sleeping_rate": sleeping_rate,
            "limit": limit,
            "ratio": run.rate / limit, "target": TARGET}


def report(result: dict[str, Any]) -> None:
    run, big = result["run"], result["big"]
    print(f"limits: slots/latency {result['slot_limit']:.0f}/s, emulator capacity "
          f"{result['emulator_capacity']:.0f}/s (direct client), Celery no-op "
          f"{result['celery_noop_rate']:.0f}/s ({result['celery_noop_cpu_ms_per_task']:.2f} CPU "
          f"ms/task) -> limit {result['limit']:.0f}/s")
    print(f"{'slots':>6} {'jobs':>6} {'ok':>6} {'latency s':>9} {'elapsed s':>9} "
          f"{'jobs/s':>7} {'peak in flight':>14} {'CPU ms/job':>10} {'peak RSS MB':>11} "
          f"{'job p50 s':>9} {'job p99 s':>9}")
    for row in (run, big):
        print(f"{row['slots']:>6} {row['jobs']:>6} {row['succeeded']:>6} "
              f"{row['latency_s']:>9.1f} {row['elapsed_s']:>9.1f} {row['rate']:>7.0f} "
              f"{row['peak_in_flight']:>14} {row['cpu_ms_per_job']:>10.2f} "
              f"{row['peak_rss_mb']:>11.0f} {row['service_p50_s']:>9.2f} "
              f"{row['service_p99_s']:>9.2f}")
    print(f"for reference: Celery tasks that only sleep {run['latency_s']:g} s, "
          f"{run['slots']} slots: {result['celery_sleeping_rate']:.0f}/s")
    verdict = "pass" if result["ratio"] >= TARGET else "FAIL"
    print(f"throughput {run['rate']:.0f} jobs/s / limit {result['limit']:.0f}/s = "
          f"{result['ratio']:.2f} (target >= {TARGET}) {verdict}")


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS)
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS)
    parser.add_argument("--latency-s", type=float, default=DEFAULT_LATENCY_S)
    parser.add_argument("--big-slots", type=int, default=BIG_SLOTS)
    parser.add_argument("--big-latency-s", type=float, default=BIG_LATENCY_S)
    args = parser.parse_args()
    report(asyncio.run(measure(args.jobs, args.slots, args.latency_s, args.big_slots,
                               args.big_latency_s)))

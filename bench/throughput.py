"""Throughput: a batch of 5,000 chat jobs (`--jobs`) through the default `mpq worker` (one
process per usable core: two on a 2-core machine) with 500 slots in all (`--slots`, split
evenly: MPQ_WORKER_SLOTS=250 each on two cores) against the emulator answering each request
after 1 s (`--latency-s`), no rate limits. The rate is jobs / (last job's `finished_at` -
start of the enqueue). Before it, an untimed batch of as many jobs as slots, as the direct
client below has an untimed first round: connections to the emulator are open, as in a
worker that has been running. `taskset -c 0 python -m bench.throughput` measures one
process.

Limit, each part measured in this run on this machine, the smallest wins:
- slots / latency: what the slots of all processes allow (the peak in flight / latency
  when the workers ran more jobs at once than they have slots, as when batch lines are given
  to them a little ahead of the free slots);
- the emulator's capacity: a direct async client (httpx on the aiohttp transport, as the
  worker's) with as many requests in flight as the worker processes have slots in all,
  against the same emulator process with its latency set to 0, so only its own CPU limits it;
- what the same direct client achieves with the run's latency (the same jobs, the same
  number in flight): on a 2-core machine the emulator and one client process, sharing the
  CPU, hold 500 requests of 1 s each for ~1.1 s (measured: 415/s, p50 1.105 s), so no
  queue in front of them can do better than that;
- Celery's own rate: as many worker processes of `bench.noop_app` (a Celery app configured
  like ours, with a task that does nothing) as `mpq worker` runs, each `celery -A
  bench.noop_app worker --pool=threads -c <slots per process>`, draining the same number of
  messages put on the queue while they were idle (they start consuming together, by a
  broadcast `add_consumer`); timed from the first message taken to the last one acknowledged.
Target: rate / limit >= 0.9.

For reference (no target): the same Celery workers draining the same number of tasks that
only sleep as long as the emulator's latency: what Celery's thread pools make of 1-s tasks
with no Redis, no HTTP and no work of ours.

Also: the CPU time per job of all the command's processes together (utime + stime of each
from /proc/<pid>/stat, the worker processes and the one that supervises them, from the start
of the enqueue to the last job's end), and their peak RSS (the sum of each one's VmHWM from
/proc/<pid>/status) in a second run of 2,000 jobs with 1,000 slots in all and 8 s per request
(`--big-slots`, `--big-latency-s`), with the emulator's `peak_in_flight` to show the 1,000
really were in flight at once (at 4 s they are not: a worker process takes jobs off the
queue at ~150/s here, so the first ones end before the 1,000th starts).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from celery import Celery
from httpx_aiohttp import AiohttpTransport

from bench.harness import (
    MODEL,
    MPQ,
    ROOT,
    STARTUP_TIMEOUT_S,
    STOP_TIMEOUT_S,
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
)
from bench.noop_app import NOOP_TASK, SLEEP_TASK, create_noop_app
from core.celery_app import create_app
from core.contract import JobStatus
from core.dispatch import INFERENCE_QUEUE, enqueue
from core.embedded_redis import redis_server
from core.keys import Keys
from core.redis_client import redis_client
from core.settings import Settings
from core.store import JobStore
from producer.local_stack import stop_processes
from producer.worker_group import usable_cores

DEFAULT_JOBS = 5_000
DEFAULT_SLOTS = 500
DEFAULT_LATENCY_S = 1.0
BIG_SLOTS = 1_000
BIG_LATENCY_S = 8.0  # a worker dispatches ~150 jobs/s here: 4 s would not fill 1,000 slots
TARGET = 0.9
CELERY = str(Path(sys.executable).parent / "celery")
NOOP_TIMEOUT_S = 120.0
POLL_S = 0.005
STABLE_POLLS = 10  # the queue must look empty this many polls in a row (see noop_rate)
IDLE_QUEUE = "bench-idle"  # what the no-op workers consume until the drain starts
PING_TIMEOUT_S = 0.5


# -- the worker processes' CPU and memory --------------------------------------------


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


def with_children(pid: int) -> list[int]:
    """A process and the ones it started: `mpq worker` and its worker processes (none when
    it runs one process: it is that process)."""
    return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


def total_cpu_s(pids: Sequence[int]) -> float:
    return sum(cpu_s(pid) for pid in pids)


def wait_nodes(app: Celery, nodes: int, processes: Sequence[subprocess.Popen[bytes]],
               log: Path) -> None:
    """Until `nodes` Celery workers answer a ping (each consumes its queues by then)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while len(app.control.ping(timeout=PING_TIMEOUT_S)) < nodes:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError(f"a worker stopped:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {nodes} workers answer:\n{log.read_text()}")


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


def noop_rate(redis_url: str, emulator_url: str, tasks: int, processes: int, slots: int,
              sleep_s: float | None = None) -> tuple[float, float]:
    """Tasks/s of `processes` `bench.noop_app` workers of `slots` each draining `tasks`
    messages together, and their CPU ms per task: no-op tasks, or with `sleep_s` tasks that
    sleep that long.

    The workers start on an idle queue; once they all answer a ping, the messages are put on
    the inference queue and one broadcast makes every worker consume it. Timed from the
    first message taken off the queue to the moment the queue and the unacked set are both
    empty (several polls in a row: a message is off the list a moment before it is in the
    unacked set)."""
    settings = bench_settings(redis_url)
    app = create_noop_app(settings)
    env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                             worker_slots=slots)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log = Path(tempfile.gettempdir()) / f"mpq-bench-noop-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        started = [subprocess.Popen(
            [CELERY, "-A", "bench.noop_app", "worker", "--pool=threads", "-c", str(slots),
             "-Q", IDLE_QUEUE, "-n", f"noop-{i}@%h", "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            for i in range(1, processes + 1)]
    keys = Keys(settings.key_prefix)
    queue, unacked = keys.broker_queue(INFERENCE_QUEUE), keys.broker_unacked()
    client = redis.Redis.from_url(redis_url)
    try:
        wait_nodes(app, processes, started, log)
        name, extra = (NOOP_TASK, []) if sleep_s is None else (SLEEP_TASK, [sleep_s])
        with app.producer_or_acquire() as producer:
            for i in range(tasks):
                app.send_task(name, args=[f"job-{i}", *extra], producer=producer)
        if client.llen(queue) != tasks:
            raise RuntimeError(f"expected {tasks} messages on {queue}")
        app.control.add_consumer(INFERENCE_QUEUE)
        (first, cpu_first), (last, cpu_last) = _watch_drain(
            client, queue, unacked, tasks, started, log)
    finally:
        client.close()
        stop_processes(started, STOP_TIMEOUT_S)
    return tasks / (last - first), (cpu_last - cpu_first) * 1000 / tasks


Moment = tuple[float, float]  # (time.perf_counter(), CPU seconds of the workers)


def _watch_drain(client: redis.Redis, queue: str, unacked: str, tasks: int,
                 processes: Sequence[subprocess.Popen[bytes]], log: Path,
                 ) -> tuple[Moment, Moment]:
    """(first message taken, queue and unacked set empty), polled every POLL_S."""
    deadline = time.monotonic() + NOOP_TIMEOUT_S
    pids = [p.pid for p in processes]
    first: Moment | None = None
    empty_since: Moment | None = None
    empty_polls = 0
    while True:
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.hlen(unacked)
            waiting, held = pipe.execute()
        now = (time.perf_counter(), total_cpu_s(pids))
        if first is None and waiting < tasks:
            first = now
        if waiting == 0 and held == 0:
            empty_since = empty_since or now
            empty_polls += 1
            if first is not None and empty_polls >= STABLE_POLLS:
                return first, empty_since
        else:
            empty_since, empty_polls = None, 0
        if any(p.poll() is not None for p in processes):
            raise RuntimeError(f"a no-op worker stopped:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the no-op workers did not drain {tasks} tasks")
        time.sleep(POLL_S)


# -- the mpq run ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    processes: int
    slots: int  # of all processes
    jobs: int
    latency_s: float
    succeeded: int
    elapsed_s: float
    rate: float
    peak_in_flight: int
    cpu_ms_per_job: float  # all the command's processes
    peak_rss_mb: float  # the sum of their peaks
    service_p50_s: float
    service_p99_s: float


@contextlib.contextmanager
def default_worker(env: dict[str, str], settings: Settings,
                   processes: int) -> Iterator[list[int]]:
    """`mpq worker` as an operator runs it, with its defaults (one process per usable core,
    MPQ_WORKER_SLOTS each); yields the pids of the command's processes once each of its
    `processes` Celery workers answers a ping."""
    log = Path(tempfile.gettempdir()) / f"mpq-bench-worker-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([MPQ, "worker", "--loglevel", "WARNING"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    with stopping(process):
        wait_nodes(create_app(settings), processes, [process], log)
        yield with_children(process.pid)


async def mpq_run(redis_url: str, emulator_url: str, proxy: str, processes: int, slots: int,
                  jobs: int, latency_s: float, *, warm: bool = False) -> Run:
    """`jobs` chat jobs as one batch through the default `mpq worker`: `processes` worker
    processes (one per usable core) of `slots` each. `warm`: first a batch of as many jobs
    as slots, not timed, as the direct client's first round (the workers' connections to the
    emulator are open when the timed batch starts, as in a worker that has been running)."""
    set_emulator(emulator_url, ttft_s=latency_s)
    settings = bench_settings(redis_url)
    client = redis_client(redis_url)
    store = JobStore(client, Keys(settings.key_prefix), settings.result_ttl_s)
    env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                             worker_slots=slots)
    try:
        with default_worker(env, settings, processes) as pids:
            app = create_app(settings)
            if warm:
                await enqueue(store, app, chat_records(proxy, slots * processes),
                              batch_id="warm")
                await wait_batch(store, "warm")
            reset_emulator_stats(emulator_url)
            records = chat_records(proxy, jobs)
            cpu_before = total_cpu_s(pids)
            started = time.time()
            await enqueue(store, app, records, batch_id="b")
            await wait_batch(store, "b")
            cpu_used = total_cpu_s(pids) - cpu_before
            rss_mb = sum(peak_rss_mb(pid) for pid in pids)
        finished = [r for r in await store.load_many([r.id for r in records]) if r]
    finally:
        await client.aclose()
    end = max(r.finished_at or 0 for r in finished)
    service = [(r.finished_at or 0) - (r.started_at or 0) for r in finished]
    return Run(
        processes=processes, slots=slots * processes, jobs=jobs, latency_s=latency_s,
        succeeded=sum(r.status == JobStatus.SUCCEEDED for r in finished),
        elapsed_s=end - started, rate=jobs / (end - started),
        peak_in_flight=emulator_stats(emulator_url)["peak_in_flight"],
        cpu_ms_per_job=cpu_used * 1000 / jobs, peak_rss_mb=rss_mb,
        service_p50_s=percentile(service, 0.5), service_p99_s=percentile(service, 0.99))


async def measure(jobs: int = DEFAULT_JOBS, slots: int = DEFAULT_SLOTS,
                  latency_s: float = DEFAULT_LATENCY_S, big_slots: int = BIG_SLOTS,
                  big_latency_s: float = BIG_LATENCY_S) -> dict[str, Any]:
    """Every figure of this benchmark, limits included (one Redis, one emulator). `slots`
    and `big_slots` are in all, split evenly over the worker processes."""
    processes = usable_cores()
    per_process, big_per_process = max(1, slots // processes), max(1, big_slots // processes)
    with redis_server(None) as redis_url, emulator_process(
        "--ttft-s", str(latency_s), "--lifecycle-delay-s", "0"
    ) as emulator_url:
        proxy = await create_proxy(emulator_url)
        set_emulator(emulator_url, ttft_s=0)
        capacity = await emulator_capacity(emulator_url, proxy, per_process * processes, jobs)
        set_emulator(emulator_url, ttft_s=latency_s)
        direct = await emulator_capacity(emulator_url, proxy, per_process * processes, jobs)
        celery_rate, noop_cpu_ms = await asyncio.to_thread(
            noop_rate, redis_url, emulator_url, jobs, processes, per_process)
        sleeping_rate, _ = await asyncio.to_thread(
            noop_rate, redis_url, emulator_url, jobs, processes, per_process, latency_s)
        run = await mpq_run(redis_url, emulator_url, proxy, processes, per_process, jobs,
                            latency_s, warm=True)
        big = await mpq_run(redis_url, emulator_url, proxy, processes, big_per_process,
                            2 * big_per_process * processes, big_latency_s)
    slot_limit = max(run.slots, run.peak_in_flight) / latency_s
    limit = min(slot_limit, capacity, direct, celery_rate)
    return {"run": asdict(run), "big": asdict(big), "slot_limit": slot_limit,
            "emulator_capacity": capacity, "direct_rate": direct,
            "celery_noop_rate": celery_rate,
            "celery_noop_cpu_ms_per_task": noop_cpu_ms, "celery_sleeping_rate": sleeping_rate,
            "limit": limit,
            "ratio": run.rate / limit, "target": TARGET}


def report(result: dict[str, Any]) -> None:
    run, big = result["run"], result["big"]
    print(f"limits: in flight/latency {result['slot_limit']:.0f}/s ({run['slots']} slots, peak "
          f"{run['peak_in_flight']} in flight), emulator capacity "
          f"{result['emulator_capacity']:.0f}/s (direct client, latency 0), a direct client at "
          f"the run's latency {result['direct_rate']:.0f}/s, Celery no-op "
          f"{result['celery_noop_rate']:.0f}/s ({result['celery_noop_cpu_ms_per_task']:.2f} CPU "
          f"ms/task) -> limit {result['limit']:.0f}/s")
    print(f"`mpq worker` with its defaults: {run['processes']} worker processes, slots split "
          f"evenly; CPU and peak RSS of all its processes together")
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

"""Batch CPU: how much worker CPU a batch line costs, against what Celery alone costs a task.

A 50,000-line chat batch (`--lines`) through `AsyncClient.submit_batch` and the default
`mpq worker` command (one process per usable core, 500 slots in all, `--slots`), the
emulator answering at once (latency 0). The worker's CPU is utime + stime of the command's
processes (/proc/<pid>/stat: the worker processes and the one that supervises them), from
just before the submission to the moment the batch is finished. Figure: lines per worker
CPU-second.

Limit, measured in the same run: Celery's no-op tasks per CPU-second, from as many
`bench.noop_app` worker processes with the same slots draining 10,000 queued no-op
messages (`bench.throughput.noop_rate`). Target: figure / limit >= 0.5, i.e. a batch line
costs at most twice what Celery's own handling of a message does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import (
    arguments,
    bench_settings,
    chat_lines,
    create_proxy,
    emulator_process,
    wait_batch,
    worker_environment,
)
from bench.throughput import default_worker, noop_rate, total_cpu_s
from core.embedded_redis import redis_server
from producer.client import AsyncClient
from producer.worker_group import usable_cores

DEFAULT_LINES = 50_000
DEFAULT_SLOTS = 500
NOOP_TASKS = 10_000
BATCH_TIMEOUT_S = 1_200.0
TARGET = 0.5


@dataclass(frozen=True)
class BatchRun:
    lines: int
    slots: int
    processes: int
    elapsed_s: float
    worker_cpu_s: float
    lines_per_s: float
    lines_per_cpu_s: float


async def batch_run(redis_url: str, emulator_url: str, proxy: str, lines: int,
                    processes: int, slots: int) -> BatchRun:
    """The batch through `mpq worker` with its defaults: `processes` of `slots` each."""
    settings = bench_settings(redis_url)
    env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                             worker_slots=slots)
    body = chat_lines(lines)
    async with AsyncClient(settings) as client:
        with default_worker(env, settings, processes) as pids:
            cpu_before = total_cpu_s(pids)
            started = time.monotonic()
            batch, _ = await client.submit_batch(body, proxy)
            await wait_batch(client.store, batch.id, BATCH_TIMEOUT_S)
            elapsed = time.monotonic() - started
            used = total_cpu_s(pids) - cpu_before
    return BatchRun(lines=lines, slots=slots * processes, processes=processes,
                    elapsed_s=elapsed, worker_cpu_s=used, lines_per_s=lines / elapsed,
                    lines_per_cpu_s=lines / used)


async def measure(lines: int = DEFAULT_LINES, slots: int = DEFAULT_SLOTS) -> dict[str, Any]:
    """`slots` in all, split evenly over the worker processes."""
    processes = usable_cores()
    per_process = max(1, slots // processes)
    with redis_server(None) as redis_url, emulator_process(
        "--ttft-s", "0", "--lifecycle-delay-s", "0"
    ) as emulator_url:
        proxy = await create_proxy(emulator_url)
        noop_per_s, noop_cpu_ms = await asyncio.to_thread(
            noop_rate, redis_url, emulator_url, NOOP_TASKS, processes, per_process)
        run = await batch_run(redis_url, emulator_url, proxy, lines, processes, per_process)
    noop_per_cpu_s = 1000 / noop_cpu_ms
    return {"run": asdict(run), "noop_tasks": NOOP_TASKS, "noop_per_s": noop_per_s,
            "noop_per_cpu_s": noop_per_cpu_s, "ratio": run.lines_per_cpu_s / noop_per_cpu_s}


def passed(result: dict[str, Any]) -> bool:
    return bool(result["ratio"] >= TARGET)


def report(result: dict[str, Any]) -> None:
    run = result["run"]
    print(f"{run['lines']}-line batch, {run['processes']} worker process(es), "
          f"{run['slots']} slots in all, emulator latency 0: {run['elapsed_s']:.1f} s, "
          f"{run['lines_per_s']:.0f} lines/s, worker CPU {run['worker_cpu_s']:.1f} s = "
          f"{1000 / run['lines_per_cpu_s']:.2f} ms a line")
    print(f"Celery no-op, {result['noop_tasks']} tasks, as many processes and slots: "
          f"{result['noop_per_s']:.0f} tasks/s, {1000 / result['noop_per_cpu_s']:.2f} CPU ms "
          "a task")
    print(f"{run['lines_per_cpu_s']:.0f} lines per CPU-second / "
          f"{result['noop_per_cpu_s']:.0f} no-op tasks per CPU-second = {result['ratio']:.2f} "
          f"(target >= {TARGET}) {'pass' if passed(result) else 'FAIL'}")


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--lines", type=int, default=DEFAULT_LINES)
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS)
    args = parser.parse_args()
    report(asyncio.run(measure(args.lines, args.slots)))

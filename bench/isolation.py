"""Isolation: a proxy held back by its rate limit does not slow down the other proxies.

One worker process (`mpq worker --slots 100`, `--slots`), the emulator answering after 0.5 s
(`--latency-s`): slots / latency is 200 lines/s. Two proxies: one declares a limit of 60 requests a
minute (`requestRateLimiter.rpm`, which the workers read from the proxy's policies: 1
request/s), the other declares none.

First the free proxy's batch of 2,000 chat lines (`--lines`) alone: its rate is the limit,
lines / (its last line's `finished_at` - its submission). Then a batch of 1,000 lines
(`--throttled-lines`) on the throttled proxy, and 2 s later, while it holds the worker, the
same free batch again, measured the same way; if it has not finished after four times
its time alone (at least 30 s), its rate is the lines it finished by then / that time.
Both batches are then cancelled.

Figure: the free batch's rate with the throttled batch running / its rate alone, target
>= 0.9.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import (
    batch_arguments,
    bench_settings,
    chat_lines,
    create_proxy,
    emulator_process,
    succeeded_finish_times,
    worker_environment,
    worker_process,
)
from core.contract import BatchStatus
from core.dispatch import cancel_batch
from core.embedded_redis import redis_server
from producer.batches import AsyncBatch
from producer.client import AsyncClient

DEFAULT_LINES = 2_000
DEFAULT_THROTTLED_LINES = 1_000
DEFAULT_SLOTS = 100
DEFAULT_LATENCY_S = 0.5
THROTTLED_RPM = 60
HEAD_START_S = 2.0  # the throttled batch's, so that it holds the slots first
PATIENCE = 4.0  # times the free batch's time alone, before it counts what it finished
MIN_PATIENCE_S = 30.0
ALONE_TIMEOUT_S = 300.0
POLL_S = 0.2
TARGET = 0.9


@dataclass(frozen=True)
class FreeRun:
    lines: int
    finished: int
    elapsed_s: float
    rate: float  # lines/s
    complete: bool  # False: cut off after the patience ran out


async def until_finished(batch: AsyncBatch, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await batch.info()).status == BatchStatus.FINISHED:
            return True
        await asyncio.sleep(POLL_S)
    return False


async def free_run(client: AsyncClient, proxy: str, lines: int, timeout_s: float) -> FreeRun:
    """The free batch, from its submission to its last line, or cut off at `timeout_s`."""
    submitted = time.time()
    batch, _ = await client.submit_batch(chat_lines(lines), proxy)
    complete = await until_finished(batch, timeout_s)
    cut_off = time.time()
    await cancel_batch(client.store, batch.id)
    times = await succeeded_finish_times(client, batch.id)
    if complete:
        elapsed = times[-1] - submitted
    else:
        elapsed = cut_off - submitted
        times = [t for t in times if t <= cut_off]
    return FreeRun(lines=lines, finished=len(times), elapsed_s=elapsed,
                   rate=len(times) / elapsed, complete=complete)


async def measure(lines: int = DEFAULT_LINES, throttled_lines: int = DEFAULT_THROTTLED_LINES,
                  slots: int = DEFAULT_SLOTS, latency_s: float = DEFAULT_LATENCY_S,
                  ) -> dict[str, Any]:
    with redis_server(None) as redis_url, emulator_process(
        "--ttft-s", str(latency_s), "--lifecycle-delay-s", "0"
    ) as emulator_url:
        free = await create_proxy(emulator_url)
        throttled = await create_proxy(emulator_url,
                                       {"requestRateLimiter": {"rpm": THROTTLED_RPM}})
        settings = bench_settings(redis_url)
        env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                                 worker_slots=slots, worker_processes=1)
        async with AsyncClient(settings) as client:
            with worker_process(env, slots):
                alone = await free_run(client, free, lines, ALONE_TIMEOUT_S)
                if not alone.complete:
                    raise RuntimeError(f"the free batch alone did not finish in "
                                       f"{ALONE_TIMEOUT_S:.0f} s")
                blocker, _ = await client.submit_batch(chat_lines(throttled_lines), throttled)
                await asyncio.sleep(HEAD_START_S)
                shared = await free_run(client, free, lines,
                                        max(MIN_PATIENCE_S, PATIENCE * alone.elapsed_s))
                info = await blocker.info()
                await cancel_batch(client.store, blocker.id)
    return {"slots": slots, "latency_s": latency_s, "throttled_rpm": THROTTLED_RPM,
            "throttled_lines": throttled_lines, "throttled_done": info.done,
            "alone": asdict(alone), "shared": asdict(shared),
            "ratio": shared.rate / alone.rate}


def passed(result: dict[str, Any]) -> bool:
    return bool(result["ratio"] >= TARGET)


def report(result: dict[str, Any]) -> None:
    print(f"{result['slots']} slots, {result['latency_s']:g} s a request; a "
          f"{result['throttled_lines']}-line batch on a proxy limited to "
          f"{result['throttled_rpm']} requests/min ({result['throttled_done']} of its lines "
          f"done when the free batch ended)")
    print(f"{'free batch':<26} {'lines':>6} {'done':>6} {'elapsed s':>9} {'lines/s':>8}")
    for key, name in (("alone", "alone"), ("shared", "with the throttled batch")):
        run = result[key]
        cut = "" if run["complete"] else "  (cut off)"
        print(f"{name:<26} {run['lines']:>6} {run['finished']:>6} {run['elapsed_s']:>9.1f} "
              f"{run['rate']:>8.1f}{cut}")
    print(f"with / alone = {result['ratio']:.2f} (target >= {TARGET}) "
          f"{'pass' if passed(result) else 'FAIL'}")


if __name__ == "__main__":
    parser = batch_arguments(__doc__, DEFAULT_LINES, DEFAULT_SLOTS, DEFAULT_LATENCY_S)
    parser.add_argument("--throttled-lines", type=int, default=DEFAULT_THROTTLED_LINES)
    args = parser.parse_args()
    report(asyncio.run(measure(args.lines, args.throttled_lines, args.slots, args.latency_s)))

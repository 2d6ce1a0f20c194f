"""Fairness: two equal batches on one proxy share the slots equally once both run.

One worker process (`mpq worker --slots 100`, `--slots`), the emulator answering after 1 s
(`--latency-s`): slots / latency is 100 lines/s. Batch A, 3,000 chat lines (`--lines`),
is submitted; batch B, the same lines, 10 s later (`--gap-s`), when A still has about 2,000
to go. The window where both are in progress runs from B's submission plus two latencies
(the slots A held at that moment have turned over) to the moment the first of the two
finishes; the other is then cancelled. A batch's rate is its lines finished in the window
(by the job records' `finished_at`) / the window's length.

Figure: slower rate / faster rate, target >= 0.9. The limit is the equal share the two
rates would have: the same figure for both, so the ratio needs no other measure. In a
plain first-in first-out queue B gets almost nothing until A's last line has started.

Weighted case (for information): the same two batches, A with priority 1 and B with
priority 3 (`submit_batch(..., priority=3)`); figure B's rate / A's rate, ~3 if the slots
are shared by weight.
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
from core.feed import DEFAULT_PRIORITY
from producer.batches import AsyncBatch
from producer.client import AsyncClient

DEFAULT_LINES = 3_000
DEFAULT_SLOTS = 100
DEFAULT_LATENCY_S = 1.0
DEFAULT_GAP_S = 10.0
SETTLE_LATENCIES = 2  # after B is submitted, the slots A held turn over in one latency
EQUAL = (DEFAULT_PRIORITY, DEFAULT_PRIORITY)  # the priorities of A and B
WEIGHTED = (1, 3)
TARGET = 0.9
RUN_TIMEOUT_S = 300.0
POLL_S = 0.2


@dataclass(frozen=True)
class Case:
    priorities: tuple[int, int]  # (A, B)
    lines: int
    window_s: float
    first_rate: float  # A's lines/s in the window
    second_rate: float  # B's lines/s in the window
    first_finished_first: bool
    elapsed_s: float

    @property
    def ratio(self) -> float:
        """Equal case: slower / faster. Weighted: B / A."""
        if self.priorities[0] != self.priorities[1]:
            return self.second_rate / self.first_rate if self.first_rate else float("inf")
        faster = max(self.first_rate, self.second_rate)
        return min(self.first_rate, self.second_rate) / faster if faster else 0.0


async def first_to_finish(batches: tuple[AsyncBatch, AsyncBatch]) -> tuple[int, float]:
    """(index, finished_at) of the first of the batches to finish."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        infos = [await batch.info() for batch in batches]
        for index, info in enumerate(infos):
            if info.status == BatchStatus.FINISHED:
                return index, info.finished_at or time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"neither batch finished in {RUN_TIMEOUT_S:.0f} s: "
                               f"{[info.counts for info in infos]}")
        await asyncio.sleep(POLL_S)


def in_window(times: list[float], start: float, end: float) -> int:
    return sum(start <= t <= end for t in times)


async def two_batches(client: AsyncClient, proxy: str, lines: int, gap_s: float,
                      latency_s: float, priorities: tuple[int, int]) -> Case:
    body = chat_lines(lines)
    started = time.time()
    first, _ = await client.submit_batch(body, proxy, priority=priorities[0])
    await asyncio.sleep(gap_s)
    second_at = time.time()
    second, _ = await client.submit_batch(body, proxy, priority=priorities[1])
    index, end = await first_to_finish((first, second))
    for batch in (first, second):
        await cancel_batch(client.store, batch.id)
    start = second_at + SETTLE_LATENCIES * latency_s
    if end <= start:
        raise RuntimeError(f"a batch finished {start - end:.1f} s before the window opened: "
                           "give it more lines")
    rates = [in_window(await succeeded_finish_times(client, b.id), start, end) / (end - start)
             for b in (first, second)]
    return Case(priorities=priorities, lines=lines, window_s=end - start,
                first_rate=rates[0], second_rate=rates[1], first_finished_first=index == 0,
                elapsed_s=end - started)


async def measure(lines: int = DEFAULT_LINES, slots: int = DEFAULT_SLOTS,
                  latency_s: float = DEFAULT_LATENCY_S, gap_s: float = DEFAULT_GAP_S,
                  ) -> dict[str, Any]:
    """The equal case, then the weighted one."""
    with redis_server(None) as redis_url, emulator_process(
        "--ttft-s", str(latency_s), "--lifecycle-delay-s", "0"
    ) as emulator_url:
        proxy = await create_proxy(emulator_url)
        settings = bench_settings(redis_url)
        env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                                 worker_slots=slots, worker_processes=1)
        async with AsyncClient(settings) as client:
            with worker_process(env, slots):
                equal = await two_batches(client, proxy, lines, gap_s, latency_s, EQUAL)
                weighted = await two_batches(client, proxy, lines, gap_s, latency_s, WEIGHTED)
    return {"slots": slots, "latency_s": latency_s, "gap_s": gap_s,
            "limit_per_s": slots / latency_s,
            "equal": {**asdict(equal), "ratio": equal.ratio},
            "weighted": {**asdict(weighted), "ratio": weighted.ratio}}


def passed(result: dict[str, Any]) -> bool:
    return bool(result["equal"]["ratio"] >= TARGET)


def report(result: dict[str, Any]) -> None:
    print(f"two batches of {result['equal']['lines']} lines, the second {result['gap_s']:g} s "
          f"after the first; {result['slots']} slots, {result['latency_s']:g} s a request "
          f"(slots / latency {result['limit_per_s']:.0f} lines/s)")
    print(f"{'case':<18} {'window s':>8} {'A lines/s':>9} {'B lines/s':>9} {'ratio':>6} "
          f"{'first done':>10} {'elapsed s':>9}")
    for key in ("equal", "weighted"):
        case = result[key]
        name = "priority {} vs {}".format(*case["priorities"])
        print(f"{name:<18} {case['window_s']:>8.1f} {case['first_rate']:>9.1f} "
              f"{case['second_rate']:>9.1f} {case['ratio']:>6.2f} "
              f"{'A' if case['first_finished_first'] else 'B':>10} {case['elapsed_s']:>9.1f}")
    print(f"equal case: slower / faster = {result['equal']['ratio']:.2f} (target >= {TARGET}) "
          f"{'pass' if passed(result) else 'FAIL'}")


if __name__ == "__main__":
    parser = batch_arguments(__doc__, DEFAULT_LINES, DEFAULT_SLOTS, DEFAULT_LATENCY_S)
    parser.add_argument("--gap-s", type=float, default=DEFAULT_GAP_S)
    args = parser.parse_args()
    report(asyncio.run(measure(args.lines, args.slots, args.latency_s, args.gap_s)))

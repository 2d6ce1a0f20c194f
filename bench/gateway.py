"""Gateway: what the OpenAI-compatible gateway adds to mpq, each part against its own limit
measured in the same run. One stack: Redis, the stamped emulator of `bench.streaming`, one
worker process and one gateway process (`python -m gateway`), on a fresh key prefix.

Direct calls: `--calls` chat calls one after another, the emulator answering at once
(`ttft_s` and `tpot_s` 0), the paths taking turns call by call:
- the Python API: `AsyncClient.chat(...)` then `.result()`, in the bench process;
- the gateway with raw httpx (aiohttp transport) on a kept-alive connection: `POST
  /v1/chat/completions` and the JSON answer;
- the gateway with the official `openai` client (`chat.completions.create`), which adds its
  own request building and response parsing.
Both gateway paths end in the same Python API call inside the gateway, so the difference
is the gateway's cost (HTTP, auth, routing, admission) plus the HTTP client's.
Target: p50 and p99 of httpx - Python API < 5 ms. Also, no target: the same with
`CONCURRENCY` callers at once, and the gateway process's CPU time (utime + stime) per call
over the sequential calls, against the CPU time the Python API takes in its caller's process
for the same call (`time.process_time()` over `calls` more calls of the Python API alone).

Relayed streams (bench.gateway_stream) and files (bench.gateway_files): see those modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import openai
from httpx_aiohttp import AiohttpTransport

from bench import gateway_files, gateway_stream
from bench.harness import (
    MODEL,
    GatewayTarget,
    arguments,
    bench_settings,
    create_proxy,
    gateway_process,
    gateway_target,
    percentile,
    set_emulator,
    worker_environment,
    worker_process,
)
from bench.streaming import stamped_emulator
from bench.throughput import cpu_s
from core.embedded_redis import redis_server
from producer.client import AsyncClient

DEFAULT_CALLS = 300
CONCURRENCY = 10
WARM_CALLS = 10
TARGET_OVERHEAD_MS = 5.0
CALL_TIMEOUT_S = 30.0

Call = Callable[[str], Awaitable[None]]  # one chat call with this prompt


@dataclass
class Stack:
    emulator_url: str
    proxy: str
    client: AsyncClient
    target: GatewayTarget


@contextlib.asynccontextmanager
async def gateway_stack() -> AsyncIterator[Stack]:
    with redis_server(None) as redis_url, stamped_emulator() as emulator_url:
        proxy = await create_proxy(emulator_url)
        settings = bench_settings(redis_url)
        env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix)
        async with AsyncClient(settings) as client:
            with worker_process(env, settings.worker_slots), gateway_process(env) as process:
                yield Stack(emulator_url, proxy, client, await gateway_target(client, process))


# -- direct calls ------------------------------------------------------------------------


@dataclass(frozen=True)
class Latencies:
    calls: int
    p50_ms: float
    p99_ms: float


def latencies(samples_s: list[float]) -> Latencies:
    ms = [s * 1000 for s in samples_s]
    return Latencies(len(ms), percentile(ms, 0.5), percentile(ms, 0.99))


def python_api(client: AsyncClient, proxy: str) -> Call:
    async def call(prompt: str) -> None:
        job = await client.chat(proxy, [{"role": "user", "content": prompt}], model=MODEL)
        await job.result(timeout=CALL_TIMEOUT_S)

    return call


def raw_http(http: httpx.AsyncClient) -> Call:
    async def call(prompt: str) -> None:
        response = await http.post("/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": prompt}]})
        response.raise_for_status()
        response.json()

    return call


def official(oai: openai.AsyncOpenAI) -> Call:
    async def call(prompt: str) -> None:
        await oai.chat.completions.create(model=MODEL,
                                          messages=[{"role": "user", "content": prompt}])

    return call


async def timed_turns(paths: dict[str, Call], calls: int, callers: int) -> dict[str, list[float]]:
    """Seconds per call of each path: `callers` at once, each making `calls // callers` calls
    of every path in turn (the order rotating, so no path always follows another)."""
    taken: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)

    async def caller(first: int) -> None:
        for i in range(first, calls, callers):
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                started = time.perf_counter()
                await paths[name](f"Summarise item {i}.")
                taken[name].append(time.perf_counter() - started)

    await asyncio.gather(*(caller(first) for first in range(callers)))
    return taken


async def measure_calls(stack: Stack, calls: int = DEFAULT_CALLS) -> dict[str, Any]:
    set_emulator(stack.emulator_url, ttft_s=0, tpot_s=0)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    target = stack.target
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits),
                                 base_url=target.base_url, headers=target.headers,
                                 timeout=CALL_TIMEOUT_S) as http, \
            openai.AsyncOpenAI(base_url=target.base_url, api_key=target.key, max_retries=0,
                               timeout=CALL_TIMEOUT_S) as oai:
        paths = {"python": python_api(stack.client, stack.proxy), "httpx": raw_http(http),
                 "openai": official(oai)}
        await timed_turns(paths, WARM_CALLS, 1)  # connections, caches, the proxy directory
        cpu_before = cpu_s(target.pid)
        sequential = await timed_turns(paths, calls, 1)
        gateway_cpu_s = cpu_s(target.pid) - cpu_before
        concurrent = await timed_turns(paths, calls, CONCURRENCY)
        cpu_before = time.process_time()
        await timed_turns({"python": paths["python"]}, calls, 1)
        python_cpu_s = time.process_time() - cpu_before
    through_gateway = calls * (len(paths) - 1)  # every path but the Python API's
    return {"calls": calls, "concurrency": CONCURRENCY,
            "gateway_cpu_ms_per_call": gateway_cpu_s * 1000 / through_gateway,
            "python_cpu_ms_per_call": python_cpu_s * 1000 / calls,
            "sequential": {name: asdict(latencies(s)) for name, s in sequential.items()},
            "concurrent": {name: asdict(latencies(s)) for name, s in concurrent.items()}}


def overhead_ms(runs: dict[str, Any], path: str, at: str) -> float:
    return float(runs[path][at] - runs["python"][at])


def calls_passed(result: dict[str, Any]) -> bool:
    runs = result["sequential"]
    return max(overhead_ms(runs, "httpx", "p50_ms"),
               overhead_ms(runs, "httpx", "p99_ms")) < TARGET_OVERHEAD_MS


# -- the whole benchmark -----------------------------------------------------------------


async def measure(calls: int = DEFAULT_CALLS, streams: int = gateway_stream.DEFAULT_STREAMS,
                  rounds: int = gateway_stream.DEFAULT_ROUNDS,
                  lines: int = gateway_files.LINES) -> dict[str, Any]:
    async with gateway_stack() as stack:
        relayed = await gateway_stream.measure_streams(
            stack.emulator_url, stack.proxy, stack.client, stack.target, streams, rounds)
        direct = await measure_calls(stack, calls)
        files = await gateway_files.measure_files(stack.target, lines)
    return {"calls": direct, "streams": relayed, "files": files}


def report(result: dict[str, Any]) -> None:
    calls = result["calls"]
    for mode, callers in (("sequential", 1), ("concurrent", calls["concurrency"])):
        runs = calls[mode]
        print(f"direct chat calls, {calls['calls']} a path, {callers} at once:")
        for path in ("python", "httpx", "openai"):
            row = runs[path]
            extra = "" if path == "python" else (
                f"  overhead p50 {overhead_ms(runs, path, 'p50_ms'):+.1f} ms, p99 "
                f"{overhead_ms(runs, path, 'p99_ms'):+.1f} ms")
            print(f"  {path:<7} p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms{extra}")
    print(f"CPU per call: gateway process {calls['gateway_cpu_ms_per_call']:.2f} ms, the "
          f"Python API in its caller {calls['python_cpu_ms_per_call']:.2f} ms")
    print(f"target: httpx - Python API < +{TARGET_OVERHEAD_MS:.0f} ms at p50 and p99 "
          f"(sequential): {'pass' if calls_passed(calls) else 'FAIL'}")
    gateway_stream.report(result["streams"])
    gateway_files.report(result["files"])


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    parser.add_argument("--streams", type=int, default=gateway_stream.DEFAULT_STREAMS)
    parser.add_argument("--rounds", type=int, default=gateway_stream.DEFAULT_ROUNDS)
    parser.add_argument("--lines", type=int, default=gateway_files.LINES)
    args = parser.parse_args()
    report(asyncio.run(measure(args.calls, args.streams, args.rounds, args.lines)))

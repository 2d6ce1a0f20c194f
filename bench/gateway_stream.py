"""Relayed streams: the chunk latency of streamed chats read through the gateway's SSE relay,
against a direct SSE client of the same emulator and against mpq's own stream (a consumer of
`AsyncClient(...).job(id).stream()` in the bench process), measured as `bench.streaming`
does and with its parts: the emulator stamps each token frame as it sends it, readers stamp
each chunk as it reaches them, chunks are matched by completion id and index.

The gateway's chunks carry the gateway's own completion id (`chatcmpl-<job id>`); the job id
comes back in `x-request-id`, and the job's record gives the upstream's completion id the
emulator's stamps are filed under. The three paths run one after another in each round, the
gateway's HTTP client (httpx on the aiohttp transport) reading the same way as the direct one.
Also, no target: the chunks after the first `STARTING_CHUNKS` of each stream (the first ones
arrive while the gateway is still taking the round's 100 requests), and the gateway process's
CPU time (utime + stime) over its rounds per chunk relayed (each stream's own cost, from its
request to its `[DONE]`, shared among its chunks).
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import asdict
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

from bench.harness import GatewayTarget
from bench.streaming import (
    STARTING_CHUNKS,
    Arrivals,
    direct_round,
    latency,
    match,
    mpq_round,
    read_sse,
    sse_request,
    take_sent,
)
from bench.throughput import cpu_s
from gateway.direct_call import REQUEST_ID
from producer.client import AsyncClient

DEFAULT_STREAMS = 100
DEFAULT_ROUNDS = 3
# The gateway may add this much to mpq's own stream, whose target is 10 ms over direct SSE
# (bench.streaming): the same budget as a direct call through the gateway.
TARGET_P99_OVERHEAD_MS = 15.0


async def relayed_round(target: GatewayTarget, client: AsyncClient,
                        streams: int) -> list[Arrivals]:
    """`streams` concurrent streamed chats through the gateway, read as SSE."""
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits),
                                 base_url=target.base_url, headers=target.headers,
                                 timeout=60) as http:

        async def read(i: int) -> tuple[str, Arrivals]:
            async with http.stream("POST", "/chat/completions", json=sse_request(i)) as response:
                return response.headers[REQUEST_ID], await read_sse(response)

        found = await asyncio.gather(*(read(i) for i in range(streams)))
    records = await client.store.load_many([job_id for job_id, _ in found])
    for (job_id, arrivals), record in zip(found, records, strict=True):
        if record is None or record.result is None:
            raise RuntimeError(f"job {job_id} has no result: {record}")
        arrivals.completion_id = str(record.result["id"])
    return [arrivals for _, arrivals in found]


async def measure_streams(emulator_url: str, proxy: str, client: AsyncClient,
                          target: GatewayTarget, streams: int = DEFAULT_STREAMS,
                          rounds: int = DEFAULT_ROUNDS) -> dict[str, Any]:
    """Chunk latencies of the three paths against the stamped emulator, paced as
    `bench.streaming` sets it (the emulator's settings must be its defaults)."""
    await direct_round(emulator_url, proxy, 1)  # connections, caches
    await mpq_round(client, proxy, 1)
    await relayed_round(target, client, 1)
    take_sent(emulator_url)
    gc.collect()
    gc.freeze()
    direct: list[Arrivals] = []
    mpq: list[Arrivals] = []
    relayed: list[Arrivals] = []
    gateway_cpu_s = 0.0
    for _ in range(rounds):
        direct += await direct_round(emulator_url, proxy, streams)
        mpq += await mpq_round(client, proxy, streams)
        cpu_before = cpu_s(target.pid)
        relayed += await relayed_round(target, client, streams)
        gateway_cpu_s += cpu_s(target.pid) - cpu_before
    sent = take_sent(emulator_url)
    splits = {name: match(arrivals, sent)
              for name, arrivals in (("direct", direct), ("mpq", mpq), ("gateway", relayed))}
    figures = {name: asdict(latency(split.total)) for name, split in splits.items()}
    figures |= {f"{name}_steady": asdict(latency(split.steady))
                for name, split in splits.items()}
    chunks = sum(len(stream.at) for stream in relayed)
    return {"streams": streams, "rounds": rounds, **figures,
            "gateway_cpu_us_per_chunk": gateway_cpu_s * 1e6 / chunks,
            "p99_overhead_ms": figures["gateway"]["p99_ms"] - figures["direct"]["p99_ms"],
            "p50_overhead_ms": figures["gateway"]["p50_ms"] - figures["direct"]["p50_ms"],
            "p99_over_mpq_ms": figures["gateway"]["p99_ms"] - figures["mpq"]["p99_ms"],
            "steady_p99_overhead_ms": (figures["gateway_steady"]["p99_ms"]
                                       - figures["direct_steady"]["p99_ms"])}


def passed(result: dict[str, Any]) -> bool:
    return bool(result["p99_overhead_ms"] < TARGET_P99_OVERHEAD_MS)


def report(result: dict[str, Any]) -> None:
    print(f"{result['streams']} concurrent streams x {result['rounds']} rounds; latency from "
          "the emulator sending a chunk")
    print(f"{'path':<34} {'chunks':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for name, key in (("direct SSE client", "direct"), ("mpq: AsyncJob.stream()", "mpq"),
                      ("gateway: SSE relay", "gateway"),
                      (f"direct, from chunk {STARTING_CHUNKS + 1} on", "direct_steady"),
                      (f"mpq, from chunk {STARTING_CHUNKS + 1} on", "mpq_steady"),
                      (f"gateway, from chunk {STARTING_CHUNKS + 1} on", "gateway_steady")):
        row = result[key]
        print(f"{name:<34} {row['chunks']:>7} {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} "
              f"{row['max_ms']:>7.1f}")
    print(f"gateway - direct: p50 {result['p50_overhead_ms']:+.1f} ms, p99 "
          f"{result['p99_overhead_ms']:+.1f} ms (target < +{TARGET_P99_OVERHEAD_MS:.0f}) "
          f"{'pass' if passed(result) else 'FAIL'}; gateway - mpq p99 "
          f"{result['p99_over_mpq_ms']:+.1f} ms")
    print(f"gateway CPU per chunk relayed: {result['gateway_cpu_us_per_chunk']:.0f} µs")

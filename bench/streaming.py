"""Streaming: how long a chunk takes from the emulator sending it to a consumer reading it
from the job's Redis stream, against a direct SSE client reading the same kind of stream
from the same emulator, at 100 concurrent streams (`--streams`), `--rounds` rounds each.

Method. "Sent at" is taken inside the emulator process: the bench runs the emulator app
(`emulator.app.create_app`, unchanged) behind a thin ASGI wrapper that stamps
`time.time()` just before each token frame goes to the server's socket, per completion id,
and answers `GET /_bench/sent` with those stamps. Consumers stamp `time.time()` when a chunk
reaches them. All processes share this machine's clock, so the latency of chunk k of a
stream is arrival_k - sent_k, matched by completion id (the job's `result.id`) and token
index, for
- the direct client: httpx on the aiohttp transport, reading SSE lines;
- the mpq path: emulator -> `mpq worker` as run by default (one process per usable core,
  each with MPQ_WORKER_SLOTS slots) -> `job:{id}:chunks` -> a consumer reading
  with `XREAD BLOCK` through `producer.client.AsyncClient(...).job(id).stream()`, as users do.
  The stream entry id is the Redis clock in ms when the worker's XADD ran, which splits that
  latency into emulator -> Redis and Redis -> consumer (1 ms resolution).
The consumer process freezes its start-up objects out of the cyclic GC once it is set up
(`gc.freeze()`, as the README advises for processes that follow many streams): otherwise
its full collections, 60-90 ms each, land in the measurement. The worker does the same by
itself when it is ready.
Streams are paced by the synthetic model: `--tpot-s` 0.05 between tokens (20-40 tokens per
reply), so 100 streams offer about 2,000 chunks/s. Target: p99(mpq) - p99(direct) < 5 ms.

Also reported (no target): the chunks after the first 5 of each stream, which do not
arrive while the worker is still taking the round's 100 jobs off the queue.

Chunks/s: the same 100 streams unpaced (`tpot_s` 0, 100-200 tokens each): chunks delivered
to the consumers per second from the first chunk's arrival to the last one's, against the
direct client's chunks/s measured the same way (reported, no target). The paced figure is
measured the same way too.

For reference, this machine's Celery no-op rate (`bench.throughput.noop_rate`: 5,000
queued no-op tasks drained by as many `bench.noop_app` worker processes as `mpq worker`
runs, with its slots each), measured before the worker starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

from bench.harness import (
    MODEL,
    arguments,
    bench_settings,
    create_proxy,
    module_server,
    percentile,
    set_emulator,
    worker_environment,
    worker_process,
)
from bench.throughput import noop_rate
from core.contract import JobKind, JobRecord
from core.dispatch import enqueue
from core.embedded_redis import redis_server
from producer.client import AsyncClient
from producer.worker_group import usable_cores

DEFAULT_STREAMS = 100
DEFAULT_ROUNDS = 3
TPOT_S = 0.05
PACED_TOKENS = 40  # the synthetic model's natural reply: between half of this and this
UNPACED_TOKENS = 200
TARGET_P99_OVERHEAD_MS = 5.0
STARTING_CHUNKS = 5  # reported apart too: they arrive while the worker starts 100 jobs
NOOP_TASKS = 5_000
SENT_PATH = "/_bench/sent"
TOKEN_MARK = b'"delta":{"content":"'
EMPTY_TOKEN_MARK = b'"delta":{"content":""'
ID_PREFIX = b'data: {"id":"'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- the emulator, with "sent at" stamps --------------------------------------------


class SentStamps:
    """ASGI wrapper: stamps each chat token frame as it is handed to the server."""

    def __init__(self, app: Asgi) -> None:
        self.app = app
        self.sent: dict[str, list[float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == SENT_PATH:
            await self._answer(scope, send)
            return
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        stamps: list[float] = []
        completion_id = ""

        async def stamped(message: Message) -> None:
            nonlocal completion_id
            body = message.get("body", b"") if message["type"] == "http.response.body" else b""
            if TOKEN_MARK in body and EMPTY_TOKEN_MARK not in body:
                stamps.append(time.time())
            elif not completion_id and body.startswith(ID_PREFIX):
                completion_id = body[len(ID_PREFIX):].split(b'"', 1)[0].decode()
            await send(message)

        await self.app(scope, receive, stamped)
        if completion_id:
            self.sent[completion_id] = stamps

    async def _answer(self, scope: Scope, send: Send) -> None:
        body = json.dumps(self.sent).encode()
        if scope["method"] == "DELETE":
            self.sent.clear()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def serve_stamped_emulator(port: int) -> None:
    """Run the emulator app behind `SentStamps` until SIGTERM (in its own process)."""
    from emulator.app import create_app  # noqa: PLC0415 - emulator process only
    from emulator.server import EmulatorServer  # noqa: PLC0415
    from emulator.settings import EmulatorSettings  # noqa: PLC0415

    app = create_app(EmulatorSettings(create_delay_s=0, update_delay_s=0, delete_delay_s=0,
                                      tpot_s=TPOT_S, default_completion_tokens=PACED_TOKENS))
    app.add_middleware(SentStamps)  # the outermost layer: next to the server's socket
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmulatorServer(app=app, port=port):
        while not stop.wait(0.2):
            pass


@contextlib.contextmanager
def stamped_emulator() -> Iterator[str]:
    with module_server("bench.streaming", "--serve-emulator", "/_emulator/health",
                       "stamped emulator") as url:
        yield url


def take_sent(url: str) -> dict[str, list[float]]:
    """The emulator's stamps so far, and forget them."""
    sent: dict[str, list[float]] = httpx.delete(f"{url}{SENT_PATH}", timeout=30).json()
    return sent


# -- the two readers ----------------------------------------------------------------


@dataclass
class Arrivals:
    """Arrival times of one stream's token chunks, and (mpq path) their entry ids' ms."""

    completion_id: str
    at: list[float]
    written_ms: list[int]


def chat_request(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"Tell me about item {i}."}],
            "stream": True}


async def direct_round(url: str, proxy: str, streams: int) -> list[Arrivals]:
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    endpoint = f"{url}/models/{proxy}/v1/chat/completions"
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits),
                                 timeout=60) as client:

        async def read(i: int) -> Arrivals:
            async with client.stream("POST", endpoint, json=sse_request(i)) as response:
                return await read_sse(response)

        return list(await asyncio.gather(*(read(i) for i in range(streams))))


def sse_request(i: int) -> dict[str, Any]:
    """The body of a streamed chat call made over HTTP (direct, or through a gateway)."""
    return {**chat_request(i), "model": MODEL, "stream_options": {"include_usage": True}}


async def read_sse(response: httpx.Response) -> Arrivals:
    """The arrival time of each chunk with text of an OpenAI chat SSE stream; the completion
    id is the chunks' `id`."""
    response.raise_for_status()
    arrivals = Arrivals("", [], [])
    async for line in response.aiter_lines():
        now = time.time()
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[len("data: "):])
        arrivals.completion_id = chunk["id"]
        choices = chunk["choices"]
        if choices and choices[0]["delta"].get("content"):
            arrivals.at.append(now)
    return arrivals


async def mpq_round(client: AsyncClient, proxy: str, streams: int) -> list[Arrivals]:
    records = [JobRecord(kind=JobKind.CHAT, proxy=proxy, request=chat_request(i))
               for i in range(streams)]
    await enqueue(client.store, client.celery, records)

    async def read(record: JobRecord) -> Arrivals:
        job = client.job(record.id)
        seen: list[tuple[int, float, int]] = []  # (attempt, arrival, entry ms)
        async for event in job.stream():
            now = time.time()
            if event.kind == "delta":
                seen.append((event.attempt, now, int(event.entry_id.split("-")[0])))
        final = await job.result(timeout=60)
        result = final.result or {}
        mine = [s for s in seen if s[0] == final.attempt]
        return Arrivals(str(result.get("id", "")), [s[1] for s in mine], [s[2] for s in mine])

    return list(await asyncio.gather(*(read(r) for r in records)))


# -- figures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    chunks: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def latency(samples_s: list[float]) -> Latency:
    ms = [s * 1000 for s in samples_s]
    return Latency(len(ms), percentile(ms, 0.5), percentile(ms, 0.99), max(ms))


@dataclass
class Split:
    """Latencies (s) of every chunk: in all, the part before and after the Redis write, and
    the chunks after the first `STARTING_CHUNKS` of their stream."""

    total: list[float]
    to_redis: list[float]
    from_redis: list[float]
    steady: list[float]


def match(rounds: list[Arrivals], sent: dict[str, list[float]]) -> Split:
    split = Split([], [], [], [])
    for stream in rounds:
        stamps = sent.get(stream.completion_id)
        if stamps is None or len(stamps) != len(stream.at):
            raise RuntimeError(f"stream {stream.completion_id}: {len(stream.at)} chunks read, "
                               f"{'no' if stamps is None else len(stamps)} sent")
        latencies = [a - s for a, s in zip(stream.at, stamps, strict=True)]
        split.total += latencies
        split.steady += latencies[STARTING_CHUNKS:]
        for k, written in enumerate(stream.written_ms):
            split.to_redis.append(written / 1000 - stamps[k])
            split.from_redis.append(stream.at[k] - written / 1000)
    return split


def chunks_per_s(streams: list[Arrivals], elapsed_s: float) -> float:
    return sum(len(r.at) for r in streams) / elapsed_s


def spread_s(streams: list[Arrivals]) -> float:
    """From the first chunk's arrival to the last one's."""
    return max(max(r.at) for r in streams) - min(min(r.at) for r in streams)


async def measure(streams: int = DEFAULT_STREAMS, rounds: int = DEFAULT_ROUNDS,
                  ) -> dict[str, Any]:
    with redis_server(None) as redis_url, stamped_emulator() as emulator_url:
        proxy = await create_proxy(emulator_url)
        settings = bench_settings(redis_url)
        env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix)
        noop_per_s, _ = await asyncio.to_thread(noop_rate, redis_url, emulator_url,
                                                NOOP_TASKS, usable_cores(),
                                                settings.worker_slots)
        async with AsyncClient(settings) as client:
            with worker_process(env, settings.worker_slots, processes=0):
                await direct_round(emulator_url, proxy, 1)  # connections, caches
                await mpq_round(client, proxy, 1)
                take_sent(emulator_url)
                gc.collect()
                gc.freeze()
                direct: list[Arrivals] = []
                mpq: list[Arrivals] = []
                paced_rates = []
                for _ in range(rounds):
                    direct += await direct_round(emulator_url, proxy, streams)
                    mpq_streams = await mpq_round(client, proxy, streams)
                    paced_rates.append(chunks_per_s(mpq_streams, spread_s(mpq_streams)))
                    mpq += mpq_streams
                sent = take_sent(emulator_url)
                paced_direct, paced_mpq = match(direct, sent), match(mpq, sent)
                set_emulator(emulator_url, tpot_s=0, default_completion_tokens=UNPACED_TOKENS)
                fast_direct = await direct_round(emulator_url, proxy, streams)
                fast_mpq = await mpq_round(client, proxy, streams)
    result: dict[str, Any] = {
        "streams": streams, "rounds": rounds,
        "direct": asdict(latency(paced_direct.total)), "mpq": asdict(latency(paced_mpq.total)),
        "emulator_to_redis": asdict(latency(paced_mpq.to_redis)),
        "redis_to_consumer": asdict(latency(paced_mpq.from_redis)),
        "direct_steady": asdict(latency(paced_direct.steady)),
        "mpq_steady": asdict(latency(paced_mpq.steady)),
        "paced_chunks_per_s": sum(paced_rates) / len(paced_rates),
        "direct_chunks_per_s": chunks_per_s(fast_direct, spread_s(fast_direct)),
        "mpq_chunks_per_s": chunks_per_s(fast_mpq, spread_s(fast_mpq)),
        "celery_noop_rate": noop_per_s,
    }
    result["p99_overhead_ms"] = result["mpq"]["p99_ms"] - result["direct"]["p99_ms"]
    result["p50_overhead_ms"] = result["mpq"]["p50_ms"] - result["direct"]["p50_ms"]
    return result


def passed(result: dict[str, Any]) -> bool:
    return bool(result["p99_overhead_ms"] < TARGET_P99_OVERHEAD_MS)


def report(result: dict[str, Any]) -> None:
    print(f"{result['streams']} concurrent streams x {result['rounds']} rounds, "
          f"tpot {TPOT_S * 1000:.0f} ms; latency from the emulator sending a chunk")
    print(f"{'path':<34} {'chunks':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    rows = (("direct SSE client", "direct"), ("mpq: worker -> Redis -> XREAD", "mpq"),
            ("  of which emulator -> Redis", "emulator_to_redis"),
            ("  of which Redis -> consumer", "redis_to_consumer"),
            (f"direct, from chunk {STARTING_CHUNKS + 1} on", "direct_steady"),
            (f"mpq, from chunk {STARTING_CHUNKS + 1} on", "mpq_steady"))
    for name, key in rows:
        row = result[key]
        print(f"{name:<34} {row['chunks']:>7} {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} "
              f"{row['max_ms']:>7.1f}")
    verdict = "pass" if passed(result) else "FAIL"
    print(f"overhead p50 {result['p50_overhead_ms']:.1f} ms, p99 "
          f"{result['p99_overhead_ms']:.1f} ms (target < {TARGET_P99_OVERHEAD_MS:.0f}) "
          f"{verdict}")
    print(f"paced: {result['paced_chunks_per_s']:.0f} chunks/s delivered through Redis; "
          f"unpaced: {result['mpq_chunks_per_s']:.0f} chunks/s through Redis vs "
          f"{result['direct_chunks_per_s']:.0f} direct "
          f"({result['mpq_chunks_per_s'] / result['direct_chunks_per_s']:.2f})")
    print(f"Celery no-op rate on this machine: {result['celery_noop_rate']:.0f} tasks/s")


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--streams", type=int, default=DEFAULT_STREAMS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--serve-emulator", type=int, metavar="PORT",
                        help=argparse.SUPPRESS)  # the stamped emulator's own process
    args = parser.parse_args()
    if args.serve_emulator is not None:
        serve_stamped_emulator(args.serve_emulator)
    else:
        report(asyncio.run(measure(args.streams, args.rounds)))

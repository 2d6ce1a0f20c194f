"""Rate limits: two worker processes run 3,000 chat jobs (`--jobs`) through a proxy whose
declared limit the emulator enforces with 429s, once for a requests/min limit
(`requestRateLimiter.rpm` 6,000: 100 requests/s) and once for a tokens/min limit
(`tokenRateLimiter.tpm` 96,000: 1,600 tokens/s, about 100 requests/s of the synthetic
model's ~16 tokens with `max_tokens` 16).

Figure: the achieved rate in steady state divided by the allowed rate (requests/s from the
jobs' count, tokens/s from their `usage`), target >= 0.95; and the upstream 429s in steady
state (the emulator's per-proxy count, polled every 0.1 s), target 0.

Steady state, and why both buckets are drained first. The emulator's buckets hold a full
minute's allowance when a proxy is new, so a run shorter than a minute could never see a
429, whatever the workers did; and our limiter lets a burst of `DEFAULT_BURST_RATIO` of a
minute through at once (600 requests here), which 2 workers take seconds to work off, so
the finish rate stays above the limit long after the burst was admitted. Before each run
the bench therefore takes the emulator's bucket down to 2 % of a minute (by sending it
requests directly) and then empties our limiter's bucket in Redis (by taking permits as a
worker would): from the first job on, the workers are in steady state, and every request
above the allowed rate for more than ~1 s is a 429. The rate is measured between the 10th
and the 90th percentile of the requests (or tokens) by the jobs' `finished_at`, leaving out
the start (slots filling, connections opening) and the tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport
from redis.asyncio import Redis

from bench.harness import (
    MODEL,
    arguments,
    bench_settings,
    chat_records,
    create_proxy,
    emulator_process,
    emulator_stats,
    reset_emulator_stats,
    set_emulator,
    wait_batch,
    worker_environment,
    worker_process,
)
from core.celery_app import create_app
from core.contract import JobStatus
from core.dispatch import enqueue
from core.embedded_redis import redis_server
from core.keys import Keys, LimiterKeys
from core.redis_client import redis_client
from core.settings import Settings
from core.store import JobStore
from worker.ratelimit import DEFAULT_BURST_RATIO, Limits, Permit, RateLimiter

DEFAULT_JOBS = 3_000
DEFAULT_SLOTS = 500
WORKERS = 2
RPM = 6_000
TPM = 96_000
MAX_TOKENS = 16
LATENCY_S = 0.05  # per request, so requests overlap a little as real ones do
MARGIN = 0.02  # of a minute's allowance, left in the emulator's bucket: ~1 s of slack
TARGET = 0.95
STATS_POLL_S = 0.1
DRAIN_CONCURRENCY = 100


@dataclass(frozen=True)
class LimitRun:
    limit: str  # "rpm" or "tpm"
    allowed_per_s: float  # requests/s or tokens/s
    achieved_per_s: float  # over the steady-state window
    ratio: float
    jobs: int
    succeeded: int
    window_s: float
    rejected_total: int  # 429s during the whole run
    rejected_steady: int  # 429s in the steady-state window
    elapsed_s: float


def steady_window(points: list[tuple[float, float]], burst: float = 0.0,
                  ) -> tuple[float, float, float]:
    """(start, end, amount between) of the steady state, from (finish time, amount) points.

    It starts once `burst` and 10 % of the rest have finished and ends at 90 % of the
    total."""
    points = sorted(points)
    total = sum(amount for _, amount in points)
    skip, stop = burst + 0.1 * max(total - burst, 0.0), 0.9 * total
    if skip >= stop:
        raise ValueError(f"too few jobs to see a steady state past a burst of {burst:.0f}")
    done = 0.0
    start: tuple[float, float] | None = None  # (time, amount done then)
    for at, amount in points:
        done += amount
        if start is None and done >= skip:
            start = (at, done)
        if start is not None and done >= stop:
            return start[0], at, done - start[1]
    raise AssertionError("unreachable: the amounts add up to the total")


def rejected_at(samples: list[tuple[float, int]], moment: float) -> int:
    """429s counted by the emulator at `moment` (the last sample taken before it)."""
    before = [count for at, count in samples if at <= moment]
    return before[-1] if before else 0


async def poll_rejections(url: str, proxy: str, samples: list[tuple[float, int]]) -> None:
    """Append (time, 429s so far) every STATS_POLL_S until cancelled."""
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            stats = (await client.get(f"{url}/_emulator/stats")).json()
            rejected = stats["by_proxy"].get(proxy, {}).get("429", 0)
            samples.append((time.time(), rejected))
            await asyncio.sleep(STATS_POLL_S)


async def drain_requests(url: str, proxy: str, rpm: int, keep: float) -> None:
    """Take requests from the emulator's rpm bucket until `keep` are left.

    The bucket is full (rpm) at the proxy's first data request and refills at rpm/60 per
    second, so after `sent` requests over `t` seconds it holds rpm - sent + rpm/60 * t."""
    endpoint = f"{url}/models/{proxy}/v1/chat/completions"
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    limits = httpx.Limits(max_connections=DRAIN_CONCURRENCY)
    sent = 0
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits),
                                 timeout=30) as client:
        (await client.post(endpoint, json=body)).raise_for_status()
        started, sent = time.monotonic(), 1

        async def drain() -> None:
            nonlocal sent
            while rpm - sent + rpm / 60 * (time.monotonic() - started) > keep:
                sent += 1
                (await client.post(endpoint, json=body)).raise_for_status()

        await asyncio.gather(*(drain() for _ in range(DRAIN_CONCURRENCY)))


async def drain_tokens(url: str, proxy: str, tpm: int, keep: float) -> None:
    """One request whose prompt takes all but `keep` tokens of the tpm bucket (full at
    the proxy's first data request; the emulator charges a prompt at admission)."""
    endpoint = f"{url}/models/{proxy}/v1/chat/completions"
    words = max(0, int(tpm - keep - 1))  # -1: the one completion token
    body = {"model": MODEL, "max_tokens": 1,
            "messages": [{"role": "user", "content": "w " * words}]}
    async with httpx.AsyncClient(timeout=30) as client:
        (await client.post(endpoint, json=body)).raise_for_status()


async def drain_our_limiter(client: Redis, key_base: LimiterKeys, limits: Limits,
                            cost: int) -> None:
    """Take permits as a worker would until our limiter refuses: its burst is used up."""
    limiter = RateLimiter(client)
    for attempt in range(100_000):  # bounded: the burst is at most a minute's allowance
        taken = await limiter.acquire(key_base, limits, cost, f"drain-{attempt}", 60)
        if not isinstance(taken, Permit):
            return
    raise RuntimeError("our limiter never refused a permit")


async def limit_run(emulator_url: str, proxy: str, client: Redis, settings: Settings,
                    limit: str, jobs: int) -> LimitRun:
    """One batch through the workers already running, both buckets drained first."""
    celery = create_app(settings)
    keys = Keys(settings.key_prefix)
    store = JobStore(client, keys, settings.result_ttl_s)
    key_base = keys.limiter(proxy)
    set_emulator(emulator_url, ttft_s=0)
    if limit == "rpm":
        allowed = RPM / 60
        await drain_requests(emulator_url, proxy, RPM, RPM * MARGIN)
        await drain_our_limiter(client, key_base, Limits(requests_per_minute=RPM), 1)
    else:
        allowed = TPM / 60
        await drain_tokens(emulator_url, proxy, TPM, TPM * MARGIN)
        await drain_our_limiter(client, key_base, Limits(tokens_per_minute=TPM),
                                int(TPM * DEFAULT_BURST_RATIO))
    set_emulator(emulator_url, ttft_s=LATENCY_S)
    reset_emulator_stats(emulator_url)
    samples: list[tuple[float, int]] = []
    poller = asyncio.ensure_future(poll_rejections(emulator_url, proxy, samples))
    records = chat_records(proxy, jobs, max_tokens=MAX_TOKENS)
    batch_id = f"{limit}-{int(time.time())}"
    try:
        started = time.time()
        await enqueue(store, celery, records, batch_id=batch_id)
        await wait_batch(store, batch_id)
        await asyncio.sleep(2 * STATS_POLL_S)  # a last sample after the end
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    finished = [r for r in await store.load_many([r.id for r in records]) if r]
    ok = [r for r in finished if r.status == JobStatus.SUCCEEDED]
    start, end, amount = steady_window(
        [(r.finished_at or 0, 1.0 if limit == "rpm" else float(
            (r.usage or {}).get("total_tokens", 0))) for r in ok])
    achieved = amount / (end - start)
    rejected_total = emulator_stats(emulator_url)["by_proxy"].get(proxy, {}).get("429", 0)
    return LimitRun(
        limit=limit, allowed_per_s=allowed, achieved_per_s=achieved,
        ratio=achieved / allowed, jobs=jobs, succeeded=len(ok), window_s=end - start,
        rejected_total=rejected_total,
        rejected_steady=rejected_at(samples, end) - rejected_at(samples, start),
        elapsed_s=max(r.finished_at or 0 for r in finished) - started)


async def measure(jobs: int = DEFAULT_JOBS, slots: int = DEFAULT_SLOTS) -> list[dict[str, Any]]:
    """Both limits, with the same two worker processes (one Redis, one emulator)."""
    with redis_server(None) as redis_url, emulator_process(
        "--lifecycle-delay-s", "0"
    ) as emulator_url:
        rpm_proxy = await create_proxy(emulator_url, {"requestRateLimiter": {"rpm": RPM}})
        tpm_proxy = await create_proxy(emulator_url, {"tokenRateLimiter": {"tpm": TPM}})
        settings = bench_settings(redis_url)
        client = redis_client(redis_url)
        env = worker_environment(redis_url, emulator_url, key_prefix=settings.key_prefix,
                                 worker_slots=slots)
        try:
            with contextlib.ExitStack() as workers:
                for _ in range(WORKERS):
                    workers.enter_context(worker_process(env, slots))
                runs = [await limit_run(emulator_url, proxy, client, settings,
                                        limit, jobs)
                        for limit, proxy in (("rpm", rpm_proxy), ("tpm", tpm_proxy))]
        finally:
            await client.aclose()
    return [asdict(run) for run in runs]


def passed(run: dict[str, Any]) -> bool:
    return bool(run["ratio"] >= TARGET and run["rejected_steady"] == 0)


def report(runs: list[dict[str, Any]]) -> None:
    print(f"{WORKERS} workers, {runs[0]['jobs']} jobs per limit, both buckets drained first; "
          "rate from the 10th to the 90th percentile")
    print(f"{'limit':<12} {'allowed/s':>9} {'achieved/s':>10} {'ratio':>6} {'ok':>6} "
          f"{'window s':>8} {'429 steady':>10} {'429 all':>8} {'elapsed s':>9}  verdict")
    for run in runs:
        name = f"rpm {RPM}" if run["limit"] == "rpm" else f"tpm {TPM}"
        unit = "req" if run["limit"] == "rpm" else "tok"
        print(f"{name:<12} {run['allowed_per_s']:>5.0f} {unit} {run['achieved_per_s']:>10.1f} "
              f"{run['ratio']:>6.3f} {run['succeeded']:>6} {run['window_s']:>8.1f} "
              f"{run['rejected_steady']:>10} {run['rejected_total']:>8} "
              f"{run['elapsed_s']:>9.1f}  {'pass' if passed(run) else 'FAIL'}")


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS)
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS,
                        help="slots of each worker process")
    args = parser.parse_args()
    report(asyncio.run(measure(args.jobs, args.slots)))

"""mpq's own figures for Prometheus, counted cluster-wide in one Redis hash.

Each worker process counts in memory (a dict touched only from its event loop, so no
lock) and adds the counts to the hash ``{prefix}metrics`` at most once per
``flush_interval_s``, with one pipelined HINCRBY per changed field. The exporter
(`producer.metrics_exporter`) reads the hash with one HGETALL per scrape. A worker killed
with SIGKILL loses at most its last second of counts; a failed flush keeps its counts for
the next one.

A hash field is ``json([metric, {label: value}])``: label values need no escaping.
Seconds are counted as integer milliseconds (HINCRBY only) and exported as seconds.

Bounded: every field is a series Prometheus keeps, and the `proxy` label comes from user
input (a job may name any proxy, even one that does not exist). A proxy label is the proxy's
name only for a name that follows the proxy-name rule (``core.contract.PROXY_NAME_PATTERN``),
among the first ``max_proxies`` such names of the process; a job whose proxy
does not exist (`ProxyNotFoundError`) or whose name breaks the rule counts under
``(unknown proxy)``, names past the cap under ``(other proxies)`` (neither can be a proxy's
name). So the hash holds the two buckets and at most ``max_proxies`` names per worker
process that wrote to it; the other labels take their values from the code (job kinds,
states, error classes, lanes). Each flush also renews the hash's TTL (the result retention): it is
gone once no worker writes to it any more, and the next one starts from zero (a counter
reset, which Prometheus's `rate()` handles).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.contract import PROXY_NAME_PATTERN
from modelproxy.errors import ProxyNotFoundError, RateLimitedError

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL_S = 1.0
DEFAULT_TTL_S = 7 * 24 * 3600  # core.settings' result_ttl_s default
DEFAULT_MAX_PROXIES = 200  # distinct proxy label values per process, buckets aside
OTHER_PROXIES = "(other proxies)"
UNKNOWN_PROXY = "(unknown proxy)"
_BUCKETS = frozenset({OTHER_PROXIES, UNKNOWN_PROXY})
# A permit that took longer than this waited for the limiter (shorter: one Redis round trip).
PERMIT_WAIT_THRESHOLD_S = 0.02


@dataclass(frozen=True)
class MetricSpec:
    """One Prometheus counter: its help text, label names, and the unit scale of its
    stored integer (0.001 for milliseconds exported as seconds)."""

    help: str
    labels: tuple[str, ...]
    scale: float = 1.0


# Names without `_total`: Prometheus clients add it to counters.
JOBS = "mpq_jobs"
TOKENS = "mpq_tokens"
PERMIT_WAITS = "mpq_ratelimit_waits"
PERMIT_WAIT_SECONDS = "mpq_ratelimit_wait_seconds"
ATTEMPT_ERRORS = "mpq_attempt_errors"
UPSTREAM_429 = "mpq_upstream_429"
STREAM_CHUNKS = "mpq_stream_chunks"
QUEUE_WAITS = "mpq_queue_waits"
QUEUE_WAIT_SECONDS = "mpq_queue_wait_seconds"

METRICS: Mapping[str, MetricSpec] = {
    JOBS: MetricSpec(
        "Job attempts by kind: started (state running) and how each ended: succeeded, "
        "failed, retrying (a retryable error, the job runs again), waiting (requeued for a "
        "rate-limit permit, no attempt used), stopped (cancelled or superseded while "
        "running).",
        ("kind", "state")),
    TOKENS: MetricSpec("Tokens the upstream reported, by proxy and type (prompt/completion).",
                       ("proxy", "type")),
    PERMIT_WAITS: MetricSpec(
        "Rate-limiter waits by proxy: waited (the permit came after a wait in the slot), "
        "requeued (the wait was too long: the job went back to the queue).",
        ("proxy", "result")),
    PERMIT_WAIT_SECONDS: MetricSpec("Seconds spent getting rate-limit permits, by proxy.",
                                    ("proxy",), scale=0.001),
    ATTEMPT_ERRORS: MetricSpec("Failed attempts by proxy and error class (retried or not).",
                               ("proxy", "error")),
    UPSTREAM_429: MetricSpec("429 Too Many Requests answers seen from the upstream, by proxy.",
                             ("proxy",)),
    STREAM_CHUNKS: MetricSpec("Entries written to job chunk streams (deltas and the final "
                              "done/error entry), by proxy.", ("proxy",)),
    QUEUE_WAITS: MetricSpec("Jobs taken from the queue and started, by lane (interactive: "
                            "jobs without a batch; batch: batch lines).", ("lane",)),
    QUEUE_WAIT_SECONDS: MetricSpec(
        "Seconds jobs waited from their latest publish to their start (a requeue's countdown "
        "included), by lane: divided by mpq_queue_waits, the mean wait.", ("lane",),
        scale=0.001),
}

# Usage fields of chat completions and of the Responses API, by token type.
_USAGE_FIELDS = {"prompt_tokens": "prompt", "input_tokens": "prompt",
                 "completion_tokens": "completion", "output_tokens": "completion"}


@functools.lru_cache(maxsize=4096)
def encode_field(metric: str, labels: tuple[tuple[str, str], ...]) -> str:
    return json.dumps([metric, dict(labels)], sort_keys=True, separators=(",", ":"))


def decode_field(field: str) -> tuple[str, dict[str, str]] | None:
    """(metric, labels) of a hash field; None for a field this version does not know."""
    try:
        metric, labels = json.loads(field)
    except (ValueError, TypeError):
        return None
    spec = METRICS.get(metric) if isinstance(metric, str) else None
    if spec is None or not isinstance(labels, dict) or set(labels) != set(spec.labels):
        return None
    return metric, {name: str(value) for name, value in labels.items()}


class MetricsRecorder:
    """The counters of one worker process; every method is cheap and never raises."""

    def __init__(self, redis: aioredis.Redis, key: str,
                 flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S, *,
                 ttl_s: int = DEFAULT_TTL_S, max_proxies: int = DEFAULT_MAX_PROXIES) -> None:
        self._redis = redis
        self._key = key
        self._interval_s = flush_interval_s
        self._ttl_s = ttl_s
        self._max_proxies = max_proxies
        self._proxies: set[str] = set()  # the names labelled as themselves
        self._pending: dict[str, int] = {}
        self._flusher: asyncio.Task[None] | None = None

    def add(self, metric: str, amount: int = 1, **labels: str) -> None:
        if amount <= 0:
            return
        if "proxy" in labels:
            labels["proxy"] = self.proxy_label(labels["proxy"])
        field = encode_field(metric, tuple(sorted(labels.items())))
        self._pending[field] = self._pending.get(field, 0) + amount
        self._schedule()

    def proxy_label(self, name: str) -> str:
        """The `proxy` label value for a proxy name (see the module's doc)."""
        if name in self._proxies or name in _BUCKETS:
            return name
        if not PROXY_NAME_PATTERN.fullmatch(name):
            return UNKNOWN_PROXY
        if len(self._proxies) >= self._max_proxies:
            return OTHER_PROXIES
        self._proxies.add(name)
        return name

    # The events the worker reports.
    def job_started(self, kind: str) -> None:
        self.add(JOBS, kind=kind, state="running")

    def job_outcome(self, kind: str, state: str) -> None:
        self.add(JOBS, kind=kind, state=state)

    def queue_wait(self, lane: str, waited_s: float | None) -> None:
        if waited_s is None:
            return
        self.add(QUEUE_WAITS, lane=lane)
        self.add(QUEUE_WAIT_SECONDS, round(waited_s * 1000), lane=lane)

    def tokens(self, proxy: str, usage: Mapping[str, Any] | None) -> None:
        for name, token_type in _USAGE_FIELDS.items():
            value = (usage or {}).get(name)
            if isinstance(value, int):
                self.add(TOKENS, value, proxy=proxy, type=token_type)

    def permit(self, proxy: str, took_s: float) -> None:
        self.add(PERMIT_WAIT_SECONDS, round(took_s * 1000), proxy=proxy)
        if took_s >= PERMIT_WAIT_THRESHOLD_S:
            self.add(PERMIT_WAITS, proxy=proxy, result="waited")

    def permit_requeued(self, proxy: str, took_s: float = 0.0) -> None:
        self.add(PERMIT_WAIT_SECONDS, round(took_s * 1000), proxy=proxy)
        self.add(PERMIT_WAITS, proxy=proxy, result="requeued")

    def attempt_failed(self, proxy: str, exc: BaseException) -> None:
        if isinstance(exc, ProxyNotFoundError):
            proxy = UNKNOWN_PROXY
        self.add(ATTEMPT_ERRORS, proxy=proxy, error=type(exc).__name__)
        if isinstance(exc, RateLimitedError):  # every 429, with or without Retry-After
            self.add(UPSTREAM_429, proxy=proxy)

    def stream_chunks(self, proxy: str, count: int) -> None:
        self.add(STREAM_CHUNKS, count, proxy=proxy)

    # Flushing.
    def _schedule(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop here: counts wait for an explicit flush()
        self._flusher = loop.create_task(self._flush_while_pending())

    async def _flush_while_pending(self) -> None:
        while self._pending:
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except RedisError as exc:
                logger.warning("metrics flush failed (kept for the next one): %s", exc)

    async def flush(self) -> None:
        """Add the pending counts to the hash now and renew its TTL (one pipelined round
        trip)."""
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for field, amount in batch.items():
                    pipe.hincrby(self._key, field, amount)
                pipe.expire(self._key, self._ttl_s)
                await pipe.execute()
        except RedisError:
            for field, amount in batch.items():
                self._pending[field] = self._pending.get(field, 0) + amount
            raise

    async def aclose(self) -> None:
        """Stop the flusher and write what is left (worker shutdown, tests)."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            await asyncio.wait([self._flusher])
        await self.flush()

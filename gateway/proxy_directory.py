"""Which proxies serve which models, read from mpq's proxy cache (one Redis hash per proxy,
written by the workers: field ``props`` is the proxy's wire JSON, ``state`` is ``present`` or
``vanished``).

Every request routes by model, so a snapshot of all entries is kept in memory for a moment
(`MEMO_S`), and one read serves every request waiting for it. A request the snapshot cannot
route looks again in a read begun after the request (so a proxy cached a moment ago is
found). When the cache itself lacks what a request names (nothing cached yet, a proxy made
since the last refresh), `refresh` asks a worker to rewrite it: one `mgmt_refresh` job,
bounded in time, at most one per `REFRESH_MIN_INTERVAL_S` per process so that unknown names
cannot flood the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as aioredis
from pydantic import ValidationError

from core.contract import decode_hash
from core.keys import Keys
from modelproxy.models import ModelProxyProps, ProxyMode, Status, model_name_for
from producer.client import AsyncClient
from producer.jobs import JobFailedError, JobTimeoutError

logger = logging.getLogger(__name__)

MEMO_S = 1.5
REFRESH_MIN_INTERVAL_S = 10.0
REFRESH_TIMEOUT_S = 10.0
PRESENT = "present"  # the cache's `state` of a proxy that exists (worker/proxy_cache.py)
# Proxies that cannot answer a call: never routed to.
NOT_SERVING = frozenset({Status.CREATE_FAILED.value, Status.DELETING.value})
_SCAN_COUNT = 500
_GLOB_SPECIAL = frozenset("*?[]\\")


@dataclass(frozen=True, slots=True)
class KnownProxy:
    """A proxy as the cache has it: the models it serves, its default first."""

    name: str
    status: str | None
    models: tuple[str, ...]
    created: int  # Unix seconds (0 when the server did not say)


def served_models(name: str, props: ModelProxyProps) -> tuple[str, ...]:
    """The model names a proxy answers to, its default (`model_name_for`) first: single mode
    serves its first endpoint's model names; multi mode its own name and every endpoint's."""
    endpoints = (props.proxy_config.endpoints if props.proxy_config else None) or []
    if props.proxy_mode == ProxyMode.SINGLE.value:
        named = list(endpoints[0].model_names or []) if endpoints else []
    else:
        named = [name, *(model for endpoint in endpoints for model in endpoint.model_names or [])]
    default = model_name_for(props)
    ordered = [default, *named] if default else named
    return tuple(dict.fromkeys(model for model in ordered if model))


def _created(props: ModelProxyProps) -> int:
    if not props.created_at:
        return 0
    try:
        return int(datetime.fromisoformat(props.created_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def parse_entry(name: str, fields: Mapping[str, str]) -> KnownProxy | None:
    """A cached entry of a present proxy; None when vanished or unreadable."""
    if fields.get("state") != PRESENT or "props" not in fields:
        return None
    try:
        props = ModelProxyProps.model_validate_json(fields["props"])
    except ValidationError:
        logger.warning("unreadable proxy cache entry for %s: skipped", name)
        return None
    return KnownProxy(name, props.status, served_models(name, props), _created(props))


@dataclass(frozen=True, slots=True)
class Snapshot:
    proxies: tuple[KnownProxy, ...]

    def get(self, name: str) -> KnownProxy | None:
        return next((proxy for proxy in self.proxies if proxy.name == name), None)

    def serving(self, model: str) -> list[str]:
        """The proxies that can answer calls for `model`, by name."""
        return sorted(proxy.name for proxy in self.proxies
                      if model in proxy.models and proxy.status not in NOT_SERVING)

    def models(self) -> dict[str, list[str]]:
        """Every routable model to the proxies serving it."""
        found: dict[str, list[str]] = {}
        for proxy in sorted(self.proxies, key=lambda p: p.name):
            if proxy.status not in NOT_SERVING:
                for model in proxy.models:
                    found.setdefault(model, []).append(proxy.name)
        return found


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in _GLOB_SPECIAL else c for c in text)


class ProxyDirectory:
    """The process's view of the proxy cache; see the module docstring."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, memo_s: float = MEMO_S) -> None:
        self._redis = redis
        self._keys = keys
        self.memo_s = memo_s
        # (when its read started, on the monotonic clock; what it read)
        self._snapshot: tuple[float, Snapshot] | None = None
        self._loading: tuple[float, asyncio.Task[Snapshot]] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -REFRESH_MIN_INTERVAL_S

    async def snapshot(self, since: float | None = None) -> Snapshot:
        """The cache's entries as read at most `memo_s` ago or, given `since` (a
        `time.monotonic()`), as read after then: a request that found nothing in the memo
        looks again in what was written since it began."""
        oldest = time.monotonic() - self.memo_s if since is None else since
        if self._snapshot is not None and self._snapshot[0] >= oldest:
            return self._snapshot[1]
        if self._loading is None or self._loading[1].done() or self._loading[0] < oldest:
            started = time.monotonic()
            self._loading = (started, asyncio.ensure_future(self._load(started)))
        # shield: one cancelled request must not cancel the read the others wait on.
        return await asyncio.shield(self._loading[1])

    async def _load(self, started: float) -> Snapshot:
        key_prefix = self._keys.proxy("*")[:-1]  # Keys accepts '*' as a name
        names = [key[len(key_prefix):] async for key in self._redis.scan_iter(
            match=f"{_glob_escape(key_prefix)}*", count=_SCAN_COUNT)]
        names = sorted(name for name in names if ":" not in name)  # only proxy hashes
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._keys.proxy(name))
            replies = await pipe.execute()
        proxies = tuple(proxy for name, raw in zip(names, replies, strict=True)
                        if (proxy := parse_entry(name, decode_hash(raw))) is not None)
        snapshot = Snapshot(proxies)
        if self._snapshot is None or self._snapshot[0] < started:
            self._snapshot = (started, snapshot)
        return snapshot

    async def refresh(self, client: AsyncClient) -> bool:
        """Have a worker rewrite the cache (waiting at most `REFRESH_TIMEOUT_S`), unless one
        was asked for lately; True when a refresh ran (or was joined)."""
        if self._refreshing is None or self._refreshing.done():
            if time.monotonic() - self._refreshed_at < REFRESH_MIN_INTERVAL_S:
                return False
            self._refreshed_at = time.monotonic()
            self._refreshing = asyncio.ensure_future(self._refresh(client))
        await asyncio.shield(self._refreshing)
        return True

    async def _refresh(self, client: AsyncClient) -> None:
        job = await client.refresh_proxies()
        try:
            await job.result(timeout=REFRESH_TIMEOUT_S)
        except JobTimeoutError:
            logger.warning("proxy cache refresh %s took over %.0f s; routing with what is "
                           "cached", job.id, REFRESH_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await job.cancel()
        except JobFailedError as exc:
            logger.warning("proxy cache refresh failed: %s", exc)
        self._snapshot = None

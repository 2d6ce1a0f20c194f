"""Which proxies serve which models, read from mpq's proxy cache (written by the workers;
core/proxy_entries.py has its format): the set of the names cached as present, then each
one's entry.

Every request routes by model, so no request reads the cache: `run`, a background task of
the app, reads it every `RELOAD_S` and requests route by the last read (only the first
request waits, for the first read). A request that read cannot route looks again in a read
begun after the request (so a proxy cached a moment ago is found). When the cache itself
lacks what a request names (nothing cached yet, a proxy made since the last refresh),
`refresh` asks a worker to rewrite it: one `mgmt_refresh` job, bounded in time, at most one
per `REFRESH_MIN_INTERVAL_S` per process so that unknown names cannot flood the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import redis.asyncio as aioredis
from pydantic import ValidationError

from core.contract import decode_hash
from core.keys import Keys
from core.proxy_entries import decode_entry
from modelproxy.models import ModelProxyProps, ProxyMode, Status, model_name_for
from producer.client import AsyncClient
from producer.jobs import JobFailedError, JobTimeoutError

logger = logging.getLogger(__name__)

RELOAD_S = 1.5
# A read older than this (the background reads stopped) is not routed by: a request waits
# for a new one instead.
STALE_S = 15.0
REFRESH_MIN_INTERVAL_S = 10.0
REFRESH_TIMEOUT_S = 10.0
# Proxies that cannot answer a call: never routed to.
NOT_SERVING = frozenset({Status.CREATE_FAILED.value, Status.DELETING.value})


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


def present_props(name: str, fields: Mapping[str, str]) -> str | None:
    """A cached entry's wire JSON when its proxy is present; None when vanished, gone (a
    name the set still lists) or unreadable."""
    try:
        entry = decode_entry(fields)
    except ValueError as exc:
        logger.warning("unreadable proxy cache entry for %s (%s): skipped", name, exc)
        return None
    return None if entry is None else entry.props


def known_proxy(name: str, props: str) -> KnownProxy | None:
    """A present proxy from its wire JSON; None when that does not validate."""
    try:
        parsed = ModelProxyProps.model_validate_json(props)
    except ValidationError:
        logger.warning("unreadable proxy cache entry for %s: skipped", name)
        return None
    return KnownProxy(name, parsed.status, served_models(name, parsed), _created(parsed))


def parse_entry(name: str, fields: Mapping[str, str]) -> KnownProxy | None:
    """A cached entry of a present proxy; None when vanished, gone or unreadable."""
    props = present_props(name, fields)
    return None if props is None else known_proxy(name, props)


@dataclass(frozen=True, slots=True)
class Snapshot:
    proxies: tuple[KnownProxy, ...]
    _by_name: dict[str, KnownProxy] = field(init=False, repr=False, compare=False)
    # Every model a serving proxy answers to: the names of those proxies, sorted.
    _by_model: dict[str, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_model: dict[str, list[str]] = {}
        for proxy in sorted(self.proxies, key=lambda p: p.name):
            if proxy.status not in NOT_SERVING:
                for model in proxy.models:
                    by_model.setdefault(model, []).append(proxy.name)
        object.__setattr__(self, "_by_name", {proxy.name: proxy for proxy in self.proxies})
        object.__setattr__(self, "_by_model", by_model)

    def get(self, name: str) -> KnownProxy | None:
        return self._by_name.get(name)

    def serving(self, model: str) -> list[str]:
        """The proxies that can answer calls for `model`, by name."""
        return list(self._by_model.get(model, ()))

    def models(self) -> dict[str, list[str]]:
        """Every routable model to the proxies serving it."""
        return {model: list(names) for model, names in self._by_model.items()}


class ProxyDirectory:
    """The process's view of the proxy cache; see the module docstring."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, reload_s: float = RELOAD_S) -> None:
        self._redis = redis
        self._keys = keys
        self.reload_s = reload_s
        # (when its read started, on the monotonic clock; what it read)
        self._snapshot: tuple[float, Snapshot] | None = None
        self._loading: tuple[float, asyncio.Task[Snapshot]] | None = None
        # name -> (its wire JSON, what it gave): an entry the last read had is not parsed
        # again while its proxy is unchanged.
        self._parsed: dict[str, tuple[str, KnownProxy | None]] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -REFRESH_MIN_INTERVAL_S

    async def run(self) -> None:
        """Read the cache every `reload_s`, until cancelled (a failed read is retried at the
        next turn; requests route by the last read meanwhile)."""
        failing = False
        while True:
            try:
                await self.snapshot(since=time.monotonic())
            except Exception as exc:  # Redis away: said once, retried at every turn
                if not failing:
                    logger.warning("reading the proxy cache failed: %s; retrying", exc)
                failing = True
            else:
                if failing:
                    logger.info("reading the proxy cache again")
                failing = False
            await asyncio.sleep(self.reload_s)

    async def snapshot(self, since: float | None = None) -> Snapshot:
        """The cache as last read or, given `since` (a `time.monotonic()`), as read after
        then: a request that found nothing in the last read looks again in what was written
        since it began."""
        oldest = time.monotonic() - STALE_S if since is None else since
        if self._snapshot is not None and self._snapshot[0] >= oldest:
            return self._snapshot[1]
        if self._loading is None or self._loading[1].done() or self._loading[0] < oldest:
            started = time.monotonic()
            self._loading = (started, asyncio.ensure_future(self._load(started)))
        # shield: one cancelled request must not cancel the read the others wait on.
        return await asyncio.shield(self._loading[1])

    async def _load(self, started: float) -> Snapshot:
        members = await self._redis.smembers(self._keys.proxies())
        names = sorted(m if isinstance(m, str) else m.decode() for m in members)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._keys.proxy(name))
            replies = await pipe.execute()
        parsed = {name: self._known(name, decode_hash(raw))
                  for name, raw in zip(names, replies, strict=True)}
        self._parsed = {name: known for name, known in parsed.items() if known is not None}
        snapshot = Snapshot(tuple(known[1] for known in self._parsed.values()
                                  if known[1] is not None))
        if self._snapshot is None or self._snapshot[0] < started:
            self._snapshot = (started, snapshot)
        return snapshot

    def _known(self, name: str, fields: Mapping[str, str]) -> tuple[str, KnownProxy | None] | None:
        """The entry's wire JSON and what it gives, parsed only when it changed."""
        props = present_props(name, fields)
        if props is None:
            return None
        last = self._parsed.get(name)
        if last is not None and last[0] == props:
            return last
        return props, known_proxy(name, props)

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

"""Proxy state cached in Redis, shared by every worker (and read by the gateway): one hash
per proxy, and the set of the names cached as present; core/proxy_entries.py has the format.
An entry's ``fetched_at`` is taken just before the fetch, so its age never understates its
data's.

The beat task keeps entries fresh with `ProxyCache.refresh_all`; `ProxyCache.get` refreshes a
stale entry on demand, so a stopped beat costs latency, never correctness. A proxy the server
no longer knows is kept as a ``vanished`` entry: a short negative cache, so a flood of jobs
for a deleted proxy does not turn into a flood of control-plane GETs.

Writes are last-writer-wins: a slow on-demand fetch may overwrite a slightly newer snapshot
from the beat. Both are recent, and the next refresh settles it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from core.contract import decode_hash
from core.keys import Keys
from core.proxy_entries import (
    STATE,
    VANISHED,
    decode_entry,
    present_fields,
    vanished_fields,
)
from modelproxy import Config, ModelProxy
from modelproxy.errors import ProxyNotFoundError, ResourceNotExistError
from modelproxy.models import ModelProxyProps, Status, model_name_for
from worker.ratelimit.policy import Limits, declared_limits

logger = logging.getLogger(__name__)

# A vanished proxy may be re-created at any moment: re-ask the server this often at least.
NEGATIVE_MAX_AGE_S = 5.0
MEMO_S = 1.0  # in-process reuse of a cached proxy (other processes see changes after this)
# Vanished entries expire after this, so names of deleted proxies do not pile up in Redis.
VANISHED_RETENTION_S = 3600


@dataclass(frozen=True, slots=True)
class CachedProxy:
    """A present proxy as cached; ``fetched_at`` is Redis server time in seconds."""

    name: str
    status: str | None
    model: str
    props: ModelProxyProps
    fetched_at: float
    declared: Limits  # see declared_limits()

    @classmethod
    def from_props(cls, name: str, props: ModelProxyProps, fetched_at: float) -> CachedProxy:
        # A plain props copy: a fetched ModelProxy also carries the Config it came with.
        plain = ModelProxyProps.model_validate(props.to_wire())
        config = plain.proxy_config
        declared = declared_limits(config.policies if config else None)
        return cls(name, plain.status, model_name_for(plain), plain, fetched_at, declared)

    def declared_limits(self) -> Limits:
        """The limits the proxy's own policies declare (``policy.declared_limits``), worked
        out once per cached copy: every job asks."""
        return self.declared

    def to_hash(self) -> dict[FieldT, EncodableT]:
        props = self.props.model_dump_json(by_alias=True, exclude_none=True)
        return _mapping(present_fields(props, self.status, self.model, self.fetched_at))


@dataclass(frozen=True, slots=True)
class RefreshReport:
    """What one `refresh_all` saw. ``vanished`` counts entries it newly marked vanished."""

    listed: int
    ready: int
    failed: int
    vanished: int


@dataclass(frozen=True, slots=True)
class _Entry:
    fetched_at: float
    proxy: CachedProxy | None  # None when vanished


def _parse_entry(name: str, fields: Mapping[str, str]) -> _Entry | None:
    """The stored entry, or None when absent or unreadable (then it is fetched again)."""
    try:
        stored = decode_entry(fields)
        if stored is None or stored.props is None:
            return None if stored is None else _Entry(stored.fetched_at, None)
        props = ModelProxyProps.model_validate_json(stored.props)
    except ValueError:  # pydantic's ValidationError is one
        logger.warning("unreadable cache entry for proxy %s; fetching it again", name)
        return None
    return _Entry(stored.fetched_at, CachedProxy.from_props(name, props, stored.fetched_at))


def _mapping(fields: dict[str, str]) -> dict[FieldT, EncodableT]:
    return dict(fields.items())


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _server_time_s(reply: tuple[int, int]) -> float:
    seconds, micros = reply
    return seconds + micros / 1_000_000


def _cacheable_name(proxy: ModelProxyProps) -> str | None:
    name = proxy.model_proxy_name
    # Keys refuses ':' in names (it would alias other keys); the service never sends one.
    if not name or ":" in name:
        logger.warning("skipping a listed proxy with an unusable name: %r", name)
        return None
    return name


def _report(proxies: Iterable[ModelProxyProps], vanished: int) -> RefreshReport:
    statuses = [p.status for p in proxies]
    return RefreshReport(
        listed=len(statuses),
        ready=sum(s == Status.READY.value for s in statuses),
        failed=sum(Status.is_failed(s) for s in statuses),
        vanished=vanished,
    )


class ProxyCache:
    """Redis-backed proxy cache shared by all workers; see the module docstring."""

    def __init__(self, redis: Redis, keys: Keys, config: Config, max_age_s: float) -> None:
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        self.redis = redis
        self.keys = keys
        self.config = config
        self.max_age_s = max_age_s
        self.negative_max_age_s = min(max_age_s, NEGATIVE_MAX_AGE_S)
        # One fetch per stale proxy per process, however many slots ask at once.
        self._inflight: dict[str, asyncio.Task[CachedProxy]] = {}
        # Hundreds of jobs a second ask for the same proxy: answer them from memory for a
        # moment instead of one Redis round trip each.
        self._memo: dict[str, tuple[float, CachedProxy]] = {}
        self._looking_up: dict[str, asyncio.Future[CachedProxy]] = {}
        self.memo_s = min(max_age_s, MEMO_S)

    # ---- one proxy ---------------------------------------------------------------------

    async def get(self, name: str) -> CachedProxy:
        """The proxy from the cache when fresh, else from the server (and cached).

        Raises `ProxyNotFoundError` when the server does not know it (cached briefly).
        """
        memo = self._memo.get(name)
        if memo is not None and time.monotonic() < memo[0]:
            return memo[1]
        # One lookup per name when the memo runs out, however many slots ask at that moment
        # (they all did their own Redis round trip and parse before).
        lookup = self._looking_up.get(name)
        if lookup is None:
            lookup = asyncio.ensure_future(self._remembered(name))
            self._looking_up[name] = lookup
            lookup.add_done_callback(partial(self._looked_up, name))
        return await asyncio.shield(lookup)

    async def _remembered(self, name: str) -> CachedProxy:
        proxy = await self._get_shared(name)
        self._memo[name] = (time.monotonic() + self.memo_s, proxy)
        return proxy

    def _looked_up(self, name: str, lookup: asyncio.Future[CachedProxy]) -> None:
        if self._looking_up.get(name) is lookup:
            del self._looking_up[name]
        if not lookup.cancelled():
            lookup.exception()  # retrieved: a lookup nobody waits for any more is quiet

    async def _get_shared(self, name: str) -> CachedProxy:
        key = self.keys.proxy(name)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(key)
        pipe.time()
        raw, time_reply = await pipe.execute()
        now_s = _server_time_s(time_reply)
        entry = _parse_entry(name, decode_hash(raw))
        if entry is None or not self._is_fresh(entry, now_s):
            return await self._fetch_once(name, now_s)
        if entry.proxy is None:
            raise ProxyNotFoundError(name)
        return entry.proxy

    async def invalidate(self, name: str) -> None:
        self._memo.pop(name, None)
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.proxy(name))
        pipe.srem(self.keys.proxies(), name)
        await pipe.execute()

    def _is_fresh(self, entry: _Entry, now_s: float) -> bool:
        max_age_s = self.max_age_s if entry.proxy is not None else self.negative_max_age_s
        # A negative age means the server clock went back: trust nothing then.
        return 0 <= now_s - entry.fetched_at < max_age_s

    async def _fetch_once(self, name: str, now_s: float) -> CachedProxy:
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.ensure_future(self._fetch(name, now_s))
            self._inflight[name] = task
            task.add_done_callback(lambda done: self._forget(name, done))
        # shield: one cancelled caller must not cancel the fetch the others wait on.
        return await asyncio.shield(task)

    def _forget(self, name: str, task: asyncio.Task[CachedProxy]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            task.exception()  # retrieved here, so a fetch nobody waits for any more is quiet

    async def _fetch(self, name: str, now_s: float) -> CachedProxy:
        try:
            proxy = await ModelProxy.get_by_name_async(name, config=self.config)
        except ResourceNotExistError as exc:
            await self._write([], [name], now_s)
            raise ProxyNotFoundError(name, request_id=exc.request_id) from None
        cached = CachedProxy.from_props(name, proxy, now_s)
        await self._write([cached], [], now_s)
        return cached

    # ---- all proxies -------------------------------------------------------------------

    async def refresh_all(self) -> RefreshReport:
        """List every proxy, rewrite all their entries, mark cached ones no longer listed."""
        self._memo.clear()
        now_s = _server_time_s(await self.redis.time())
        proxies = await ModelProxy.list_all_async(config=self.config)
        entries = [
            CachedProxy.from_props(name, proxy, now_s)
            for proxy in proxies
            if (name := _cacheable_name(proxy)) is not None
        ]
        gone, unindexed = await self._newly_vanished({e.name for e in entries})
        await self._write(entries, gone, now_s, unindexed)
        return _report(proxies, len(gone))

    async def _newly_vanished(self, listed: set[str]) -> tuple[list[str], list[str]]:
        """Of the names cached as present but no longer listed: those to mark vanished, and
        those whose entry is vanished or gone already (only to drop from the set)."""
        cached = await self.redis.smembers(self.keys.proxies())
        unlisted = sorted(name for name in map(_text, cached) if name not in listed)
        if not unlisted:
            return [], []
        pipe = self.redis.pipeline(transaction=False)
        for name in unlisted:
            pipe.hget(self.keys.proxy(name), STATE)
        states = await pipe.execute()
        present = {name for name, state in zip(unlisted, states, strict=True)
                   if state is not None and _text(state) != VANISHED}
        return sorted(present), [name for name in unlisted if name not in present]

    # ---- writes ------------------------------------------------------------------------

    async def _write(
        self, present: Iterable[CachedProxy], vanished: Iterable[str], now_s: float,
        unindexed: Iterable[str] = (),
    ) -> None:
        """Write present entries, vanished marks and the set of present names in one round
        trip; `unindexed`: names only to drop from the set."""
        index = self.keys.proxies()
        pipe = self.redis.pipeline(transaction=False)
        for entry in present:
            key = self.keys.proxy(entry.name)
            # Every field is rewritten, so no stale field survives; PERSIST undoes the
            # expiry of an entry that had vanished and is back.
            pipe.hset(key, mapping=entry.to_hash())
            pipe.persist(key)
            pipe.sadd(index, entry.name)
        for name in vanished:
            key = self.keys.proxy(name)
            pipe.hset(key, mapping=_mapping(vanished_fields(now_s)))
            pipe.expire(key, VANISHED_RETENTION_S)
            pipe.srem(index, name)
        for name in unindexed:
            pipe.srem(index, name)
        await pipe.execute()

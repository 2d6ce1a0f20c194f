"""The gateway's API keys, kept in Redis as SHA-256 digests: the key itself is shown once,
when made, and never stored. A key's id (`key_…`) names its owner: files and batches belong
to the key that made them.

Every gateway request looks its key up; a process may answer from memory for a few seconds
(`remember_s`) instead of asking Redis each time, so a key revoked elsewhere keeps working
that long in it. Only keys found are remembered: a new key works at once, and wrong keys
take no memory."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from core.keys import Keys

KEY_PREFIX = "sk-mpq-"
_ID_PREFIX = "key_"
REMEMBERED_MAX = 10_000  # keys remembered per process; past it, the expired are dropped


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: int
    hint: str  # the key's last four characters, to tell keys apart in a list


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    def __init__(self, redis: aioredis.Redis, keys: Keys, remember_s: float = 0.0) -> None:
        """`remember_s`: how long `owner` may answer for a key from memory (0: never)."""
        self._redis = redis
        self._keys = keys
        self.remember_s = remember_s
        # a key's digest -> (until when, on the monotonic clock; its id)
        self._remembered: dict[str, tuple[float, str]] = {}

    async def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key: its description, and the key itself (shown once, never stored)."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id=_ID_PREFIX + secrets.token_hex(8), name=name,
                     created_at=int(time.time()), hint=secret[-4:])
        described = json.dumps({"name": key.name, "created_at": key.created_at,
                                "hint": key.hint, "digest": digest(secret)})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.gateway_key(digest(secret)), key.id)
            pipe.hset(self._keys.gateway_keys(), key.id, described)
            await pipe.execute()
        return key, secret

    async def list(self) -> list[ApiKey]:
        raw = await self._redis.hgetall(self._keys.gateway_keys())
        found = [_described(_text(key_id), _text(value)) for key_id, value in raw.items()]
        return sorted(found, key=lambda key: (key.created_at, key.id))

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key by id; False when there is no such key."""
        raw = await self._redis.hget(self._keys.gateway_keys(), key_id)
        if raw is None:
            return False
        hashed = json.loads(_text(raw))["digest"]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.gateway_key(hashed))
            pipe.hdel(self._keys.gateway_keys(), key_id)
            await pipe.execute()
        self._remembered.pop(hashed, None)
        return True

    async def owner(self, secret: str) -> str | None:
        """The id of the key `secret`, or None for a wrong or revoked key (revoked in
        another process: within `remember_s`)."""
        hashed = digest(secret)
        asked = time.monotonic()
        remembered = self._remembered.get(hashed)
        if remembered is not None and asked < remembered[0]:
            return remembered[1]
        found = await self._redis.get(self._keys.gateway_key(hashed))
        if found is None:
            self._remembered.pop(hashed, None)
            return None
        key_id = _text(found)
        if self.remember_s > 0:
            self._remember(hashed, asked + self.remember_s, key_id)
        return key_id

    def _remember(self, hashed: str, until: float, key_id: str) -> None:
        if len(self._remembered) >= REMEMBERED_MAX:
            now = time.monotonic()
            self._remembered = {k: v for k, v in self._remembered.items() if v[0] > now}
            if len(self._remembered) >= REMEMBERED_MAX:
                self._remembered.clear()
        self._remembered[hashed] = (until, key_id)

    async def any(self) -> bool:
        return bool(await self._redis.hlen(self._keys.gateway_keys()))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _described(key_id: str, value: str) -> ApiKey:
    fields = json.loads(value)
    return ApiKey(id=key_id, name=fields["name"], created_at=int(fields["created_at"]),
                  hint=fields["hint"])

"""The gateway's API keys from synchronous code (the command line, the local stack): each
call opens a short-lived Redis connection on the portal loop and fails fast when Redis is
down. The keys themselves are `core.api_keys`; the gateway process reads the same ones."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from core.api_keys import ApiKey, ApiKeys
from core.keys import Keys
from core.redis_client import redis_client
from core.settings import Settings
from modelproxy.portal import run_sync
from producer.client import NoRedisError

T = TypeVar("T")


def with_api_keys(settings: Settings, action: Callable[[ApiKeys], Awaitable[T]]) -> T:
    url = settings.redis_url
    if not url:
        raise NoRedisError()

    async def run() -> T:
        redis = redis_client(url, retries=1)
        try:
            return await action(ApiKeys(redis, Keys(settings.key_prefix)))
        finally:
            await redis.aclose()

    return run_sync(run())


def create_key(settings: Settings, name: str) -> tuple[ApiKey, str]:
    """A new key: its description and the key itself (shown once, never stored)."""
    return with_api_keys(settings, lambda keys: keys.create(name))


def list_keys(settings: Settings) -> list[ApiKey]:
    return with_api_keys(settings, lambda keys: keys.list())


def revoke_key(settings: Settings, key_id: str) -> bool:
    """False when there is no such key."""
    return with_api_keys(settings, lambda keys: keys.revoke(key_id))

"""Fixtures for the unit tests that run the command line against a real server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from core.embedded_redis import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server(None) as url:
        yield url


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of one test; its keys are deleted at the end."""
    prefix = f"mpqcli-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.unlink(key)
    finally:
        client.close()

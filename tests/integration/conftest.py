"""Fixtures for integration tests: real server processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from worker.embedded_redis import redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """`REDIS_URL` when set (tests keep to their own key prefix), else an embedded Valkey
    server shared by the whole session."""
    with redis_server(os.environ.get("REDIS_URL") or None) as url:
        yield url

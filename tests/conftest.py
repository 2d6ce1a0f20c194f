"""Fixtures for every test: one event loop per session, its HTTP pools closed at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from modelproxy.aio_transport import close_http_pools


@pytest.fixture(scope="session", autouse=True)
async def _close_http_pool() -> AsyncIterator[None]:
    yield
    await close_http_pools()

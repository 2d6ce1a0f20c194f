"""Fixtures for every test: one event loop per session, its HTTP pools closed at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from modelproxy.aio_transport import close_data_sessions
from modelproxy.transport import close_shared_clients


@pytest.fixture(scope="session", autouse=True)
async def _close_http_pool() -> AsyncIterator[None]:
    yield
    await close_shared_clients()
    await close_data_sessions()

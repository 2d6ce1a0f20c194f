"""modelproxy.portal: a sync twin called on the portal loop itself raises at once instead of
waiting for itself forever; from anywhere else it still runs."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import pytest

from modelproxy import portal
from modelproxy.errors import ModelProxyError, PortalDeadlockError

pytestmark = pytest.mark.timeout(30)

WAIT_S = 5.0  # far more than any answer here takes; a deadlock never answers


@pytest.fixture(autouse=True)
def own_portal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A portal loop of the test's own: should a call deadlock, only this loop is stuck."""
    monkeypatch.setattr(portal, "_loop", None)
    monkeypatch.setattr(portal, "_pid", 0)
    yield
    loop = portal._loop
    if loop is None:
        return
    loop.call_soon_threadsafe(loop.stop)
    deadline = time.monotonic() + WAIT_S
    while loop.is_running() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not loop.is_running():
        loop.close()


async def one() -> int:
    return 1


async def numbers() -> AsyncIterator[int]:
    yield 1
    yield 2


def on_portal(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on the portal loop; its answer, or TimeoutError if it hangs."""
    return asyncio.run_coroutine_threadsafe(coro, portal._portal_loop()).result(WAIT_S)


def test_run_sync_on_the_portal_loop_raises() -> None:
    made: list[Coroutine[Any, Any, int]] = []

    async def sync_call_inside() -> int:
        made.append(one())
        return portal.run_sync(made[0])

    with pytest.raises(PortalDeadlockError, match=r"one\).*await the async twin"):
        on_portal(sync_call_inside())
    assert inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED  # no "never awaited"
    assert on_portal(one()) == 1  # the portal is still free


def test_iterate_sync_on_the_portal_loop_raises() -> None:
    async def sync_iteration_inside() -> list[int]:
        return list(portal.iterate_sync(numbers()))

    with pytest.raises(PortalDeadlockError, match=r"numbers\).*async for"):
        on_portal(sync_iteration_inside())


def test_the_error_fits_the_error_tree() -> None:
    assert issubclass(PortalDeadlockError, ModelProxyError)
    assert issubclass(PortalDeadlockError, RuntimeError)


def test_sync_calls_from_other_threads_and_loops_still_run() -> None:
    assert portal.run_sync(one()) == 1
    assert list(portal.iterate_sync(numbers())) == [1, 2]

    async def sync_call_on_another_loop() -> int:
        return portal.run_sync(one())  # blocks this loop a moment, but the portal answers

    answers: list[int] = []
    thread = threading.Thread(
        target=lambda: answers.append(asyncio.run(sync_call_on_another_loop())))
    thread.start()
    thread.join(WAIT_S)
    assert answers == [1]

"""One background event loop per process (the "portal"): sync twins run the async code
path on it, and so do Celery's worker threads, so they all share one connection pool
instead of opening a loop per call.

A sync twin called from code running on the portal loop itself (a coroutine, a callback)
would block that loop waiting for work queued on it: it raises `PortalDeadlockError`
instead, naming the async twin to await.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from modelproxy.aio_transport import close_http_pools
from modelproxy.errors import PortalDeadlockError

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = 0


def _refuse_on_portal(running: object) -> None:
    """Raise if this thread runs the portal loop; `running` names what was to be run."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop in this thread: it can wait for the portal
    if loop is not _loop:
        return
    name = getattr(running, "__qualname__", type(running).__qualname__)
    if isinstance(running, Coroutine):
        running.close()  # never to be awaited: no "was never awaited" warning
    raise PortalDeadlockError(
        f"a sync modelproxy call ({name}) was made from code running on the portal event "
        "loop, which would wait for itself forever: await the async twin (the `..._async` "
        "method, or `async for` over a stream) instead")


def _portal_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid  # noqa: PLW0603 - one loop per process, created on first use
    with _lock:
        # After a fork the parent's loop thread does not exist here: start a new one.
        if _loop is None or _loop.is_closed() or _pid != os.getpid():
            _pid = os.getpid()
            _loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_loop.run_forever, name="modelproxy-portal", daemon=True
            )
            thread.start()
            atexit.register(_shutdown, _loop)
        return _loop


def _shutdown(loop: asyncio.AbstractEventLoop) -> None:
    if loop.is_running():
        asyncio.run_coroutine_threadsafe(close_http_pools(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the portal loop and wait for its result; raises `PortalDeadlockError`
    on the portal loop itself."""
    _refuse_on_portal(coro)
    return asyncio.run_coroutine_threadsafe(coro, _portal_loop()).result()


def iterate_sync(iterator: AsyncIterator[T]) -> Iterator[T]:
    """Drive an async iterator from sync code, item by item; closes it if abandoned.
    Raises `PortalDeadlockError` at once on the portal loop itself."""
    _refuse_on_portal(iterator)
    return _iterate(iterator)


def _iterate(iterator: AsyncIterator[T]) -> Iterator[T]:
    loop = _portal_loop()
    try:
        while True:
            future = asyncio.run_coroutine_threadsafe(_next(iterator), loop)
            done, item = future.result()
            if done:
                return
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            asyncio.run_coroutine_threadsafe(aclose(), loop).result()


async def _next(iterator: AsyncIterator[T]) -> tuple[bool, Any]:
    try:
        return False, await anext(iterator)
    except StopAsyncIteration:
        return True, None

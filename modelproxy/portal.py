"""One background event loop per process (the "portal"): sync twins run the async code
path on it, and so do Celery's worker threads, so they all share one connection pool
instead of opening a loop per call."""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from modelproxy.transport import close_shared_clients

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid = 0


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
        asyncio.run_coroutine_threadsafe(close_shared_clients(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the portal loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, _portal_loop()).result()


def iterate_sync(iterator: AsyncIterator[T]) -> Iterator[T]:
    """Drive an async iterator from sync code, item by item; closes it if abandoned."""
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

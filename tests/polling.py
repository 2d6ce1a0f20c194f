"""Waiting in tests: poll a condition against a deadline, never a fixed sleep.

`wait_until` (sync) and `until` (async) call a predicate every `interval_s` until it returns
something truthy, and return that value; past `timeout_s` they raise an AssertionError that
says what was awaited (`what`: a text, or a callable giving one, e.g. a process's log) and
the predicate's last value. An exception from the predicate ends the wait at once (e.g. a
process that died). Importable from every test directory (`tests/` is on `sys.path`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL_S = 0.05
Description = str | Callable[[], str]


def _timed_out(what: Description, timeout_s: float, last: object) -> AssertionError:
    text = what() if callable(what) else what
    shown = repr(last)
    if len(shown) > 300:
        shown = shown[:300] + "…"
    return AssertionError(f"timed out after {timeout_s} s waiting for {text} (last: {shown})")


def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = INTERVAL_S,
               what: Description = "the condition") -> T:
    """Call `predicate` until it returns a truthy value (returned); AssertionError at the
    deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s, value)
        time.sleep(interval_s)


async def until(predicate: Callable[[], Awaitable[T] | T], timeout_s: float,
                interval_s: float = INTERVAL_S, what: Description = "the condition") -> T:
    """The async twin of `wait_until`: `predicate` may be sync or return an awaitable."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s, value)
        await asyncio.sleep(interval_s)

"""A Redis client that sends the commands issued in one event-loop iteration as one
pipeline ("auto-pipelining").

A worker's slots all share one event loop: hundreds of jobs claim, finish, renew and append
chunks at once, each command its own round trip. redis-py spends ~130 µs of CPU on one
command and ~20 µs on one more command in a pipeline, so coalescing cuts the worker's Redis
CPU several times over, and every caller still awaits its own reply. Commands from one
coroutine keep their order (each awaits the previous one); commands from different
coroutines were never ordered. Blocking commands go alone: they would hold up the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

_BLOCKING = frozenset({
    "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP",
    "WAIT", "WAITAOF",
})

# redis-py's own (untyped) command path, for what is not coalesced.
_execute_alone: Callable[..., Awaitable[Any]] = aioredis.Redis.execute_command

Queued = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


def _word(arg: Any) -> str:
    """A command's name or option as upper-case text (redis-py passes some as bytes)."""
    return (arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)).upper()


def _blocking(args: tuple[Any, ...]) -> bool:
    name = _word(args[0])
    if name in ("XREAD", "XREADGROUP"):
        # Options come before STREAMS; the keys and ids after it can be hundreds.
        for arg in args[1:]:
            option = _word(arg)
            if option in ("BLOCK", "STREAMS"):
                return option == "BLOCK"
        return False
    return name in _BLOCKING


def _copy(exc: BaseException) -> BaseException:
    """One exception per waiting caller (a shared one would collect every traceback)."""
    try:
        fresh = type(exc)(*exc.args)
    except Exception:  # an exception class with another constructor
        return exc
    fresh.__cause__ = exc.__cause__
    return fresh


class AutoPipelineRedis(aioredis.Redis):
    """`redis.asyncio.Redis` whose non-blocking commands are coalesced per loop iteration.
    Use it from one event loop (like any asyncio client)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued: list[Queued] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if _blocking(args):
            return await _execute_alone(self, *args, **options)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        if not self._queued:
            # Runs after every callback already ready: the whole iteration's commands.
            loop.call_soon(self._flush)
        self._queued.append((args, options, reply))
        return await reply

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        task = asyncio.ensure_future(self._send(queued))
        self._sending.add(task)  # the loop keeps only a weak reference to tasks
        task.add_done_callback(self._sending.discard)

    async def _send(self, queued: list[Queued]) -> None:
        try:
            replies = await self._replies(queued)
        except asyncio.CancelledError:
            for *_, waiter in queued:
                waiter.cancel()
            raise
        except Exception as exc:
            replies = [_copy(exc) for _ in queued]
        for (*_, waiter), reply in zip(queued, replies, strict=True):
            if waiter.done():  # its caller was cancelled
                continue
            if isinstance(reply, BaseException):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    async def _replies(self, queued: list[Queued]) -> list[Any]:
        """One reply per command, an error reply as its exception (as a pipeline does)."""
        if len(queued) == 1:  # a pipeline of one costs more than the command alone
            args, options, _ = queued[0]
            try:
                return [await _execute_alone(self, *args, **options)]
            except aioredis.ResponseError as exc:
                return [exc]
        async with self.pipeline(transaction=False) as pipe:
            for args, options, _ in queued:
                pipe.execute_command(*args, **options)
            return list(await pipe.execute(raise_on_error=False))

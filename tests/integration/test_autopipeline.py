"""The auto-pipelining Redis client (core/internals/autopipeline.py) on a real server: replies go
to their own callers, errors stay with the command that caused them, blocking commands do
not hold the rest up, and one loop iteration's commands share one connection."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from core.embedded_redis import free_port
from core.redis_client import redis_client


@pytest.fixture
async def prefix(any_redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test; its keys are deleted at the end."""
    name = f"mpqtest-autopipe-{uuid.uuid4().hex[:8]}:"
    yield name
    cleaner = aioredis.Redis.from_url(any_redis_url)
    async for key in cleaner.scan_iter(match=f"{name}*"):
        await cleaner.unlink(key)
    await cleaner.aclose()


async def test_concurrent_commands_get_their_own_replies(any_redis_url: str,
                                                         prefix: str) -> None:
    client = redis_client(any_redis_url)
    try:
        await asyncio.gather(*(client.set(f"{prefix}{i}", i) for i in range(500)))
        replies = await asyncio.gather(*(client.get(f"{prefix}{i}") for i in range(500)))
        counts = await asyncio.gather(*(client.incr(f"{prefix}n") for _ in range(200)))
    finally:
        await client.aclose()
    assert replies == [str(i) for i in range(500)]
    assert sorted(counts) == list(range(1, 201))


async def test_one_iterations_commands_share_one_connection(any_redis_url: str,
                                                            prefix: str) -> None:
    name = f"autopipe-{uuid.uuid4().hex[:8]}"
    client = redis_client(f"{any_redis_url}?client_name={name}")
    observer = aioredis.Redis.from_url(any_redis_url, decode_responses=True)
    try:
        await asyncio.gather(*(client.get(f"{prefix}{i}") for i in range(300)))
        connections = [c for c in await observer.client_list() if c["name"] == name]
    finally:
        await client.aclose()
        await observer.aclose()
    # Without coalescing, 300 concurrent commands open up to the pool's 64 connections.
    assert len(connections) == 1


async def test_an_error_reply_fails_only_its_own_command(any_redis_url: str,
                                                         prefix: str) -> None:
    client = redis_client(any_redis_url)
    try:
        await client.set(f"{prefix}text", "not a number")
        results = await asyncio.gather(
            client.incr(f"{prefix}text"), client.incr(f"{prefix}n"), client.get(f"{prefix}text"),
            return_exceptions=True)
        alone = await asyncio.gather(client.incr(f"{prefix}text"), return_exceptions=True)
    finally:
        await client.aclose()
    assert isinstance(results[0], ResponseError)
    assert results[1:] == [1, "not a number"]
    assert isinstance(alone[0], ResponseError)  # the single-command path too


async def test_scripts_load_themselves_through_it(any_redis_url: str, prefix: str) -> None:
    client = redis_client(any_redis_url)
    # A script unknown to the server (a fresh body): the first EVALSHA gets NOSCRIPT.
    script = client.register_script(f"-- {uuid.uuid4().hex}\nreturn ARGV[1] .. KEYS[1]")
    try:
        replies = await asyncio.gather(*(script(keys=[f"{prefix}k"], args=[str(i)])
                                         for i in range(20)))
    finally:
        await client.aclose()
    assert replies == [f"{i}{prefix}k" for i in range(20)]


@pytest.mark.parametrize("blocking", ["BLPOP", "XREAD BLOCK"])
async def test_a_blocking_command_does_not_hold_up_the_others(any_redis_url: str,
                                                              prefix: str,
                                                              blocking: str) -> None:
    client = redis_client(any_redis_url)
    try:
        started = time.monotonic()
        waiting = (client.blpop([f"{prefix}empty"], timeout=2) if blocking == "BLPOP"
                   else client.xread({f"{prefix}stream": "$"}, block=2000))
        # Both start in the same loop iteration: they must not share a pipeline (redis-py
        # passes XREAD's BLOCK as bytes, which once went unnoticed).
        blocked = asyncio.ensure_future(waiting)
        quick = asyncio.ensure_future(client.set(f"{prefix}k", "v"))
        assert await quick
        assert await client.get(f"{prefix}k") == "v"
        quick_s = time.monotonic() - started
        assert not await blocked
    finally:
        await client.aclose()
    assert quick_s < 1.0


async def test_a_cancelled_caller_leaves_the_others_their_replies(any_redis_url: str,
                                                                  prefix: str) -> None:
    client = redis_client(any_redis_url)
    try:
        gone = asyncio.ensure_future(client.set(f"{prefix}gone", "1"))
        kept = [asyncio.ensure_future(client.incr(f"{prefix}n")) for _ in range(3)]
        gone.cancel()
        counts = await asyncio.gather(*kept)
        after = await client.get(f"{prefix}n")
    finally:
        await client.aclose()
    assert sorted(counts) == [1, 2, 3]
    assert after == "3"


async def test_without_a_server_every_caller_gets_its_own_error() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0", retries=0)
    try:
        errors = await asyncio.gather(*(client.get("k") for _ in range(5)),
                                      return_exceptions=True)
    finally:
        await client.aclose()
    assert all(isinstance(error, RedisConnectionError) for error in errors)
    assert len({id(error) for error in errors}) == 5

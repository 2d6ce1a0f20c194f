"""The metrics hash stays bounded (worker/metrics.py): proxy labels come from user input, and
the hash expires once no worker writes to it. Against a real server, each test under its own
key prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from core.keys import Keys
from modelproxy.errors import ProxyNotFoundError, ServerError
from worker.metrics import (
    ATTEMPT_ERRORS,
    DEFAULT_MAX_PROXIES,
    OTHER_PROXIES,
    UNKNOWN_PROXY,
    MetricsRecorder,
    decode_field,
)

pytestmark = pytest.mark.timeout(60)

TTL_S = 3600


@pytest.fixture
async def key(client: aioredis.Redis) -> AsyncIterator[str]:
    metrics_key = Keys(f"mpqtest-{uuid.uuid4().hex}:").metrics()
    yield metrics_key
    await client.delete(metrics_key)


async def proxy_values(client: aioredis.Redis, key: str) -> dict[str, int]:
    """Count of each `proxy` label value, summed over the hash's fields."""
    totals: dict[str, int] = {}
    for field, value in (await client.hgetall(key)).items():
        decoded = decode_field(field.decode())
        assert decoded is not None
        proxy = decoded[1].get("proxy")
        if proxy is not None:
            totals[proxy] = totals.get(proxy, 0) + int(value)
    return totals


async def test_thousands_of_bogus_proxy_names_make_a_bounded_hash(
    client: aioredis.Redis, key: str
) -> None:
    recorder = MetricsRecorder(client, key, ttl_s=TTL_S)
    names = [f"bogus-{i}" for i in range(5000)]
    for name in names:  # plausible names of proxies that may not exist
        recorder.attempt_failed(name, ServerError("boom", status_code=500))
        recorder.stream_chunks(name, 1)
    for name in ("a/b", "two words", "x:y", "", "z" * 129, "\ufeffbom"):  # never a proxy
        recorder.tokens(name, {"prompt_tokens": 1})
    for name in [*names[:50], "never-created"]:  # the server said: no such proxy
        recorder.attempt_failed(name, ProxyNotFoundError(name))
    await recorder.aclose()

    totals = await proxy_values(client, key)
    kept = set(names[:DEFAULT_MAX_PROXIES])
    assert set(totals) == kept | {OTHER_PROXIES, UNKNOWN_PROXY}
    assert await client.hlen(key) == 2 * (DEFAULT_MAX_PROXIES + 2)  # two metrics each
    # Nothing is lost, only pooled: 2 counts per name, 1 per invalid name or missing proxy.
    assert totals[OTHER_PROXIES] == 2 * (len(names) - DEFAULT_MAX_PROXIES)
    assert totals[UNKNOWN_PROXY] == 6 + 51
    assert all(totals[name] == 2 for name in kept)


async def test_a_name_kept_once_stays_its_own_label(client: aioredis.Redis, key: str) -> None:
    recorder = MetricsRecorder(client, key, max_proxies=1)
    assert recorder.proxy_label("p1") == "p1"
    assert recorder.proxy_label("p2") == OTHER_PROXIES
    assert recorder.proxy_label("p1") == "p1"
    assert recorder.proxy_label(OTHER_PROXIES) == OTHER_PROXIES  # a bucket stays itself
    recorder.attempt_failed("p1", ProxyNotFoundError("p1"))  # deleted since
    await recorder.aclose()
    [field] = await client.hkeys(key)
    assert decode_field(field.decode()) == (
        ATTEMPT_ERRORS, {"proxy": UNKNOWN_PROXY, "error": "ProxyNotFoundError"})


async def test_every_flush_renews_the_ttl(client: aioredis.Redis, key: str) -> None:
    recorder = MetricsRecorder(client, key, ttl_s=TTL_S)
    recorder.stream_chunks("p1", 3)
    await recorder.flush()
    assert 0 < await client.ttl(key) <= TTL_S

    await client.expire(key, 5)
    recorder.stream_chunks("p1", 1)
    await recorder.aclose()

    assert TTL_S - 60 < await client.ttl(key) <= TTL_S
    assert await proxy_values(client, key) == {"p1": 4}

"""ProxyCache and the locked refresh against a real Redis-protocol server and the emulator.

Each test starts its own emulator, works under its own random key prefix and deletes only
those keys, so a shared Redis is never flushed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator

import httpx
import pytest
from polling import until
from redis.asyncio import Redis

from core.contract import decode_hash
from core.keys import Keys
from emulator.control_routes import BASE_PATH
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from emulator.state import FAIL_CREATE_MARKER
from modelproxy import (
    Config,
    ModelProxy,
    ModelProxyCreateInput,
    ModelProxyUpdateInput,
    ProxyConfig,
    ProxyConfigEndpoint,
    ProxyConfigPolicies,
    ProxyNotFoundError,
)
from modelproxy.models import ModelProxyProps
from worker.proxy_cache import (
    VANISHED_RETENTION_S,
    CachedProxy,
    ProxyCache,
    RefreshReport,
)
from worker.ratelimit.policy import Limits
from worker.refresh import refresh_with_lock

GET_ROUTE = f"GET {BASE_PATH}/{{modelProxyName}}"
LIST_ROUTE = f"GET {BASE_PATH}"
MAX_AGE_S = 60.0
LOCK_TTL_S = 30.0


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0, update_delay_s=0, delete_delay_s=0)
    with EmulatorServer(settings=settings) as server:
        yield server


@pytest.fixture
def config(emulator: EmulatorServer) -> Config:
    return Config(control_endpoint=emulator.url, data_endpoint=emulator.url, timeout=10)


@pytest.fixture
def cache(client: Redis, keys: Keys, config: Config) -> ProxyCache:
    return ProxyCache(client, keys, config, max_age_s=MAX_AGE_S)


def unique(prefix: str = "pc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create(
    config: Config,
    name: str,
    description: str = "",
    policies: ProxyConfigPolicies | None = None,
) -> None:
    endpoint = ProxyConfigEndpoint(model_names=["qwen-max"], model_service_name="svc")
    spec = ModelProxyCreateInput(
        model_proxy_name=name,
        description=description or None,
        proxy_config=ProxyConfig(endpoints=[endpoint], policies=policies),
    )
    await ModelProxy.create_async(spec, config=config)


async def requests_on(emulator: EmulatorServer, route: str) -> int:
    async with httpx.AsyncClient(base_url=emulator.url, timeout=10) as http:
        response = await http.get("/_emulator/stats")
    response.raise_for_status()
    by_status: dict[str, int] = response.json()["by_route"].get(route, {})
    return sum(by_status.values())


async def stored(client: Redis, key: str) -> dict[str, str]:
    return decode_hash(await client.hgetall(key))


# ---------------------------------------------------------------- get


async def test_get_fetches_once_then_serves_from_cache(
    cache: ProxyCache, client: Redis, keys: Keys, config: Config, emulator: EmulatorServer
) -> None:
    name = unique()
    await create(config, name)

    first = await cache.get(name)
    second = await cache.get(name)

    assert await requests_on(emulator, GET_ROUTE) == 1
    assert first == second
    assert (first.name, first.status, first.model) == (name, "READY", "qwen-max")
    entry = await stored(client, keys.proxy(name))
    assert entry["state"] == "present"
    assert (entry["status"], entry["model"]) == ("READY", "qwen-max")
    assert json.loads(entry["props"])["modelProxyName"] == name
    seconds, micros = await client.time()
    assert 0 <= seconds + micros / 1e6 - float(entry["fetched_at"]) < 5


async def test_stale_entry_is_refreshed_on_demand(
    client: Redis, keys: Keys, config: Config, emulator: EmulatorServer
) -> None:
    cache = ProxyCache(client, keys, config, max_age_s=0.5)
    name = unique()
    await create(config, name, description="before")
    await cache.get(name)
    update = ModelProxyUpdateInput(description="after")
    await ModelProxy.update_by_name_async(name, update, config=config)

    still_cached = await cache.get(name)
    await asyncio.sleep(0.6)  # on purpose: the entry ages past its 0.5 s max age
    refreshed = await cache.get(name)

    assert still_cached.props.description == "before"
    assert refreshed.props.description == "after"
    assert refreshed.fetched_at > still_cached.fetched_at
    assert await requests_on(emulator, GET_ROUTE) == 2


@pytest.fixture
def slow_control_get(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Control-plane GETs take 0.2 s more, so concurrent callers overlap for sure. Returns
    the names whose GET has started."""
    original = ModelProxy.get_by_name_async
    started: list[str] = []

    async def slow(name: str, config: Config | None = None) -> ModelProxy:
        started.append(name)
        await asyncio.sleep(0.2)
        return await original(name, config=config)

    monkeypatch.setattr(ModelProxy, "get_by_name_async", staticmethod(slow))
    return started


@pytest.mark.usefixtures("slow_control_get")
async def test_concurrent_gets_of_a_stale_entry_fetch_once(
    cache: ProxyCache, config: Config, emulator: EmulatorServer
) -> None:
    name = unique()
    await create(config, name)

    results = await asyncio.gather(*(cache.get(name) for _ in range(20)))

    assert {r.name for r in results} == {name}
    assert await requests_on(emulator, GET_ROUTE) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(
    cache: ProxyCache, config: Config, emulator: EmulatorServer, slow_control_get: list[str]
) -> None:
    name = unique()
    await create(config, name)
    impatient = asyncio.ensure_future(cache.get(name))
    patient = asyncio.ensure_future(cache.get(name))
    await until(lambda: name in slow_control_get, 5, 0.005, what="the shared fetch to start")

    impatient.cancel()

    assert (await patient).status == "READY"
    assert impatient.cancelled()
    assert await requests_on(emulator, GET_ROUTE) == 1


async def test_unknown_proxy_raises_and_is_negatively_cached(
    cache: ProxyCache, client: Redis, keys: Keys, emulator: EmulatorServer
) -> None:
    name = unique("missing")

    for _ in range(3):
        with pytest.raises(ProxyNotFoundError) as caught:
            await cache.get(name)
        assert (caught.value.name, str(caught.value)) == (name, f'proxy "{name}" does not exist')
        assert not caught.value.retryable

    assert await requests_on(emulator, GET_ROUTE) == 1
    assert (await stored(client, keys.proxy(name)))["state"] == "vanished"
    assert 0 < await client.ttl(keys.proxy(name)) <= VANISHED_RETENTION_S


async def vanished_then_created(client: Redis, keys: Keys, config: Config,
                                ) -> tuple[ProxyCache, str]:
    """A cache (0.3 s max age) that found a proxy missing, and that proxy created since, its
    negative entry aged past the max age."""
    cache = ProxyCache(client, keys, config, max_age_s=0.3)
    name = unique()
    with pytest.raises(ProxyNotFoundError):
        await cache.get(name)
    await create(config, name)
    await asyncio.sleep(0.4)  # on purpose: the negative entry ages past its 0.3 s max age
    return cache, name


async def test_negative_cache_is_short(
    client: Redis, keys: Keys, config: Config, emulator: EmulatorServer
) -> None:
    cache, name = await vanished_then_created(client, keys, config)

    found = await cache.get(name)

    assert found.status == "READY"
    assert await client.ttl(keys.proxy(name)) == -1  # back to a lasting entry


async def test_deleted_proxy_raises_after_invalidate(
    cache: ProxyCache, config: Config, client: Redis, keys: Keys
) -> None:
    name = unique()
    await create(config, name)
    await cache.get(name)
    await ModelProxy.delete_by_name_async(name, config=config)

    await cache.invalidate(name)
    assert not await client.exists(keys.proxy(name))
    with pytest.raises(ProxyNotFoundError):
        await cache.get(name)


async def test_unreadable_entry_is_fetched_again(
    cache: ProxyCache, client: Redis, keys: Keys, config: Config
) -> None:
    name = unique()
    await create(config, name)
    await client.hset(keys.proxy(name), mapping={"state": "present", "fetched_at": "soon"})

    assert (await cache.get(name)).status == "READY"


# ---------------------------------------------------------------- declared limits


async def test_declared_limits_come_from_the_proxy_policies(
    cache: ProxyCache, config: Config
) -> None:
    name = unique()
    policies = ProxyConfigPolicies.model_validate(
        {
            "concurrencyLimit": 3,
            "tokenRateLimiter": {"tpm": 1000, "tph": 50_000, "tpd": 900_000},
            "requestRateLimiter": {"rpm": 60},
        }
    )
    await create(config, name, policies=policies)

    fetched = await cache.get(name)
    from_cache = await cache.get(name)

    want = Limits(requests_per_minute=60, tokens_per_minute=1000, tokens_per_hour=50_000,
                  tokens_per_day=900_000, max_concurrency=3)
    assert fetched.declared_limits() == want
    assert from_cache.declared_limits() == want


@pytest.mark.parametrize(
    "policies",
    [
        None,
        {},
        {"concurrencyLimit": 0, "tokenRateLimiter": {"tpm": 0, "tps": 0}},
        {"requestRateLimiter": {"rpm": -5}},
        {"requestRateLimiter": {"rpm": True}},
        {"requestRateLimiter": "60"},
    ],
)
def test_zero_negative_or_missing_limits_mean_none(policies: object) -> None:
    wire = {"modelProxyName": "p", "proxyConfig": {"policies": policies}}
    proxy = CachedProxy.from_props("p", ModelProxyProps.model_validate(wire), 0.0)

    assert proxy.declared_limits() == Limits()


def test_token_rate_per_second_is_read() -> None:
    wire = {"proxyConfig": {"policies": {"tokenRateLimiter": {"tps": 50}}}}
    proxy = CachedProxy.from_props("p", ModelProxyProps.model_validate(wire), 0.0)

    assert proxy.declared_limits() == Limits(tokens_per_second=50)


def test_max_age_must_be_positive(client: Redis, keys: Keys, config: Config) -> None:
    with pytest.raises(ValueError, match="max_age_s"):
        ProxyCache(client, keys, config, max_age_s=0)


# ---------------------------------------------------------------- refresh_all


async def test_refresh_all_writes_marks_vanished_and_counts_failed(
    cache: ProxyCache, client: Redis, keys: Keys, config: Config, emulator: EmulatorServer
) -> None:
    ready, failing, doomed = unique("ready"), unique("failing"), unique("doomed")
    await create(config, ready)
    await create(config, failing, description=f"please {FAIL_CREATE_MARKER}")
    await create(config, doomed)
    await cache.get(doomed)
    await ModelProxy.delete_by_name_async(doomed, config=config)
    stray = f"{keys.proxy(ready)}:stray"
    await client.set(stray, "1")  # not a proxy's hash: left alone

    report = await cache.refresh_all()

    assert report == RefreshReport(listed=2, ready=1, failed=1, vanished=1)
    assert (await stored(client, keys.proxy(failing)))["status"] == "CREATE_FAILED"
    assert (await cache.get(ready)).status == "READY"
    with pytest.raises(ProxyNotFoundError):
        await cache.get(doomed)
    assert await requests_on(emulator, GET_ROUTE) == 1  # only the get before the delete
    assert await client.get(stray) == b"1"


async def test_refresh_all_marks_a_vanished_proxy_once(
    cache: ProxyCache, client: Redis, keys: Keys, config: Config
) -> None:
    name = unique()
    await create(config, name)
    await cache.refresh_all()
    await ModelProxy.delete_by_name_async(name, config=config)

    first = await cache.refresh_all()
    ttl_s = await client.ttl(keys.proxy(name))
    second = await cache.refresh_all()

    assert (first.vanished, second.vanished) == (1, 0)
    assert 0 < ttl_s <= VANISHED_RETENTION_S
    assert not await client.sismember(keys.proxies(), name)


async def test_refresh_all_brings_a_recreated_proxy_back(
    cache: ProxyCache, client: Redis, keys: Keys, config: Config
) -> None:
    name = unique()
    with pytest.raises(ProxyNotFoundError):
        await cache.get(name)
    await create(config, name)

    report = await cache.refresh_all()

    assert (report.listed, report.vanished) == (1, 0)
    assert (await stored(client, keys.proxy(name)))["state"] == "present"
    assert await client.ttl(keys.proxy(name)) == -1
    assert (await cache.get(name)).status == "READY"


# ---------------------------------------------------------------- the set of present names


async def listed(client: Redis, keys: Keys) -> set[str]:
    return {member.decode() for member in await client.smembers(keys.proxies())}


async def test_the_set_lists_the_proxies_cached_as_present(
    cache: ProxyCache, client: Redis, keys: Keys, config: Config
) -> None:
    fetched, listed_only, missing = unique(), unique(), unique("missing")
    await create(config, fetched)
    await cache.get(fetched)
    assert await listed(client, keys) == {fetched}

    with pytest.raises(ProxyNotFoundError):
        await cache.get(missing)  # cached as vanished: not listed
    await create(config, listed_only)
    await cache.refresh_all()
    assert await listed(client, keys) == {fetched, listed_only}

    await cache.invalidate(fetched)
    assert await listed(client, keys) == {listed_only}


async def test_a_vanished_proxy_back_is_listed_again(
    client: Redis, keys: Keys, config: Config
) -> None:
    cache, name = await vanished_then_created(client, keys, config)

    await cache.get(name)

    assert await listed(client, keys) == {name}


async def test_refresh_all_drops_listed_names_whose_entry_is_gone(
    cache: ProxyCache, client: Redis, keys: Keys, config: Config
) -> None:
    kept = unique()
    await create(config, kept)
    await client.sadd(keys.proxies(), "gone-entry")

    report = await cache.refresh_all()

    assert report.vanished == 0
    assert await listed(client, keys) == {kept}


# ---------------------------------------------------------------- refresh_with_lock


class SlowCache(ProxyCache):
    """Holds the lock long enough for a second refresher to find it taken."""

    delay_s = 0.3

    async def refresh_all(self) -> RefreshReport:
        await asyncio.sleep(self.delay_s)
        return await super().refresh_all()


async def test_two_concurrent_refreshes_run_exactly_once(
    client: Redis, keys: Keys, config: Config, emulator: EmulatorServer
) -> None:
    cache = SlowCache(client, keys, config, max_age_s=MAX_AGE_S)
    await create(config, unique())

    results = await asyncio.gather(
        refresh_with_lock(client, keys, cache, LOCK_TTL_S),
        refresh_with_lock(client, keys, cache, LOCK_TTL_S),
    )

    reports = [r for r in results if r is not None]
    assert len(reports) == 1
    assert reports[0].listed == 1
    assert await requests_on(emulator, LIST_ROUTE) == 1
    assert not await client.exists(keys.lock("refresh"))  # released
    assert await refresh_with_lock(client, keys, cache, LOCK_TTL_S) is not None


async def test_refresh_is_skipped_while_another_holds_the_lock(
    cache: ProxyCache, client: Redis, keys: Keys, emulator: EmulatorServer
) -> None:
    await client.set(keys.lock("refresh"), "someone-else", px=10_000)

    assert await refresh_with_lock(client, keys, cache, LOCK_TTL_S) is None
    assert await requests_on(emulator, LIST_ROUTE) == 0
    assert await client.get(keys.lock("refresh")) == b"someone-else"


async def test_expired_lock_is_not_released_from_under_its_new_owner(
    client: Redis, keys: Keys, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    cache = SlowCache(client, keys, config, max_age_s=MAX_AGE_S)
    lock_key = keys.lock("refresh")

    async def take_over() -> None:
        await asyncio.sleep(0.15)  # past the 0.1 s TTL, inside the 0.3 s refresh
        assert await client.set(lock_key, "successor", nx=True, px=10_000)

    with caplog.at_level(logging.WARNING, logger="worker.refresh"):
        report, _ = await asyncio.gather(
            refresh_with_lock(client, keys, cache, lock_ttl_s=0.1), take_over()
        )

    assert report is not None
    assert await client.get(lock_key) == b"successor"
    assert "outlived" in caplog.text


async def test_refresh_logs_one_info_line(
    cache: ProxyCache, client: Redis, keys: Keys, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    await create(config, unique())

    with caplog.at_level(logging.INFO, logger="worker.refresh"):
        await refresh_with_lock(client, keys, cache, LOCK_TTL_S)

    lines = [r for r in caplog.records if r.name == "worker.refresh"]
    assert len(lines) == 1
    assert "listed=1 ready=1 failed=0 vanished=0" in lines[0].getMessage()

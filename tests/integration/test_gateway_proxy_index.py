"""What the gateway routes by, and how long it trusts a key, through a real gateway, worker
and emulator: the proxies the workers cache are listed in the proxy cache's set, which the
gateway reads (a vanished proxy is not routed to, a listed name whose entry is gone is
skipped), and a revoked key stops working within the time the gateway remembers keys."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_stack import GatewayStack, create_key, gateway_stack
from polling import until, wait_until
from redis.asyncio import Redis

from core.api_keys import ApiKeys
from core.contract import JobKind
from core.keys import Keys
from core.proxy_entries import present_fields
from core.redis_client import redis_client
from emulator.server import EmulatorServer
from gateway.auth import KEY_REMEMBER_S
from gateway.proxy_directory import ProxyDirectory
from modelproxy import Config, ModelProxy
from modelproxy.portal import run_sync
from producer.client import AsyncClient

MODEL = "gw-index-model"


@pytest.fixture(scope="module")
def gw(redis_url: str, emulator: EmulatorServer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    with gateway_stack(redis_url, emulator.url, tmp_path_factory.mktemp("gwindex")) as stack:
        try:
            yield stack
        finally:
            run_sync(stack.stack.redis.aclose())


def listed(gw: GatewayStack) -> set[str]:
    keys = Keys(gw.stack.settings.key_prefix)
    return set(run_sync(gw.stack.redis.smembers(keys.proxies())))


def chat(client: openai.OpenAI, model: str) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello"}])


def refresh_cache(gw: GatewayStack) -> None:
    async def refresh() -> None:
        async with AsyncClient(gw.stack.settings) as client:
            await (await client.submit(JobKind.MGMT_REFRESH, "*", {})).result(timeout=30)

    run_sync(refresh())


def test_a_proxy_a_worker_cached_is_listed_and_routed_to(gw: GatewayStack) -> None:
    name = gw.add_proxy([MODEL])
    assert name in listed(gw)
    with gw.openai() as client:
        raw = chat(client, MODEL)
    record = run_sync(gw.stack.store.load(raw.headers["x-request-id"]))
    assert record is not None and record.proxy == name
    assert raw.parse().choices[0].message.content


def test_a_vanished_proxy_is_not_routed_to(gw: GatewayStack) -> None:
    model = f"gw-doomed-{uuid.uuid4().hex[:6]}"
    name = gw.add_proxy([model])
    with gw.openai() as client:
        assert chat(client, model).parse().choices[0].message.content
        config = Config(control_endpoint=gw.stack.emulator_url,
                        data_endpoint=gw.stack.emulator_url)
        run_sync(ModelProxy.delete_by_name_async(name, config=config))

        def vanished() -> bool:
            refresh_cache(gw)  # the worker marks it vanished once the server has deleted it
            return name not in listed(gw)

        wait_until(vanished, 10, 0.1, what="the deleted proxy to vanish from the cache")

        def refused() -> bool:
            try:
                chat(client, model)
            except openai.APIStatusError as exc:  # until the gateway reads the cache again,
                return exc.code == "model_not_found"  # the worker refuses the job (502)
            return False

        wait_until(refused, 10, 0.2, what="the vanished proxy's model to be unknown")


def test_a_listed_name_whose_entry_is_gone_is_skipped(gw: GatewayStack) -> None:
    keys = Keys(gw.stack.settings.key_prefix)
    ghost = f"gw-ghost-{uuid.uuid4().hex[:6]}"
    run_sync(gw.stack.redis.sadd(keys.proxies(), ghost))
    kept = gw.add_proxy(["gw-kept-model"])
    with gw.openai() as client:
        # A model the gateway has not seen: it reads the cache again, ghost name and all.
        assert chat(client, "gw-kept-model").parse().choices[0].message.content
        owners = {model.owned_by for model in client.models.list().data}
        assert kept in owners and ghost not in owners


def test_a_revoked_key_stops_working_within_the_time_keys_are_remembered(
        gw: GatewayStack) -> None:
    secret = create_key(gw.stack, "short-lived")
    models = f"{gw.base_url}/models"
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(models, headers=headers).status_code == 200

    async def revoke() -> None:
        keys = ApiKeys(gw.stack.redis, Keys(gw.stack.settings.key_prefix))
        key_id = next(key.id for key in await keys.list() if key.name == "short-lived")
        assert await keys.revoke(key_id)

    run_sync(revoke())
    revoked_at = time.monotonic()
    wait_until(lambda: httpx.get(models, headers=headers).status_code == 401,
               KEY_REMEMBER_S + 2, 0.1, what="the revoked key to be refused")
    assert time.monotonic() - revoked_at <= KEY_REMEMBER_S + 1


# ---- the directory and the key memory themselves, on a Redis server -----------------------

async def cache_proxy(redis: Redis, keys: Keys, name: str, model: str) -> None:
    """A present entry and its name in the set, as a worker writes them."""
    props = json.dumps({"modelProxyName": name, "status": "READY",
                        "proxyConfig": {"endpoints": [{"modelNames": [model]}]}})
    await redis.hset(keys.proxy(name), mapping=dict(present_fields(props, "READY", model, 1.0)))
    await redis.sadd(keys.proxies(), name)


async def test_requests_route_by_the_last_background_read(redis_url: str, keys: Keys) -> None:
    redis = redis_client(redis_url)
    directory = ProxyDirectory(redis, keys, reload_s=0.05)
    await cache_proxy(redis, keys, "p1", "m1")
    reader = asyncio.create_task(directory.run())
    try:
        assert (await directory.snapshot()).serving("m1") == ["p1"]  # the first read
        await cache_proxy(redis, keys, "p2", "m2")
        await until(lambda: directory_serves(directory, "m2"), 5, 0.02,
                    what="a background read to find the new proxy")
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    await redis.delete(keys.proxy("p1"), keys.proxy("p2"), keys.proxies())

    kept = await directory.snapshot()  # no read on a request's path: the last one stands
    fresh = await directory.snapshot(since=time.monotonic())  # a miss looks again
    await redis.aclose()
    assert (kept.serving("m1"), kept.serving("m2")) == (["p1"], ["p2"])
    assert fresh.proxies == ()


async def directory_serves(directory: ProxyDirectory, model: str) -> bool:
    return bool((await directory.snapshot()).serving(model))



REMEMBER_S = 0.3


async def test_a_key_revoked_elsewhere_is_answered_from_memory_until_it_is_forgotten(
        client: Redis, keys: Keys) -> None:
    gateway = ApiKeys(client, keys, remember_s=REMEMBER_S)
    elsewhere = ApiKeys(client, keys)
    made, secret = await elsewhere.create("k")
    assert await gateway.owner(secret) == made.id

    assert await elsewhere.revoke(made.id)
    assert await gateway.owner(secret) == made.id  # remembered
    await asyncio.sleep(REMEMBER_S)  # on purpose: the memory of the key runs out
    assert await gateway.owner(secret) is None


async def test_a_revoke_in_the_same_process_ends_the_key_at_once(client: Redis,
                                                                  keys: Keys) -> None:
    api_keys = ApiKeys(client, keys, remember_s=60)
    made, secret = await api_keys.create("k")
    assert await api_keys.owner(secret) == made.id
    assert await api_keys.revoke(made.id)
    assert await api_keys.owner(secret) is None


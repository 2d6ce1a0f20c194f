"""`mpq demo`: the whole path on a machine with nothing configured.

Starts (or uses) a Redis-compatible server and a ModelProxy service, creates a proxy, waits
for READY, runs a non-streamed and a streamed completion, and stops everything it started.
"""

from __future__ import annotations

import time
import uuid

import redis
from rich.console import Console

from modelproxy import (
    Config,
    ModelProxy,
    ModelProxyCreateInput,
    ProxyConfig,
    ProxyConfigEndpoint,
    ProxyConfigPolicies,
    ProxyConfigTokenRateLimiter,
)
from modelproxy.emulator.local import modelproxy_endpoint, uses_real_service
from modelproxy.emulator.settings import EmulatorSettings
from worker.embedded_redis import redis_server

DEMO_MODEL = "demo-model"
# Visible streaming on the emulator: 20 ms per token.
DEMO_EMULATOR = EmulatorSettings(
    create_delay_s=1.0, delete_delay_s=0.5, ttft_s=0.1, tpot_s=0.02, default_completion_tokens=40
)


def demo_proxy_input(name: str) -> ModelProxyCreateInput:
    return ModelProxyCreateInput(
        model_proxy_name=name,
        description="created by mpq demo",
        proxy_config=ProxyConfig(
            endpoints=[ProxyConfigEndpoint(model_names=[DEMO_MODEL], model_service_name="demo")],
            policies=ProxyConfigPolicies(
                concurrency_limit=64,
                token_rate_limiter=ProxyConfigTokenRateLimiter(tpm=600_000),
            ),
        ),
    )


def run_demo(console: Console, redis_url: str | None, config: Config) -> None:
    started = time.monotonic()
    with redis_server(redis_url) as url, modelproxy_endpoint(config, DEMO_EMULATOR) as cfg:
        client = redis.Redis.from_url(url)
        try:
            client.ping()
        finally:
            client.close()
        where = "AgentRun" if uses_real_service(config) else "emulator"
        console.print(f"[bold]Redis[/] {url}   [bold]ModelProxy[/] {where} "
                      f"{cfg.get_control_endpoint()}")
        _proxy_round_trip(console, cfg)
    console.print(f"[green]demo finished[/] in {time.monotonic() - started:.1f} s")


def _proxy_round_trip(console: Console, config: Config) -> None:
    name = f"mpq-demo-{uuid.uuid4().hex[:8]}"
    proxy = ModelProxy.create(demo_proxy_input(name), config=config)
    console.print(f"created proxy [bold]{name}[/]: {proxy.status}")
    try:
        proxy.wait_until_ready_or_failed(interval_seconds=0.2, timeout_seconds=120)
        console.print(f"proxy {name} is {proxy.status}")
        if proxy.status != "READY":
            raise RuntimeError(f"proxy ended {proxy.status}: {proxy.status_reason}")
        _completions(console, proxy)
    finally:
        proxy.delete()
        console.print(f"deleting proxy {name}: {proxy.status}")


def _completions(console: Console, proxy: ModelProxy) -> None:
    messages = [{"role": "user", "content": "Say hello to the mpq demo."}]
    reply = proxy.completions(messages)
    usage = reply.usage
    console.print(f"[bold]non-streamed[/] ({reply.finish_reason}): {reply.text}")
    if usage is not None:
        console.print(f"  usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} "
                      f"completion = {usage.total_tokens} tokens")
    console.print("[bold]streamed[/]: ", end="")
    for count, chunk in enumerate(proxy.completions(messages, stream=True), start=1):
        console.print(chunk.text, end="", markup=False, highlight=False)
        if chunk.usage is not None:
            console.print(f"\n  {count} chunks, usage {chunk.usage.total_tokens} tokens")

"""A real gateway for tests: the emulator, a worker process and one or more gateway processes
(`python -m gateway`) on one key prefix, an API key, and official `openai` clients."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import redis
from polling import wait_until
from stack import Stack, unique
from workers import WorkerProcess, worker_env

from core.api_keys import ApiKeys
from core.contract import JobKind
from core.keys import Keys
from core.redis_client import redis_client
from gateway.server import READY_LINE
from modelproxy import (
    Config,
    ModelProxy,
    ModelProxyCreateInput,
    ProxyConfig,
    ProxyConfigEndpoint,
)
from modelproxy.portal import run_sync
from producer.client import AsyncClient
from producer.local_stack import stop_processes

STOP_TIMEOUT_S = 10.0


class GatewayProcess:
    """`python -m gateway --port 0`; `base_url` is read from the line it prints when ready."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.base_url = ""
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 30) -> GatewayProcess:
        command = [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", "0",
                   *self.args]
        self.process = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        process = self.process
        found: list[str] = []

        def read_ready_line() -> None:
            assert process.stdout is not None
            with process.stdout, self.log_path.open("a") as log:
                for line in process.stdout:
                    if line.startswith(READY_LINE):
                        found.append(line.split()[-1])
                    log.write(line)
                    log.flush()

        threading.Thread(target=read_ready_line, daemon=True).start()

        def ready() -> bool:
            if process.poll() is not None and not found:
                raise RuntimeError(f"gateway exited ({process.returncode}):\n{self.log()}")
            return bool(found)

        wait_until(ready, timeout_s, 0.05, what=lambda: f"the gateway to start:\n{self.log()}")
        self.base_url = found[0]
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_processes([self.process], STOP_TIMEOUT_S)


def gateway_env(stack: Stack, **settings: Any) -> dict[str, str]:
    env = worker_env(stack.settings, stack.emulator_url)
    env.update({f"MPQ_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def create_key(stack: Stack, name: str = "test") -> str:
    """A new API key of this stack's gateway (the key itself)."""

    async def create() -> str:
        client = redis_client(stack.settings.redis_url or "")
        try:
            _, secret = await ApiKeys(client, Keys(stack.settings.key_prefix)).create(name)
            return secret
        finally:
            await client.aclose()

    return run_sync(create())


@dataclass
class GatewayStack:
    stack: Stack
    worker: WorkerProcess
    gateways: list[GatewayProcess]
    key: str
    proxies: dict[str, list[str]] = field(default_factory=dict)  # proxy -> model names

    @property
    def base_url(self) -> str:
        return self.gateways[0].base_url

    def openai(self, key: str | None = None, gateway: int = 0, **options: Any) -> openai.OpenAI:
        """The official client, pointed at one gateway with this stack's key (or `key`)."""
        return openai.OpenAI(base_url=self.gateways[gateway].base_url,
                             api_key=key or self.key, max_retries=0, **options)

    def async_openai(self, key: str | None = None, gateway: int = 0,
                     **options: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.gateways[gateway].base_url,
                                  api_key=key or self.key, max_retries=0, **options)

    def add_proxy(self, models: list[str]) -> str:
        """A ready proxy serving `models`, in the proxy cache the gateway routes by."""
        name = unique("gw")
        config = Config(control_endpoint=self.stack.emulator_url,
                        data_endpoint=self.stack.emulator_url)

        async def create() -> None:
            spec = ModelProxyCreateInput(
                model_proxy_name=name,
                proxy_config=ProxyConfig(endpoints=[ProxyConfigEndpoint(model_names=models)]))
            proxy = await ModelProxy.create_async(spec, config=config)
            await proxy.wait_until_ready_or_failed_async(interval_seconds=0.05,
                                                         timeout_seconds=10)
            async with AsyncClient(self.stack.settings) as client:
                job = await client.submit(JobKind.MGMT_REFRESH, "*", {})
                await job.result(timeout=30)

        run_sync(create())
        self.proxies[name] = models
        return name


@contextmanager
def gateway_stack(redis_url: str, emulator_url: str, log_dir: Path, *, gateways: int = 1,
                  settings: dict[str, Any] | None = None, **overrides: Any,
                  ) -> Iterator[GatewayStack]:
    """Workers and gateways on a fresh key prefix; its keys are deleted afterwards."""
    stack = Stack.create(redis_url, emulator_url, **overrides)
    worker = WorkerProcess(worker_env(stack.settings, emulator_url), log_dir / "worker.log",
                           unique("gwworker"))
    started: list[GatewayProcess] = []
    try:
        worker.start()
        env = gateway_env(stack, **(settings or {}))
        for i in range(gateways):
            started.append(GatewayProcess(env, log_dir / f"gateway{i}.log").start())
        yield GatewayStack(stack, worker, started, create_key(stack))
    finally:
        for gateway in started:
            gateway.stop()
        worker.stop()
        _delete_keys(stack)


def _delete_keys(stack: Stack) -> None:
    """This stack's keys only (never FLUSHDB: the server may be shared)."""
    client = redis.Redis.from_url(stack.settings.redis_url or "")
    try:
        for key in client.scan_iter(match=f"{stack.settings.key_prefix}*", count=500):
            client.unlink(key)
    finally:
        client.close()

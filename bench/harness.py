"""Real parts and shared helpers for benchmarks: an emulator process, worker processes, a
gateway process, settings under a fresh key prefix, proxies, chat jobs, percentiles, the
command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.api_keys import ApiKeys
from core.contract import JobKind, JobRecord, JobStatus
from core.embedded_redis import free_port
from core.settings import Settings
from core.store import JobStore
from modelproxy import Config, ModelProxy, ModelProxyCreateInput, ProxyConfig
from producer.client import AsyncClient
from producer.local_stack import stop_processes

MPQ = shutil.which("mpq", path=str(Path(sys.executable).parent)) or "mpq"
MODEL = "m"
ROOT = Path(__file__).resolve().parent.parent
BATCH_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
STARTUP_TIMEOUT_S = 30.0


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line, its `--help` showing the module docstring as written."""
    return argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def batch_arguments(doc: str | None, lines: int, slots: int,
                    latency_s: float) -> argparse.ArgumentParser:
    """`arguments` with the sizes of a batch run: `--lines`, `--slots`, `--latency-s`."""
    parser = arguments(doc)
    parser.add_argument("--lines", type=int, default=lines)
    parser.add_argument("--slots", type=int, default=slots)
    parser.add_argument("--latency-s", type=float, default=latency_s)
    return parser


@contextlib.contextmanager
def emulator_process(*args: str) -> Iterator[str]:
    """`mpq emulator` in its own process (its CPU is not the benchmark's)."""
    port = free_port()
    process = subprocess.Popen([MPQ, "emulator", "--port", str(port), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{url}/_emulator/health", timeout=1).raise_for_status()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("emulator did not start")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def worker_environment(redis_url: str, modelproxy_url: str, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPQ_", "AGENTRUN_"))}
    env.update({f"MPQ_{k.upper()}": str(v) for k, v in settings.items()})
    env.update(MPQ_REDIS_URL=redis_url, AGENTRUN_CONTROL_ENDPOINT=modelproxy_url,
               AGENTRUN_DATA_ENDPOINT=modelproxy_url)
    return env


@contextlib.contextmanager
def worker_process(env: dict[str, str], slots: int, processes: int = 1,
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """`mpq worker` with `slots` slots a process: one process, or `processes` (0: its
    default, one per usable core)."""
    log = Path(tempfile.gettempdir()) / f"mpq-bench-worker-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [MPQ, "worker", "--processes", str(processes), "--slots", str(slots),
             "--loglevel", "WARNING"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    with stopping(process):
        time.sleep(3)  # the worker logs nothing at WARNING: give Celery time to connect
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        yield process


@contextlib.contextmanager
def stopping(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Stop a process we started (SIGTERM, then SIGKILL after 30 s), however we leave."""
    try:
        yield process
    finally:
        stop_processes([process], STOP_TIMEOUT_S)


@contextlib.contextmanager
def module_server(module: str, flag: str, health_path: str, what: str) -> Iterator[str]:
    """`python -m module flag PORT` on a free port, until the block ends; yields its base URL
    once GET `health_path` answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", module, flag, str(port)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    with stopping(process):
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{url}{health_path}", timeout=1).raise_for_status()
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the {what} did not start")
            time.sleep(0.1)
        yield url


@contextlib.contextmanager
def gateway_process(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`python -m gateway` on a free loopback port, in its own process; yields its base URL
    (`http://127.0.0.1:<port>/v1`, from the line it prints once it serves) and its pid."""
    from gateway.server import READY_LINE  # noqa: PLC0415 - the gateway's imports are heavy
    log = Path(tempfile.gettempdir()) / f"mpq-bench-gateway-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    with stopping(process):
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not (ready := [line for line in log.read_text().splitlines()
                             if line.startswith(READY_LINE)]):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield ready[0].split()[-1], process.pid


@dataclass(frozen=True)
class GatewayTarget:
    """A running gateway (its process id too, for its CPU time) and an API key of it."""

    base_url: str
    pid: int
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def gateway_target(client: AsyncClient, process: tuple[str, int]) -> GatewayTarget:
    """A new API key for the gateway `process` (base URL, pid) on `client`'s key prefix, after
    mpq's proxy cache, which the gateway routes by, has been refreshed by a worker."""
    await (await client.refresh_proxies()).result(timeout=30)
    _, secret = await ApiKeys(client.redis, client.keys).create("bench")
    return GatewayTarget(*process, secret)


def emulator_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{url}/_emulator/stats").json()
    return stats


def reset_emulator_stats(url: str) -> None:
    httpx.delete(f"{url}/_emulator/stats").raise_for_status()


def bench_settings(redis_url: str, **changes: Any) -> Settings:
    """Settings under a fresh key prefix, so runs in one Redis never see each other."""
    return Settings(redis_url=redis_url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}:",
                    **changes)


async def create_proxy(emulator_url: str, policies: dict[str, Any] | None = None) -> str:
    """A READY proxy on the emulator with these `proxyConfig.policies` (wire names)."""
    config = Config(control_endpoint=emulator_url, data_endpoint=emulator_url)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    wire: dict[str, Any] = {"endpoints": [{"modelNames": [MODEL]}]}
    if policies:
        wire["policies"] = policies
    spec = ModelProxyCreateInput(model_proxy_name=name,
                                 proxy_config=ProxyConfig.model_validate(wire))
    proxy = await ModelProxy.create_async(spec, config=config)
    await proxy.wait_until_ready_or_failed_async(interval_seconds=0.05)
    return name


def set_emulator(url: str, **settings: Any) -> None:
    httpx.put(f"{url}/_emulator/settings", json=settings).raise_for_status()


def chat_records(proxy: str, jobs: int, **request: Any) -> list[JobRecord]:
    return [JobRecord(kind=JobKind.CHAT, proxy=proxy, request={
        **request, "messages": [{"role": "user", "content": f"Summarise item {i}."}]})
        for i in range(jobs)]


async def wait_batch(store: JobStore, batch_id: str, timeout_s: float = BATCH_TIMEOUT_S,
                     ) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await store.batch(batch_id)
        if batch is not None and batch.status == "finished":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} not finished after {timeout_s} s: {batch}")
        await asyncio.sleep(0.05)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def chat_lines(count: int, content: str = "Summarise this.") -> list[str]:
    """An OpenAI Batch input of `count` chat lines (JSONL, default proxy left to the caller)."""
    return [json.dumps({"custom_id": f"line-{i}", "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {"model": MODEL,
                                 "messages": [{"role": "user", "content": content}]}})
            for i in range(count)]


async def succeeded_finish_times(client: AsyncClient, batch_id: str) -> list[float]:
    """`finished_at` of each succeeded job of a batch, sorted."""
    return sorted([r.finished_at or 0 async for r in client.batch(batch_id).records()
                   if r.status == JobStatus.SUCCEEDED])

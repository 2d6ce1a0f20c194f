"""Real parts for benchmarks: an emulator process, worker processes, a producer view."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from worker.embedded_redis import free_port

MPQ = shutil.which("mpq", path=str(Path(sys.executable).parent)) or "mpq"


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
def worker_process(env: dict[str, str], slots: int) -> Iterator[subprocess.Popen[bytes]]:
    log = Path(tempfile.gettempdir()) / f"mpq-bench-worker-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [MPQ, "worker", "--slots", str(slots), "--loglevel", "WARNING"],
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
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def emulator_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{url}/_emulator/stats").json()
    return stats


def reset_emulator_stats(url: str) -> None:
    httpx.delete(f"{url}/_emulator/stats").raise_for_status()


def run(coro: Any) -> Any:
    return asyncio.run(coro)

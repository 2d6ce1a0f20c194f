"""The whole local stack as real processes: a Redis-compatible server, the ModelProxy
emulator (unless AgentRun is configured), a worker, beat, Flower and the OpenAI-compatible
gateway. Used by `mpq up` and `mpq demo`; everything it started stops on exit, Ctrl-C
included."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from core.embedded_redis import free_port, redis_server
from modelproxy import Config
from producer.local_endpoint import uses_real_service

STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 30.0


@dataclass
class StackOptions:
    redis_url: str | None = None
    slots: int = 200
    with_beat: bool = True
    with_flower: bool = True
    with_gateway: bool = True
    emulator_args: list[str] = field(default_factory=list)


@dataclass
class LocalStack:
    redis_url: str
    modelproxy_url: str | None  # None: the configured AgentRun service
    flower_url: str | None
    flower_user: str
    flower_password: str
    gateway_url: str | None  # its OpenAI base URL (…/v1)
    log_dir: Path
    env: dict[str, str]


def _mpq(*args: str) -> list[str]:
    return [sys.executable, "-m", "producer.cli", *args]


def _not_started(log: Path) -> RuntimeError:
    tail = log.read_text(errors="replace")[-2000:]
    return RuntimeError(f"{log.name} did not start:\n{tail}")


def _wait_http(url: str, started: tuple[subprocess.Popen[bytes], Path],
               auth: tuple[str, str] | None) -> None:
    process, log = started
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _not_started(log)
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, auth=auth, timeout=1).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT_S} s")


def _wait_log(log: Path, marker: bytes, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while marker not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise _not_started(log)
        time.sleep(0.1)


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM each process still running (the last started first), give them `timeout_s`
    in all to exit, then SIGKILL the ones left."""
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Processes:
    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            # Own process group: a Ctrl-C in the terminal reaches us, and we stop them.
            process = subprocess.Popen(command, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(process)
        return process, log

    def stop_all(self) -> None:
        stop_processes(self.started, STOP_TIMEOUT_S)


@contextlib.contextmanager
def local_stack(options: StackOptions) -> Iterator[LocalStack]:
    with redis_server(options.redis_url) as redis_url, tempfile.TemporaryDirectory(
        prefix="mpq-up-"
    ) as tmp:
        log_dir = Path(tmp)
        env = {**os.environ, "MPQ_REDIS_URL": redis_url}
        processes = _Processes(log_dir, env)
        try:
            yield _start_all(processes, options, redis_url, env)
        finally:
            processes.stop_all()


def _start_all(processes: _Processes, options: StackOptions, redis_url: str,
               env: dict[str, str]) -> LocalStack:
    modelproxy_url = None
    if not uses_real_service(Config()):
        port = free_port()
        emulator = processes.start("emulator", _mpq(
            "emulator", "--port", str(port), *options.emulator_args))
        modelproxy_url = f"http://127.0.0.1:{port}"
        _wait_http(f"{modelproxy_url}/_emulator/health", emulator, None)
        env.update(AGENTRUN_CONTROL_ENDPOINT=modelproxy_url,
                   AGENTRUN_DATA_ENDPOINT=modelproxy_url)
    # The gateway starts while the worker does; it is waited for at the end.
    gateway = _start_gateway(processes) if options.with_gateway else None
    if options.with_flower:
        # Flower turns events on within 5 s; the stack's worker sends them from its first job.
        env["MPQ_TASK_EVENTS"] = "true"
    worker, worker_log = processes.start("worker", _mpq(
        "worker", "--slots", str(options.slots), "--loglevel", "INFO"))
    _wait_log(worker_log, b" ready.", worker)
    if options.with_beat:
        processes.start("beat", _mpq("beat"))
    user = env.get("MPQ_FLOWER_USER") or "mpq"
    password = env.get("MPQ_FLOWER_PASSWORD") or secrets.token_urlsafe(12)
    flower_url = None
    if options.with_flower:
        port = free_port()
        env.update(MPQ_FLOWER_USER=user, MPQ_FLOWER_PASSWORD=password)
        flower = processes.start("flower", _mpq("flower", "--port", str(port)))
        flower_url = f"http://127.0.0.1:{port}"
        _wait_http(f"{flower_url}/healthcheck", flower, (user, password))
    if gateway is not None:
        url, started = gateway
        _wait_http(f"{url}/health", started, None)
    return LocalStack(redis_url=redis_url, modelproxy_url=modelproxy_url,
                      flower_url=flower_url, flower_user=user, flower_password=password,
                      gateway_url=f"{gateway[0]}/v1" if gateway else None,
                      log_dir=processes.log_dir, env=env)


def _start_gateway(processes: _Processes) -> tuple[str, tuple[subprocess.Popen[bytes], Path]]:
    """The gateway on loopback (where it starts without keys): its root URL, its process
    and its log."""
    port = free_port()
    started = processes.start("gateway", _mpq("gateway", "--host", "127.0.0.1",
                                               "--port", str(port)))
    return f"http://127.0.0.1:{port}", started

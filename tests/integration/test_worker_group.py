"""`mpq worker` on several cores: the real command, its real Celery children, a real
Redis-protocol server and the emulator. Both children take jobs; SIGTERM to the command stops
them all; a child that dies stops the group with exit code 1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_until
from stack import Stack
from workers import STOP_TIMEOUT_S, worker_env

from core.contract import JobKind, JobStatus
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from producer.local_stack import stop_processes

pytestmark = pytest.mark.timeout(60)

MPQ = shutil.which("mpq", path=str(Path(sys.executable).parent)) or "mpq"
PROCESSES = 2
SLOTS = 4  # per process: a few jobs of 0.2 s fill both processes
JOBS = 16
START_TIMEOUT_S = 30.0


def children_of(pid: int) -> list[int]:
    """The processes `pid` started (its main thread did)."""
    return sorted(map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split()))


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` still in /proc (a child the command reaped is gone from it)."""
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


class WorkerGroup:
    """`mpq worker --processes 2` as an operator runs it, its output in a log file."""

    def __init__(self, stack: Stack, emulator_url: str, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [MPQ, "worker", "--processes", str(PROCESSES), "--slots", str(SLOTS)],
                env=worker_env(stack.settings, emulator_url), stdout=log,
                stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> list[int]:
        """The children's pids, once each has said it is ready."""
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"mpq worker exited ({self.process.returncode}):\n{self.log()}")
            return self.log().count(" ready.") == PROCESSES

        wait_until(ready, START_TIMEOUT_S, 0.1, what=lambda: f"both children:\n{self.log()}")
        children = children_of(self.process.pid)
        assert len(children) == PROCESSES, children
        return children

    def wait_exit(self) -> int:
        return self.process.wait(STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0.05, update_delay_s=0.05, delete_delay_s=0.05,
                                ttft_s=0.2)
    with EmulatorServer(settings=settings) as server:
        yield server


@pytest.fixture
def group(stack: Stack, emulator: EmulatorServer, tmp_path: Path) -> Iterator[WorkerGroup]:
    group = WorkerGroup(stack, emulator.url, tmp_path / "worker.log")
    yield group
    stop_processes([group.process], STOP_TIMEOUT_S)


async def test_every_child_takes_jobs_and_sigterm_stops_them_all(
        stack: Stack, group: WorkerGroup) -> None:
    children = group.wait_ready()
    proxy = await stack.proxy()
    jobs = await stack.submit(JobKind.CHAT, proxy, {"messages": [
        {"role": "user", "content": "hello group"}]}, count=JOBS)
    done = [await stack.wait(job.id) for job in jobs]
    assert {r.status for r in done} == {JobStatus.SUCCEEDED}
    host = socket.gethostname()
    assert {r.worker for r in done} == {f"{host}:{pid}" for pid in children}
    names = [f"mpq-{group.process.pid}-{i}@" for i in range(1, PROCESSES + 1)]
    assert all(name in group.log() for name in names), group.log()

    group.process.send_signal(signal.SIGTERM)
    assert group.wait_exit() == 0, group.log()
    assert not alive(children)
    assert group.log().count("stopped (exit code 0)") == PROCESSES, group.log()


def test_a_child_that_dies_stops_the_group_with_exit_code_1(group: WorkerGroup) -> None:
    lost, other = group.wait_ready()
    os.kill(lost, signal.SIGKILL)
    assert group.wait_exit() == 1, group.log()
    assert not alive([other])
    assert f"(pid {lost}) ended on its own (killed by SIGKILL)" in group.log(), group.log()

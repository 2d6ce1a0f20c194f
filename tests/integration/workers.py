"""Real worker processes for tests, and jobs in the state a worker leaves them in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from polling import wait_until

from core.contract import JobKind, JobRecord
from core.dispatch import broker_queue_names, is_redis_broker
from core.settings import Settings
from core.store import JobStore
from producer.local_stack import stop_processes

STOP_TIMEOUT_S = 20.0  # a worker that does not stop after SIGTERM by then is killed


async def running(store: JobStore, *job_ids: str, attempt: int = 1,
                  lease_s: float = 600) -> None:
    """Jobs of these ids, each running `attempt` under a live lease, made the way workers
    make them (create, then claim): chunk writes are refused to any other attempt."""
    await store.create_jobs([JobRecord(id=job_id, kind=JobKind.CHAT, proxy="p", request={},
                                       attempt=attempt - 1) for job_id in job_ids])
    for job_id in job_ids:
        claim = await store.claim(job_id, "test-worker", lease_s)
        assert (claim.outcome, claim.attempt) == ("claimed", attempt), claim


class WorkerProcess:
    """A real `celery -A worker.app worker` process with its own environment."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str, slots: int = 50,
                 queues: str = "inference,management") -> None:
        self.env = env
        self.log_path = log_path
        self.name = name
        self.slots = slots
        self.queues = queues
        self.process: subprocess.Popen[bytes] | None = None

    def broker_queues(self) -> str:
        """`queues` as the broker names them (`mpq worker` maps them the same way)."""
        url = self.env.get("MPQ_BROKER_URL") or self.env.get("MPQ_REDIS_URL", "")
        return broker_queue_names(self.queues, redis=is_redis_broker(url))

    def start(self, timeout_s: float = 30) -> WorkerProcess:
        command = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=threads",
            f"--concurrency={self.slots}", "-Q", self.broker_queues(), "-n", f"{self.name}@%h",
            "--loglevel=INFO", "--without-gossip", "--without-mingle",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited ({process.returncode}):\n{self.log()}")
            return b" ready." in self.log_path.read_bytes()

        wait_until(ready, timeout_s, 0.1,
                   what=lambda: f"worker {self.name} to start:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_processes([self.process], STOP_TIMEOUT_S)


def worker_env(settings: Settings, modelproxy_url: str) -> dict[str, str]:
    """The environment a worker reads: our settings plus the ModelProxy endpoints."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MPQ_", "AGENTRUN_", "ALIBABA_CLOUD_"))}
    env.pop("REDIS_URL", None)
    env.update(settings.environment())
    env["AGENTRUN_CONTROL_ENDPOINT"] = modelproxy_url
    env["AGENTRUN_DATA_ENDPOINT"] = modelproxy_url
    return env

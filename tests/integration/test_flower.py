"""Flower and the metrics exporter on a real stack: `python -m producer.flower` (what
`mpq flower` runs) on a real broker with its key prefix, a real worker process, the
emulator over HTTP. One small batch is run once; the tests read what Flower and the
exporter made of it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from stack import Stack

from modelproxy.emulator.server import EmulatorServer
from modelproxy.emulator.settings import EmulatorSettings
from producer.flower import (
    TASK_COLUMNS,
    UnsafeBindError,
    check_exposure,
    flower_argv,
    is_loopback,
    resolve_access,
)
from producer.metrics_exporter import MpqCollector, serve_metrics
from producer.submit import enqueue, job_summary
from worker.contract import JobKind, JobRecord, JobStatus
from worker.embedded_redis import EmbeddedRedis, free_port
from worker.keys import Keys
from worker.metrics import MetricsRecorder, encode_field, metrics_key
from worker.settings import Settings

pytestmark = pytest.mark.timeout(180)

PROMPT = "SECRET-PROMPT-7f3a do not show"
FINAL_STATES = frozenset({"SUCCESS", "FAILURE"})
START_TIMEOUT_S = 30.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class FlowerProcess:
    process: subprocess.Popen[bytes]
    url: str
    user: str
    password: str
    log: Path

    def get(self, path: str,
            auth: tuple[str, str] | Literal["login"] | None = "login") -> httpx.Response:
        credentials = (self.user, self.password) if auth == "login" else auth
        return httpx.get(f"{self.url}{path}", auth=credentials, timeout=10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)


def start_flower(env: dict[str, str], log: Path, *args: str,
                 login: tuple[str, str] | None = None) -> FlowerProcess:
    """`python -m producer.flower --port 0 …`; the port (and, without a known `login`, the
    generated credentials) are read from what it prints."""
    command = [sys.executable, "-m", "producer.flower", "--port", "0", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = _wait_for_url(process, log)
        return FlowerProcess(process, url, *(login or _printed_login(log.read_text())), log)
    except BaseException:
        process.kill()
        process.wait()
        raise


def _wait_for_url(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (found := re.search(r"Visit me at (http://127\.0\.0\.1:\d+)", log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"flower did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    return found.group(1)


def _printed_login(text: str) -> tuple[str, str]:
    user = re.search(r"user (\S+)", text)
    password = re.search(r"^password (\S+)", text, re.MULTILINE)
    assert user is not None, text
    assert password is not None, text
    return user.group(1), password.group(1)


def parse_samples(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Scenario:
    stack: Stack
    flower: FlowerProcess
    proxy: str
    limited_proxy: str
    ok: list[JobRecord]
    limited: JobRecord
    missing: JobRecord
    management: JobRecord
    queued: dict[str, int]
    broker_html: str
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # by job id

    @property
    def jobs(self) -> list[JobRecord]:
        return [*self.ok, self.limited, self.missing, self.management]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0.1, update_delay_s=0.1, delete_delay_s=0.1,
                                tpot_s=0.002)
    with EmulatorServer(settings=settings) as server:
        yield server


def _records(proxy: str, limited_proxy: str) -> list[JobRecord]:
    messages = [{"role": "user", "content": PROMPT}]
    ok = [JobRecord(kind=JobKind.CHAT, proxy=proxy, custom_id=f"line-{i}",
                    request={"messages": messages, "model": "m1", "stream": i == 0})
          for i in range(3)]
    return [
        *ok,
        JobRecord(kind=JobKind.CHAT, proxy=limited_proxy, custom_id="limited",
                  request={"messages": messages, "model": "m1"}),
        JobRecord(kind=JobKind.CHAT, proxy="no-such-proxy", custom_id="missing",
                  request={"messages": messages}),
        JobRecord(kind=JobKind.MGMT_GET, proxy=proxy, request={"name": proxy}),
    ]


def _queue_lengths(flower: FlowerProcess, expected: dict[str, int]) -> dict[str, int]:
    """Flower's view of the broker queues, once it shows what was published."""
    deadline = time.monotonic() + 10
    while True:
        answer = flower.get("/api/queues/length").json()
        lengths = {q["name"]: q["messages"] for q in answer["active_queues"]}
        if lengths == expected or time.monotonic() > deadline:
            return lengths
        time.sleep(0.2)


def _flower_tasks(flower: FlowerProcess, jobs: list[JobRecord]) -> dict[str, dict[str, Any]]:
    """Flower's tasks by job id (the id is in the args), once every one is final there."""
    deadline = time.monotonic() + 30
    while True:
        by_job = {}
        for task in flower.get("/api/tasks").json().values():
            found = re.search(r"[0-9a-f]{32}", task.get("args") or "")
            if found:
                by_job[found.group(0)] = task
        states = {job.id: by_job.get(job.id, {}).get("state") for job in jobs}
        if set(states.values()) <= FINAL_STATES:
            return by_job
        if time.monotonic() > deadline:
            raise AssertionError(f"flower did not see every job finish: {states}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
async def scenario(redis_url: str, emulator: EmulatorServer,
                   tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scenario]:
    from conftest import WorkerProcess, worker_env

    logs = tmp_path_factory.mktemp("flower")
    stack = Stack.create(redis_url, emulator.url, task_events=True)
    env = worker_env(stack.settings, emulator.url)
    flower = start_flower(env, logs / "flower.log")
    worker = WorkerProcess(env, logs / "worker.log", "flower-w")
    try:
        proxy, limited_proxy = await stack.proxy(), await stack.proxy()
        stack.faults(limited_proxy, error_429_rate=1.0, retry_after_s=0.2)
        # Published before any worker runs: the broker page must count them.
        jobs = await enqueue(stack.store, stack.celery, _records(proxy, limited_proxy),
                             "b-flower")
        queued = _queue_lengths(flower, {"inference": 5, "management": 1})
        broker_html = flower.get("/broker").text
        worker.start()
        for job in jobs:
            await stack.wait(job.id)
        found = Scenario(stack, flower, proxy, limited_proxy, jobs[:3], jobs[3], jobs[4],
                         jobs[5], queued, broker_html)
        found.tasks = _flower_tasks(flower, found.jobs)
        yield found
    finally:
        worker.stop()
        flower.stop()
        await stack.close()


# --- access ---------------------------------------------------------------------------

def test_login_is_required_for_pages_and_api(scenario: Scenario) -> None:
    flower = scenario.flower
    assert len(flower.password) >= 16, "a generated password is printed when none is set"
    for path in ("/", "/tasks", "/broker", "/api/tasks", "/api/workers",
                 "/api/queues/length"):
        assert flower.get(path, auth=None).status_code == 401, path
        assert flower.get(path, auth=(flower.user, "wrong")).status_code == 401, path
        assert flower.get(path).status_code == 200, path
    assert flower.get("/healthcheck", auth=None).text == "OK"


async def test_flower_stops_cleanly_on_sigterm(
    redis_url: str, client: aioredis.Redis, tmp_path: Path
) -> None:
    from conftest import worker_env

    # The login from the environment (MPQ_FLOWER_USER / MPQ_FLOWER_PASSWORD).
    settings = Settings(redis_url=redis_url, key_prefix="mpqtest-flowerstop:",
                        flower_user="alice", flower_password="s3cret-pw")
    flower = start_flower(worker_env(settings, "http://127.0.0.1:9"), tmp_path / "f.log",
                          login=("alice", "s3cret-pw"))
    try:
        assert flower.get("/api/workers").status_code == 200
        assert flower.get("/api/workers", auth=("mpq", "s3cret-pw")).status_code == 401
        assert "generated" not in flower.log.read_text()
    finally:
        assert flower.stop() == 0
        async for key in client.scan_iter(match=f"{settings.key_prefix}*"):
            await client.unlink(key)


def test_flower_stops_on_sigterm_while_the_broker_is_down(tmp_path: Path) -> None:
    from conftest import worker_env

    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url, key_prefix="mpqtest-flowerdown:")
        flower = start_flower(worker_env(settings, "http://127.0.0.1:9"), tmp_path / "f.log",
                              "--user", "u", "--password", "pw", login=("u", "pw"))
    try:
        time.sleep(1)  # Flower notices the broker is gone
        assert flower.get("/workers").status_code == 200
    finally:
        started = time.monotonic()
        assert flower.stop() == 0
    assert time.monotonic() - started < 10


async def test_flower_turns_on_the_task_events_of_a_worker_started_without(
    redis_url: str, emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Workers send no task events by default (they cost CPU); a running Flower tells every
    worker to send them, so jobs after that show up in it, final state included."""
    from conftest import WorkerProcess, worker_env

    stack = Stack.create(redis_url, emulator.url)
    assert not stack.settings.task_events
    env = worker_env(stack.settings, emulator.url)
    worker = WorkerProcess(env, tmp_path / "worker.log", "events-w").start()
    flower = start_flower(env, tmp_path / "flower.log")
    try:
        deadline = time.monotonic() + 20  # Flower broadcasts enable_events every 5 s
        while "Events of group {task} enabled by remote" not in worker.log():
            assert time.monotonic() < deadline, worker.log()
            await asyncio.sleep(0.2)
        record = JobRecord(kind=JobKind.CHAT, proxy=await stack.proxy(),
                           request={"messages": [{"role": "user", "content": "hi"}]})
        [job] = await enqueue(stack.store, stack.celery, [record], "b-events")
        await stack.wait(job.id)
        assert _flower_tasks(flower, [job])[job.id]["state"] == "SUCCESS"
    finally:
        worker.stop()
        flower.stop()
        await stack.close()


def test_unauthenticated_public_bind_is_refused(redis_url: str) -> None:
    from conftest import worker_env

    env = worker_env(Settings(redis_url=redis_url), "http://127.0.0.1:9")
    result = subprocess.run(
        [sys.executable, "-m", "producer.flower", "--no-auth", "--address", "0.0.0.0",
         "--port", "0"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "refusing to serve Flower without auth" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("", False), ("::", False), ("10.0.0.5", False),
    ("flower.example.com", False),
])
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_exposure_rules() -> None:
    check_exposure("127.0.0.1", auth=False, force_open=False)
    check_exposure("0.0.0.0", auth=True, force_open=False)
    check_exposure("0.0.0.0", auth=False, force_open=True)
    with pytest.raises(UnsafeBindError, match="--force-open"):
        check_exposure("0.0.0.0", auth=False, force_open=False)


def test_flower_command_line() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", flower_address="127.0.0.1",
                        flower_port=5555, flower_user="mpq", flower_password=None)
    access = resolve_access(settings, address=None, port=None, user=None, password=None,
                            auth=True)
    assert (access.address, access.port, access.user) == ("127.0.0.1", 5555, "mpq")
    assert access.generated_password
    assert access.password
    argv = flower_argv(access, extra_args=["--persistent=True"])
    assert argv[0] == "flower"
    assert f"--basic_auth=mpq:{access.password}" in argv
    assert f"--tasks_columns={TASK_COLUMNS}" in argv
    assert "--read_only=True" in argv
    assert argv[-1] == "--persistent=True"
    chosen = resolve_access(settings, address="::1", port=0, user="bob", password="pw",
                            auth=True)
    assert (chosen.user, chosen.password, chosen.generated_password) == ("bob", "pw", False)
    configured = settings.model_copy(update={"flower_user": "ops", "flower_password": "s3"})
    from_settings = resolve_access(configured, address=None, port=None, user=None,
                                   password=None, auth=True)
    assert (from_settings.user, from_settings.password) == ("ops", "s3")
    open_access = resolve_access(settings, address=None, port=None, user="x", password="y",
                                 auth=False)
    assert not any(arg.startswith("--basic_auth") for arg in flower_argv(open_access))


# --- what Flower shows ----------------------------------------------------------------

def test_tasks_are_named_by_job_kind(scenario: Scenario) -> None:
    names = {job.id: scenario.tasks[job.id]["name"] for job in scenario.jobs}
    assert names[scenario.management.id] == "mpq.management.get"
    assert {names[job.id] for job in [*scenario.ok, scenario.limited]} == {
        "mpq.inference.chat"}


def test_args_summarise_the_job_never_the_prompt(scenario: Scenario) -> None:
    for job in scenario.jobs:
        assert scenario.tasks[job.id]["args"] == job_summary(job)
    summary = scenario.tasks[scenario.ok[1].id]["args"]
    assert f"proxy={scenario.proxy}" in summary
    assert "model=m1" in summary
    assert "batch=b-flower" in summary
    assert "custom_id=line-1" in summary
    everything = json.dumps(scenario.flower.get("/api/tasks").json())
    assert PROMPT not in everything
    assert scenario.flower.password not in everything


def test_successes_and_failures_show_their_state(scenario: Scenario) -> None:
    assert {scenario.tasks[job.id]["state"] for job in scenario.ok} == {"SUCCESS"}
    assert scenario.tasks[scenario.management.id]["state"] == "SUCCESS"
    missing = scenario.tasks[scenario.missing.id]
    assert missing["state"] == "FAILURE"
    assert "does not exist" in missing["exception"]
    assert missing["retries"] == 0


def test_retries_show_as_retries_and_the_upstream_message(scenario: Scenario) -> None:
    limited = scenario.tasks[scenario.limited.id]
    attempts = scenario.stack.settings.max_attempts
    assert limited["state"] == "FAILURE"
    assert limited["retries"] >= attempts - 1
    assert "429" in limited["exception"]
    assert "rate limit exceeded" in limited["exception"]
    # The retried messages keep the summary, not just the job id.
    assert limited["args"] == job_summary(scenario.limited)
    metrics = parse_samples(scenario.flower.get("/metrics", auth=None).text)
    retried = sum(value for (name, labels), value in metrics.items()
                  if name == "flower_events_total"
                  and ("type", "task-retried") in labels)
    assert retried >= attempts - 1


def test_broker_page_counts_the_prefixed_queues(scenario: Scenario) -> None:
    assert scenario.queued == {"inference": 5, "management": 1}
    for queue, count in scenario.queued.items():
        row = re.search(rf'<tr id="{queue}">\s*<td>{queue}</td>\s*<td[^>]*>(\d+)</td>',
                        scenario.broker_html)
        assert row is not None, scenario.broker_html
        assert int(row.group(1)) == count


# --- metrics --------------------------------------------------------------------------

def _scrape_until(url: str, ready: Any, timeout_s: float = 10) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = parse_samples(httpx.get(url, timeout=10).text)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_flower_metrics_carry_flower_and_mpq_figures(scenario: Scenario) -> None:
    url = f"{scenario.flower.url}/metrics"
    samples = _scrape_until(url, lambda s: sample(
        s, "mpq_jobs_total", kind="chat", state="succeeded") >= 3)
    assert any(name == "flower_events_total" for name, _ in samples)
    assert sample(samples, "mpq_jobs_total", kind="chat", state="succeeded") == 3
    assert sample(samples, "mpq_metrics_up") == 1


def test_exporter_serves_the_workers_figures(scenario: Scenario) -> None:
    server = serve_metrics(scenario.stack.settings, address="127.0.0.1", port=0)
    proxy, limited = scenario.proxy, scenario.limited_proxy
    attempts = scenario.stack.settings.max_attempts
    try:
        samples = _scrape_until(server.url, lambda s: sample(
            s, "mpq_upstream_429_total", proxy=limited) >= attempts)
    finally:
        server.close()
    assert sample(samples, "mpq_jobs_total", kind="chat", state="succeeded") == 3
    assert sample(samples, "mpq_jobs_total", kind="chat", state="failed") == 2
    assert sample(samples, "mpq_jobs_total", kind="chat", state="retrying") == attempts - 1
    assert sample(samples, "mpq_jobs_total", kind="mgmt_get", state="succeeded") == 1
    assert sample(samples, "mpq_tokens_total", proxy=proxy, type="prompt") > 0
    assert sample(samples, "mpq_tokens_total", proxy=proxy, type="completion") > 0
    assert sample(samples, "mpq_upstream_429_total", proxy=limited) == attempts
    assert sample(samples, "mpq_attempt_errors_total", proxy=limited,
                  error="RateLimitedError") == attempts
    assert sample(samples, "mpq_stream_chunks_total", proxy=proxy) > 2
    assert sample(samples, "mpq_queue_length", queue="inference") == 0
    assert sample(samples, "mpq_metrics_up") == 1


async def test_exporter_reads_counters_and_prefixed_queues(
    redis_url: str, client: aioredis.Redis
) -> None:
    keys = Keys("mpqtest-exporter:")
    recorder = MetricsRecorder(client, metrics_key(keys), flush_interval_s=0.05)
    recorder.job_started(JobKind.CHAT)
    recorder.job_outcome(JobKind.CHAT, JobStatus.SUCCEEDED)
    recorder.tokens("p1", {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12})
    recorder.tokens("p1", {"input_tokens": 3, "output_tokens": 2})
    recorder.permit("p1", 1.5)
    recorder.permit("p1", 0.001)  # one round trip: not a wait
    recorder.permit_requeued("p1", 0.25)
    recorder.stream_chunks("p1", 9)
    await recorder.aclose()
    await client.hset(metrics_key(keys), mapping={
        "not json": 1, encode_field("mpq_unknown", ()): 1,
        encode_field("mpq_tokens", (("proxy", "p1"),)): 1})  # labels missing: ignored
    await client.lpush(f"{keys.prefix}broker:management", "m1", "m2")
    server = serve_metrics(Settings(redis_url=redis_url, key_prefix=keys.prefix),
                           address="127.0.0.1", port=0)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            samples = parse_samples((await http.get(server.url)).text)
    finally:
        server.close()
        await client.delete(metrics_key(keys), f"{keys.prefix}broker:management")
    assert sample(samples, "mpq_jobs_total", kind="chat", state="running") == 1
    assert sample(samples, "mpq_jobs_total", kind="chat", state="succeeded") == 1
    assert sample(samples, "mpq_tokens_total", proxy="p1", type="prompt") == 10
    assert sample(samples, "mpq_tokens_total", proxy="p1", type="completion") == 7
    assert sample(samples, "mpq_ratelimit_waits_total", proxy="p1", result="waited") == 1
    assert sample(samples, "mpq_ratelimit_waits_total", proxy="p1", result="requeued") == 1
    assert sample(samples, "mpq_ratelimit_wait_seconds_total", proxy="p1") == pytest.approx(
        1.751)
    assert sample(samples, "mpq_stream_chunks_total", proxy="p1") == 9
    assert sample(samples, "mpq_queue_length", queue="management") == 2
    assert sample(samples, "mpq_queue_length", queue="inference") == 0
    assert sample(samples, "mpq_metrics_up") == 1


def test_metrics_command_serves_until_sigterm(redis_url: str) -> None:
    from conftest import worker_env

    env = worker_env(Settings(redis_url=redis_url, key_prefix="mpqtest-metricscmd:"),
                     "http://127.0.0.1:9")
    process = subprocess.Popen(
        [sys.executable, "-m", "producer.metrics_exporter", "--port", "0"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = re.search(r"mpq metrics at (http://127\.0\.0\.1:\d+/metrics)",
                        process.stdout.readline())
        assert url is not None
        samples = parse_samples(httpx.get(url.group(1), timeout=10).text)
        assert sample(samples, "mpq_metrics_up") == 1
        assert ("mpq_queue_length", frozenset({("queue", "inference")})) in samples
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr


def test_exporter_reports_redis_down() -> None:
    collector = MpqCollector(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    families = {family.name: family for family in collector.collect()}
    assert families["mpq_metrics_up"].samples[0].value == 0

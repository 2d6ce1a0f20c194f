"""Flower in a real browser: headless Debian chromium logs in with basic auth, opens the
tasks page after a small mpq batch, and finds our tasks, their states and summaries in the
DOM after Flower's JavaScript loaded the rows; a screenshot is saved in the test's temp dir.

Skipped only when chromium is not installed (`.ci/run` installs Debian's package and says
why when it cannot)."""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.celery_app import create_app
from core.contract import JobKind, JobRecord
from core.dispatch import enqueue, job_summary
from core.embedded_redis import redis_server
from core.keys import Keys
from core.redis_client import redis_client
from core.settings import Settings
from core.store import JobStore
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from modelproxy import (
    Config,
    ModelProxy,
    ModelProxyCreateInput,
    ProxyConfig,
    ProxyConfigEndpoint,
)
from producer.flower import TASK_COLUMNS
from producer.local_stack import stop_processes

pytestmark = pytest.mark.timeout(240)

USER, PASSWORD = "mpq", "browser-test-pw"
PROMPT = "SECRET-PROMPT-b41c never on a page"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--hide-scrollbars",
]
# Let Flower's JavaScript (datatables) fetch and draw the rows before the DOM is taken.
JS_BUDGET_MS = "5000"
WINDOW = "1600,640"
CHROMIUM_TIMEOUT_S = 90
COLUMN = {name: index for index, name in enumerate(TASK_COLUMNS.split(","))}
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20.0
FAST = {"max_attempts": 3, "backoff_base_s": 0.2, "backoff_max_s": 1.0, "lease_s": 3.0,
        "cancel_check_s": 0.2, "request_timeout_s": 5.0, "default_cooldown_s": 0.5,
        "task_events": True}


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        why = os.environ.get("MPQ_CHROMIUM_UNAVAILABLE", "not on PATH")
        pytest.skip(f"chromium is not installed ({why}); .ci/run installs Debian's "
                    "`chromium` package: apt-get install -y chromium")
    return found


def run_chromium(browser: str, profile: Path, url: str, *mode: str) -> str:
    """One headless run with an empty profile; returns stdout (the DOM with --dump-dom)."""
    profile.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW}",
         f"--virtual-time-budget={JS_BUDGET_MS}", *mode, url],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(dom: str) -> list[list[str]]:
    """The text of each cell of each body row of the tasks table."""
    body = dom.split('id="tasks-table"', 1)[-1]
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.DOTALL):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)
        if cells:
            rows.append([html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells])
    return rows


@dataclass
class Batch:
    flower_url: str
    ok: list[JobRecord]
    limited: JobRecord
    missing: JobRecord
    management: JobRecord

    @property
    def jobs(self) -> list[JobRecord]:
        return [*self.ok, self.limited, self.missing, self.management]


class Processes:
    """The processes a test started: stopped (then killed) at its end."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> Path:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            self.started.append(subprocess.Popen(
                [sys.executable, "-m", "producer.cli", *args], env=self.env, stdout=out,
                stderr=subprocess.STDOUT))
        return log

    def wait_for(self, log: Path, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (found := re.search(pattern, log.read_text(errors="replace"))):
            exited = [p for p in self.started if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                raise RuntimeError(f"{log.name}:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        return found

    def stop(self) -> None:
        stop_processes(self.started, STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def browser() -> str:
    """Asked for first, so a machine without chromium skips before starting anything."""
    return chromium_path()


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(settings=EmulatorSettings(create_delay_s=0.1, tpot_s=0.002)) as server:
        yield server


async def _create_proxy(config: Config) -> str:
    name = f"docs-{uuid.uuid4().hex[:6]}"
    spec = ModelProxyCreateInput(model_proxy_name=name, proxy_config=ProxyConfig(
        endpoints=[ProxyConfigEndpoint(model_names=["qwen-max"])]))
    proxy = await ModelProxy.create_async(spec, config=config)
    await proxy.wait_until_ready_or_failed_async(interval_seconds=0.05, timeout_seconds=10)
    return name


BATCH = "docs-batch"


def _records(proxy: str, limited: str) -> list[JobRecord]:
    """Jobs of one batch, each with a message of its own (a row each on the tasks page; a
    batch submitted whole is fed several lines to a message, see tests/integration/
    test_flower.py)."""
    messages = [{"role": "user", "content": PROMPT}]
    return [
        *(JobRecord(kind=JobKind.CHAT, proxy=proxy, custom_id=f"req-{i}", batch_id=BATCH,
                    request={"messages": messages, "model": "qwen-max", "stream": i == 0})
          for i in range(3)),
        JobRecord(kind=JobKind.CHAT, proxy=limited, custom_id="req-429", batch_id=BATCH,
                  request={"messages": messages, "model": "qwen-max"}),
        JobRecord(kind=JobKind.CHAT, proxy="no-such-proxy", custom_id="req-missing",
                  batch_id=BATCH, request={"messages": messages}),
        JobRecord(kind=JobKind.MGMT_GET, proxy=proxy, batch_id=BATCH, request={"name": proxy}),
    ]


async def _wait_final(store: JobStore, jobs: list[JobRecord], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    for job in jobs:
        while (record := await store.load(job.id)) is None or not record.status.is_final:
            assert time.monotonic() < deadline, f"job {job.id} did not finish"
            await asyncio.sleep(0.1)


async def _wait_flower_saw(http: httpx.AsyncClient, url: str, jobs: list[JobRecord]) -> None:
    """Flower's event stream trails the store a little: wait until it has every end."""
    deadline = time.monotonic() + 30
    while True:
        tasks = (await http.get(f"{url}/api/tasks", auth=(USER, PASSWORD))).json()
        final = " ".join(t["args"] for t in tasks.values()
                         if t["state"] in {"SUCCESS", "FAILURE"})
        missing = [job.id for job in jobs if job.id not in final]
        if not missing:
            return
        assert time.monotonic() < deadline, f"flower did not see these jobs end: {missing}"
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def batch(emulator: EmulatorServer,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Batch]:
    with redis_server(os.environ.get("REDIS_URL") or None) as url:
        settings = Settings(redis_url=url, key_prefix=f"mpqe2e-{uuid.uuid4().hex[:6]}:",
                            flower_user=USER, flower_password=PASSWORD, **FAST)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MPQ_", "AGENTRUN_"))}
        env.update(settings.environment())
        env.update(AGENTRUN_CONTROL_ENDPOINT=emulator.url, AGENTRUN_DATA_ENDPOINT=emulator.url)
        processes = Processes(tmp_path_factory.mktemp("flower-browser"), env)
        client = redis_client(url)
        store = JobStore(client, Keys(settings.key_prefix), settings.result_ttl_s)
        try:
            yield await _run_batch(settings, emulator, processes, store)
        finally:
            processes.stop()
            async for key in client.scan_iter(match=f"{settings.key_prefix}*"):
                await client.unlink(key)
            await client.aclose()


async def _run_batch(settings: Settings, emulator: EmulatorServer, processes: Processes,
                     store: JobStore) -> Batch:
    worker = processes.start("worker", "worker", "--slots", "20")
    flower = processes.start("flower", "flower", "--port", "0")  # login from MPQ_FLOWER_*
    processes.wait_for(worker, r" ready\.")
    flower_url = processes.wait_for(flower, r"Visit me at (http://127\.0\.0\.1:\d+)").group(1)
    config = Config(control_endpoint=emulator.url, data_endpoint=emulator.url)
    proxy, limited = await _create_proxy(config), await _create_proxy(config)
    async with httpx.AsyncClient(timeout=10) as http:
        faults = {"error_429_rate": 1.0, "retry_after_s": 0.2}
        (await http.put(f"{emulator.url}/_emulator/proxies/{limited}/faults", json=faults)
         ).raise_for_status()
        jobs = await enqueue(store, create_app(settings), _records(proxy, limited))
        await _wait_final(store, jobs)
        found = Batch(flower_url, jobs[:3], jobs[3], jobs[4], jobs[5])
        await _wait_flower_saw(http, flower_url, found.jobs)
    return found


def test_tasks_page_in_chromium_shows_our_jobs(browser: str, batch: Batch,
                                               tmp_path: Path) -> None:
    host = batch.flower_url.removeprefix("http://")
    dom = run_chromium(browser, tmp_path / "profile", f"http://{USER}:{PASSWORD}@{host}/tasks",
                       "--dump-dom")
    rows = {row[COLUMN["args"]]: row for row in table_rows(dom) if len(row) == len(COLUMN)}
    for job in batch.jobs:
        assert job_summary(job) in rows, f"{job_summary(job)} not on the page: {list(rows)}"
    states = {job.id: rows[job_summary(job)][COLUMN["state"]] for job in batch.jobs}
    names = {job.id: rows[job_summary(job)][COLUMN["name"]] for job in batch.jobs}
    assert {states[job.id] for job in batch.ok} == {"SUCCESS"}
    assert states[batch.limited.id] == "FAILURE"
    assert states[batch.missing.id] == "FAILURE"
    assert names[batch.management.id] == "mpq.management.get"
    assert {names[job.id] for job in batch.ok} == {"mpq.inference.chat"}
    limited = rows[job_summary(batch.limited)]
    assert int(limited[COLUMN["retries"]]) >= FAST["max_attempts"] - 1
    assert "429" in limited[COLUMN["exception"]]
    assert PROMPT not in dom
    shot = tmp_path / "flower-tasks.png"
    run_chromium(browser, tmp_path / "profile-shot",
                 f"http://{USER}:{PASSWORD}@{host}/tasks", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_chromium_without_credentials_is_refused(browser: str, batch: Batch,
                                                 tmp_path: Path) -> None:
    dom = run_chromium(browser, tmp_path / "profile", f"{batch.flower_url}/tasks",
                       "--dump-dom")
    # Headless chromium answers the 401's login prompt with nothing: no page at all.
    assert "job=" not in dom
    assert "mpq.inference" not in dom

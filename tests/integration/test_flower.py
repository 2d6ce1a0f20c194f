"""Flower and the metrics exporter on a real stack: `python -m producer.flower` (what
`mpq flower` runs) on a real broker with its key prefix, a real worker process, the
emulator over HTTP. One small batch is run once; the tests read what Flower and the
exporter made of it."""

from __future__ import annotations

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
from polling import until, wait_until
from processes import command_lines
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from stack import Stack

from core.contract import JobKind, JobRecord, JobStatus
from core.dispatch import LINES_TASK, enqueue, job_summary
from core.embedded_redis import EmbeddedRedis, free_port
from core.keys import Keys
from core.network import is_loopback
from core.settings import Settings
from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings
from producer.flower import (
    BASIC_AUTH_ENV,
    TASK_COLUMNS,
    FlowerOptionsError,
    OAuthLogin,
    UnsafeBindError,
    check_exposure,
    flower_argv,
    flower_environment,
    oauth_login,
    resolve_access,
    user_options,
    with_user_options,
)
from producer.metrics_exporter import MpqCollector, serve_metrics
from worker.metrics import MetricsRecorder, encode_field

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
    lines: list[JobRecord]  # a batch submitted whole: the feeder sends its lines
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # by (first) job id

    @property
    def jobs(self) -> list[JobRecord]:
        return [*self.ok, self.limited, self.missing, self.management]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0.1, update_delay_s=0.1, delete_delay_s=0.1,
                                tpot_s=0.002)
    with EmulatorServer(settings=settings) as server:
        yield server


BATCH = "b-flower"
LINES_BATCH = "b-flower-lines"


def _records(proxy: str, limited_proxy: str) -> list[JobRecord]:
    """Jobs of batch `b-flower`, each with a message of its own (as the orphan sweep sends
    them; a batch submitted whole is fed in messages of several lines: see
    test_batch_lines_show_their_batch_priority_share_and_jobs)."""
    messages = [{"role": "user", "content": PROMPT}]
    ok = [JobRecord(kind=JobKind.CHAT, proxy=proxy, custom_id=f"line-{i}", batch_id=BATCH,
                    request={"messages": messages, "model": "m1", "stream": i == 0})
          for i in range(3)]
    return [
        *ok,
        JobRecord(kind=JobKind.CHAT, proxy=limited_proxy, custom_id="limited",
                  batch_id=BATCH, request={"messages": messages, "model": "m1"}),
        JobRecord(kind=JobKind.CHAT, proxy="no-such-proxy", custom_id="missing",
                  batch_id=BATCH, request={"messages": messages}),
        JobRecord(kind=JobKind.MGMT_GET, proxy=proxy, batch_id=BATCH,
                  request={"name": proxy}),
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
    from workers import WorkerProcess, worker_env

    logs = tmp_path_factory.mktemp("flower")
    stack = Stack.create(redis_url, emulator.url, task_events=True)
    env = worker_env(stack.settings, emulator.url)
    flower = start_flower(env, logs / "flower.log")
    worker = WorkerProcess(env, logs / "worker.log", "flower-w")
    try:
        proxy, limited_proxy = await stack.proxy(), await stack.proxy()
        stack.faults(limited_proxy, error_429_rate=1.0, retry_after_s=0.2)
        # Published before any worker runs: the broker page must count them.
        jobs = await enqueue(stack.store, stack.celery, _records(proxy, limited_proxy))
        queued = _queue_lengths(flower, {"inference": 5, "management": 1})
        broker_html = flower.get("/broker").text
        worker.start()
        lines = await enqueue(stack.store, stack.celery, [
            JobRecord(kind=JobKind.CHAT, proxy=proxy, custom_id=f"fed-{i}",
                      request={"messages": [{"role": "user", "content": PROMPT}]})
            for i in range(3)], LINES_BATCH)
        for job in [*jobs, *lines]:
            await stack.wait(job.id)
        found = Scenario(stack, flower, proxy, limited_proxy, jobs[:3], jobs[3], jobs[4],
                         jobs[5], queued, broker_html, lines)
        found.tasks = _flower_tasks(flower, [*found.jobs, lines[0]])
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
    from workers import worker_env

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
    from workers import worker_env

    password_file = tmp_path / "password"
    password_file.write_text("pw\n")
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url, key_prefix="mpqtest-flowerdown:")
        flower = start_flower(worker_env(settings, "http://127.0.0.1:9"), tmp_path / "f.log",
                              "--user", "u", "--password-file", str(password_file),
                              login=("u", "pw"))
    try:
        # Which of Flower's loops notices first (event capture or an inspect call) varies.
        gone = ("Failed to capture events", "Connection reset by peer",
                "Connection closed by server", "Connection refused")
        wait_until(lambda: any(sign in flower.log.read_text() for sign in gone), 30, 0.1,
                   what="Flower to notice the broker is gone")
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
    from workers import WorkerProcess, worker_env

    stack = Stack.create(redis_url, emulator.url)
    assert not stack.settings.task_events
    env = worker_env(stack.settings, emulator.url)
    worker = WorkerProcess(env, tmp_path / "worker.log", "events-w").start()
    flower = start_flower(env, tmp_path / "flower.log")
    try:
        await until(lambda: "Events of group {task} enabled by remote" in worker.log(),
                    20, 0.2,  # Flower broadcasts enable_events every 5 s
                    what=lambda: f"Flower to enable the worker's events:\n{worker.log()}")
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
    from workers import worker_env

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
    assert not [arg for arg in argv if access.password in arg or "basic" in arg]
    environ = {BASIC_AUTH_ENV: "intruder:pw"}
    flower_environment(access, environ)
    assert environ == {BASIC_AUTH_ENV: f"mpq:{access.password}"}
    assert f"--tasks_columns={TASK_COLUMNS}" in argv
    assert "--read_only=True" in argv
    assert argv[-1] == "--persistent=True"
    chosen = resolve_access(settings, address="::1", port=0, user="bob", password="pw",
                            auth=True)
    assert (chosen.user, chosen.password, chosen.generated_password) == ("bob", "pw", False)
    configured = settings.model_copy(update={"flower_user": "ops",
                                                  "flower_password": SecretStr("s3")})
    from_settings = resolve_access(configured, address=None, port=None, user=None,
                                   password=None, auth=True)
    assert (from_settings.user, from_settings.password) == ("ops", "s3")
    open_access = resolve_access(settings, address=None, port=None, user="x", password="y",
                                 auth=False)
    flower_environment(open_access, environ)
    assert environ == {}  # no basic auth: a login from elsewhere does not sneak in


@pytest.mark.parametrize("args", [
    ["--address=127.0.0.2"], ["--address", "127.0.0.2"], ["-address=0.0.0.0"],
    ["--port=80"], ["--persistent=True", "--", "--address=0.0.0.0"],
    ["--basic_auth=u:p"], ["--basic-auth", "u:p"], ["--auth=.*@example.com"],
    ["--auth-provider=flower.views.auth.GithubLoginHandler"], ["--oauth2_secret=s"],
    ["--oauth2-key=k"], ["--oauth2_redirect_uri=http://x/login"], ["--cookie-secret=c"],
    ["--unix_socket=/tmp/flower.sock"], ["--conf=flowerconfig.py"], ["--read_only=False"],
    ["--READ-ONLY"],
])
def test_flower_options_that_change_address_or_login_are_refused(args: list[str]) -> None:
    with pytest.raises(FlowerOptionsError, match="after --"):
        user_options(args, {})


def test_other_flower_options_pass_and_shape_the_printed_url() -> None:
    found = user_options(["--persistent=True", "--url-prefix=/flower", "--xheaders",
                          "--certfile=c.pem"],
                         {"FLOWER_KEYFILE": "k.pem", "FLOWER_MAX_TASKS": "10"})
    assert found["persistent"] == "True"
    assert found["xheaders"] == ""
    assert found["max_tasks"] == "10"  # read from the environment, as Flower does
    access = resolve_access(Settings(redis_url="redis://127.0.0.1:1/0"), address="::1",
                            port=5555, user=None, password="pw", auth=True)
    served = with_user_options(access, found)
    assert served.url == "https://[::1]:5555/flower/"
    assert with_user_options(access, {}).url == "http://[::1]:5555"


def test_no_flower_option_or_variable_overrides_the_login() -> None:
    """What mpq flower decides is said on Flower's command line (which wins over FLOWER_*
    variables); the flowerconfig.py Flower would read from the cwd is replaced."""
    access = resolve_access(Settings(redis_url="redis://127.0.0.1:1/0"), address=None,
                            port=None, user="u", password="pw", auth=True)
    argv = flower_argv(access)
    for owned in ("--auth=", "--auth_provider=", "--unix_socket=", "--conf=/dev/null",
                  "--address=127.0.0.1", "--port=5555", "--read_only=True"):
        assert owned in argv
    oauth = OAuthLogin("github", ".*@example.com")
    sso = resolve_access(Settings(redis_url="redis://127.0.0.1:1/0"), address=None,
                         port=None, user=None, password=None, auth=True, oauth=oauth)
    assert (sso.user, sso.password, sso.auth) == (None, None, True)
    assert "--auth=.*@example.com" in flower_argv(sso)
    assert "--auth_provider=flower.views.auth.GithubLoginHandler" in flower_argv(sso)


@pytest.mark.parametrize(("user", "password"), [("a,b", "pw"), ("a:b", "pw"), ("u", "p,w")])
def test_logins_flower_would_split_are_refused(user: str, password: str) -> None:
    with pytest.raises(FlowerOptionsError, match="comma"):
        resolve_access(Settings(redis_url="redis://127.0.0.1:1/0"), address=None, port=None,
                       user=user, password=password, auth=True)


OAUTH_ENV = {"FLOWER_OAUTH2_KEY": "client-id", "FLOWER_OAUTH2_SECRET": "client-secret",
             "FLOWER_OAUTH2_REDIRECT_URI": "http://127.0.0.1:5555/login"}


def test_oauth_login_needs_a_provider_a_pattern_and_the_client_in_the_environment() -> None:
    assert oauth_login(None, None, {}) is None
    login = oauth_login("github", ".*@example.com", OAUTH_ENV)
    assert login == OAuthLogin("github", ".*@example.com")
    for provider, emails, environ, message in [
        ("nope", ".*@example.com", OAUTH_ENV, "one of"),
        (None, ".*@example.com", OAUTH_ENV, "one of"),
        ("github", None, OAUTH_ENV, "--oauth-emails"),
        ("github", ".*@*.com", OAUTH_ENV, "--oauth-emails"),
        ("github", ".*@example.com", {}, "FLOWER_OAUTH2_KEY"),
        ("okta", ".*@example.com", OAUTH_ENV, "FLOWER_OAUTH2_OKTA_BASE_URL"),
    ]:
        with pytest.raises(FlowerOptionsError, match=message):
            oauth_login(provider, emails, environ)
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    sso = resolve_access(settings, address="0.0.0.0", port=None, user=None, password=None,
                         auth=True, oauth=login)
    check_exposure(sso.address, auth=sso.auth, force_open=False)  # OAuth counts as a login
    with pytest.raises(FlowerOptionsError, match="--no-auth"):
        resolve_access(settings, address=None, port=None, user=None, password=None,
                       auth=False, oauth=login)


def _flower_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producer.flower", "--port", "0", *args],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("args", "message"), [
    # The review's case: it served every page without login on 127.0.0.2.
    (["--no-auth", "--", "--address=127.0.0.2"], "--address after --"),
    (["--", "--basic-auth", "u:p"], "MPQ_FLOWER_PASSWORD"),
    (["--password", "pw"], "MPQ_FLOWER_PASSWORD or pass --password-file"),
    (["--oauth-provider", "github", "--oauth-emails", ".*@example.com"], "FLOWER_OAUTH2_KEY"),
])
def test_flower_command_refuses(redis_url: str, args: list[str], message: str) -> None:
    from workers import worker_env

    result = _flower_command(worker_env(Settings(redis_url=redis_url), "http://127.0.0.1:9"),
                             *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_password_is_on_no_command_line(redis_url: str, tmp_path: Path) -> None:
    """Flower gets the login in its environment (the login works, and no process shows the
    password); FLOWER_* variables for what mpq flower decides do not change what it serves."""
    from workers import worker_env

    password = "FLOWERPW-cmdline-canary-5"
    (tmp_path / "password").write_text(password + "\n")
    env = worker_env(Settings(redis_url=redis_url, key_prefix="mpqtest-flowerps:"),
                     "http://127.0.0.1:9")
    env.update(FLOWER_BASIC_AUTH="intruder:pw", FLOWER_AUTH=".*@example.com",
               FLOWER_UNIX_SOCKET=str(tmp_path / "flower.sock"))
    flower = start_flower(env, tmp_path / "f.log", "--password-file",
                          str(tmp_path / "password"), login=("mpq", password))
    try:
        assert flower.get("/api/workers").status_code == 200
        assert flower.get("/api/workers", auth=("intruder", "pw")).status_code == 401
        assert not (tmp_path / "flower.sock").exists()
        lines = command_lines().values()
        assert any(b"producer.flower" in line for line in lines)
        assert not [line for line in lines if password.encode() in line]
    finally:
        assert flower.stop() == 0


def test_oauth_login_replaces_basic_auth(redis_url: str, tmp_path: Path) -> None:
    from workers import worker_env

    env = {**worker_env(Settings(redis_url=redis_url, key_prefix="mpqtest-flowersso:"),
                        "http://127.0.0.1:9"), **OAUTH_ENV}
    flower = start_flower(env, tmp_path / "f.log", "--oauth-provider", "github",
                          "--oauth-emails", ".*@example.com", login=("", ""))
    try:
        assert "login with github as .*@example.com" in flower.log.read_text()
        assert "password" not in flower.log.read_text()
        page = httpx.get(f"{flower.url}/tasks", timeout=10)
        assert page.status_code == 302
        assert page.headers["location"].startswith("/login")
        login = httpx.get(f"{flower.url}/login", timeout=10)
        assert login.status_code == 302
        assert login.headers["location"].startswith("https://github.com/login/oauth/authorize")
        assert "client_id=client-id" in login.headers["location"]
        assert "client-secret" not in login.headers["location"]
        assert httpx.get(f"{flower.url}/api/workers", timeout=10).status_code != 200
        assert not [line for line in command_lines().values() if b"client-secret" in line]
    finally:
        assert flower.stop() == 0


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
    assert f"batch={BATCH}" in summary
    assert "custom_id=line-1" in summary
    everything = json.dumps(scenario.flower.get("/api/tasks").json())
    assert PROMPT not in everything
    assert scenario.flower.password not in everything


def test_batch_lines_show_their_batch_priority_share_and_jobs(scenario: Scenario) -> None:
    task = scenario.tasks[scenario.lines[0].id]
    assert task["name"] == LINES_TASK
    assert task["state"] == "SUCCESS"
    assert task["args"].startswith(f"batch={LINES_BATCH} priority=1 share=100% "
                                   f"proxy={scenario.proxy} lines=3 jobs=")
    assert all(job.id in task["args"] for job in scenario.lines)
    assert PROMPT not in json.dumps(task)


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
    succeeded = len(scenario.ok) + len(scenario.lines)
    samples = _scrape_until(url, lambda s: sample(
        s, "mpq_jobs_total", kind="chat", state="succeeded") >= succeeded)
    assert any(name == "flower_events_total" for name, _ in samples)
    assert sample(samples, "mpq_jobs_total", kind="chat", state="succeeded") == succeeded
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
    assert sample(samples, "mpq_jobs_total", kind="chat", state="succeeded") == len(
        scenario.ok) + len(scenario.lines)
    assert sample(samples, "mpq_jobs_total", kind="chat", state="failed") == 2
    assert sample(samples, "mpq_jobs_total", kind="chat", state="retrying") == attempts - 1
    assert sample(samples, "mpq_jobs_total", kind="mgmt_get", state="succeeded") == 1
    assert sample(samples, "mpq_tokens_total", proxy=proxy, type="prompt") > 0
    assert sample(samples, "mpq_tokens_total", proxy=proxy, type="completion") > 0
    assert sample(samples, "mpq_upstream_429_total", proxy=limited) == attempts
    assert sample(samples, "mpq_attempt_errors_total", proxy=limited,
                  error="RateLimitedError") == attempts
    assert sample(samples, "mpq_stream_chunks_total", proxy=proxy) > 2
    assert sample(samples, "mpq_queue_length", queue="inference", lane="interactive") == 0
    assert sample(samples, "mpq_metrics_up") == 1


async def test_exporter_reads_counters_and_prefixed_queues(
    redis_url: str, client: aioredis.Redis
) -> None:
    keys = Keys("mpqtest-exporter:")
    recorder = MetricsRecorder(client, keys.metrics(), flush_interval_s=0.05)
    recorder.job_started(JobKind.CHAT)
    recorder.job_outcome(JobKind.CHAT, JobStatus.SUCCEEDED)
    recorder.tokens("p1", {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12})
    recorder.tokens("p1", {"input_tokens": 3, "output_tokens": 2})
    recorder.permit("p1", 1.5)
    recorder.permit("p1", 0.001)  # one round trip: not a wait
    recorder.permit_requeued("p1", 0.25)
    recorder.stream_chunks("p1", 9)
    await recorder.aclose()
    await client.hset(keys.metrics(), mapping={
        "not json": 1, encode_field("mpq_unknown", ()): 1,
        encode_field("mpq_tokens", (("proxy", "p1"),)): 1})  # labels missing: ignored
    await client.lpush(keys.broker_queue("management"), "m1", "m2")
    await client.lpush(keys.broker_queue("inference", 9), "b1")  # a batch line
    server = serve_metrics(Settings(redis_url=redis_url, key_prefix=keys.prefix),
                           address="127.0.0.1", port=0)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            samples = parse_samples((await http.get(server.url)).text)
    finally:
        server.close()
        await client.delete(keys.metrics(), keys.broker_queue("management"),
                            keys.broker_queue("inference", 9))
    assert sample(samples, "mpq_jobs_total", kind="chat", state="running") == 1
    assert sample(samples, "mpq_jobs_total", kind="chat", state="succeeded") == 1
    assert sample(samples, "mpq_tokens_total", proxy="p1", type="prompt") == 10
    assert sample(samples, "mpq_tokens_total", proxy="p1", type="completion") == 7
    assert sample(samples, "mpq_ratelimit_waits_total", proxy="p1", result="waited") == 1
    assert sample(samples, "mpq_ratelimit_waits_total", proxy="p1", result="requeued") == 1
    assert sample(samples, "mpq_ratelimit_wait_seconds_total", proxy="p1") == pytest.approx(
        1.751)
    assert sample(samples, "mpq_stream_chunks_total", proxy="p1") == 9
    assert sample(samples, "mpq_queue_length", queue="management", lane="interactive") == 2
    assert sample(samples, "mpq_queue_length", queue="inference", lane="interactive") == 0
    assert sample(samples, "mpq_queue_length", queue="inference", lane="batch") == 1
    assert sample(samples, "mpq_metrics_up") == 1


def test_metrics_command_serves_until_sigterm(redis_url: str) -> None:
    from workers import worker_env

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
        assert ("mpq_queue_length", frozenset({("queue", "inference"),
                                               ("lane", "batch")})) in samples
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr


def test_exporter_reports_redis_down() -> None:
    collector = MpqCollector(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    families = {family.name: family for family in collector.collect()}
    assert families["mpq_metrics_up"].samples[0].value == 0

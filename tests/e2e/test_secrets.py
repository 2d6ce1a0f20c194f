"""Secrets never reach broker messages, Redis, logs, pub/sub events or Flower (DESIGN.md).

A real local stack runs with distinctive credentials, in two modes:

- `signed`: the emulator (`mpq emulator`) verifies AgentRun signatures made with an access
  key id and secret (and also accepts an inbound API key); the workers and beat sign with
  the same key pair.
- `api_key`: the emulator's data plane takes only the inbound API key, which the workers are
  given through `MPQ_MODELPROXY_API_KEY` (skipped while `Settings` has no such field).

Flower runs with basic auth. A proxy and a small batch (plus a streamed chat and a
management job) are submitted while no worker runs, so every broker message can be read
before it is consumed; then the worker, beat and Flower start and the jobs run. The canary
values are then looked for, verbatim and base64-encoded (kombu encodes message bodies), in:

- every key and value of the Redis server (broker queues and unacked messages, job and batch
  hashes, chunk and event streams, the proxy cache, limiter state), before and after the run;
- every message published on any pub/sub channel during the run (Celery events);
- every line the emulator, worker, beat and Flower logged;
- Flower's REST API and its task, tasks and worker pages;
- the command line of every process on the machine while the stack runs (`ps` shows them to
  every user).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import redis
from polling import wait_until
from processes import command_lines

from core.contract import JobStatus
from core.embedded_redis import free_port, redis_server
from core.settings import Settings
from modelproxy import Config, ModelProxy, ModelProxyCreateInput
from producer.client import Client
from producer.local_stack import LocalStack, StackOptions, local_stack, stop_processes

pytestmark = pytest.mark.timeout(180)

ACCESS_KEY_ID = "AKID-mpq-secret-canary-1"
ACCESS_KEY_SECRET = "SK-mpq-secret-canary-2"
API_KEY = "APIKEY-mpq-secret-canary-3"
FLOWER_PASSWORD = "FLOWERPW-mpq-secret-canary-4"
SECRETS = (ACCESS_KEY_ID, ACCESS_KEY_SECRET, API_KEY, FLOWER_PASSWORD)
# How workers would be given the inbound API key (see the module docstring).
WORKER_API_KEY_ENV = "MPQ_MODELPROXY_API_KEY"
WORKER_API_KEY_FIELD = "modelproxy_api_key"
BATCH_SIZE = 8
START_TIMEOUT_S = 30.0
EMULATOR_STOP_TIMEOUT_S = 10.0
WAIT_S = 60.0


def needles(secret: str) -> dict[bytes, str]:
    """The secret as bytes, and the parts of its base64 encoding that do not depend on what
    comes before or after it (one per alignment), each mapped to how it was found."""
    raw = secret.encode()
    found = {raw: "verbatim"}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        # The first ceil(offset*4/3) characters mix in the padding bytes; the last 4 may mix
        # in whatever follows the secret.
        stable = encoded[(offset * 4 + 2) // 3: -4]
        if len(stable) >= 12:
            found[stable] = f"base64 (alignment {offset})"
    return found


def needles_of(secrets: tuple[str, ...]) -> dict[bytes, tuple[str, str]]:
    return {needle: (secret, how) for secret in secrets
            for needle, how in needles(secret).items()}


@dataclass
class Findings:
    """Where a secret was seen: `where` -> which secret, how encoded."""

    secrets: tuple[str, ...] = SECRETS
    seen: list[str] = field(default_factory=list)
    scanned: int = 0  # how many values were looked at (the scan must not be empty)

    def __post_init__(self) -> None:
        self._needles = needles_of(self.secrets)

    def scan(self, where: str, data: bytes | str) -> None:
        blob = data.encode(errors="surrogateescape") if isinstance(data, str) else data
        self.scanned += 1
        for needle, (secret, how) in self._needles.items():
            if needle in blob:
                self.seen.append(f"{where}: {secret} ({how})")


def test_needles_find_a_secret_inside_base64() -> None:
    for secret in SECRETS:
        for prefix in (b"", b"x", b"xy", b'{"a": "'):
            findings = Findings()
            findings.scan("t", base64.b64encode(prefix + secret.encode() + b'", "b": 1}'))
            assert findings.seen, (secret, prefix)


def scan_redis(client: redis.Redis, findings: Findings, label: str) -> int:
    """Every key (its name too) and every value of every type; returns the number of keys."""
    keys = 0
    for key in client.scan_iter(count=1000):
        keys += 1
        where = f"{label} {key.decode(errors='replace')}"
        findings.scan(f"{where} (key name)", key)
        for value in _values(client, key):
            findings.scan(where, value)
    return keys


def _values(client: redis.Redis, key: bytes) -> list[bytes]:
    """Every value under `key` (redis-py's replies are loosely typed: read them as Any)."""
    kind: Any = client.type(key)
    reply: Any
    if kind == b"string":
        reply = [client.get(key) or b""]
    elif kind == b"hash":
        reply = [part for item in client.hgetall(key).items() for part in item]
    elif kind == b"list":
        reply = client.lrange(key, 0, -1)
    elif kind == b"set":
        reply = client.smembers(key)
    elif kind == b"zset":
        scored: Any = client.zrange(key, 0, -1, withscores=True)
        reply = [member for member, _ in scored]
    elif kind == b"stream":
        entries: Any = client.xrange(key)
        reply = [part for _, entry in entries for item in entry.items() for part in item]
    else:
        reply = []
    return [value if isinstance(value, bytes) else str(value).encode() for value in reply]


class PubSubRecorder:
    """Every message published on any channel while it runs (Celery's events among them)."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True)
        self._pubsub.psubscribe("*")
        self._stop = threading.Event()
        self.messages: list[tuple[bytes, bytes]] = []
        self._thread = threading.Thread(target=self._run, name="pubsub-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is not None and isinstance(message.get("data"), bytes):
                self.messages.append((message["channel"], message["data"]))

    def stop(self) -> None:
        """Stop recording (safe to call twice)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


@contextlib.contextmanager
def emulator_process(log: Path, signed: bool) -> Iterator[str]:
    """`mpq emulator` as a user runs it: with the canary key pair in its environment
    (signature mode) when `signed`, and always with the canary API key (in
    MPQ_EMULATOR_API_KEYS: a key on the command line is refused)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTRUN_", "MPQ_"))}
    env["MPQ_EMULATOR_API_KEYS"] = API_KEY
    if signed:
        env.update(AGENTRUN_ACCESS_KEY_ID=ACCESS_KEY_ID,
                   AGENTRUN_ACCESS_KEY_SECRET=ACCESS_KEY_SECRET)
    command = [sys.executable, "-m", "producer.cli", "emulator", "--port", str(port),
               "--lifecycle-delay-s", "0.1"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/_emulator/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        stop_processes([process], EMULATOR_STOP_TIMEOUT_S)


def chat_line(index: int) -> str:
    return json.dumps({"custom_id": f"s-{index}", "method": "POST",
                       "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": f"question {index}"}],
                                **({"stream": False} if index % 2 else {})}})


@dataclass
class Run:
    """What one run through the stack left to look at."""

    mode: str
    findings: Findings
    broker_messages: int
    redis_keys_after: int
    pubsub_messages: int
    log_lines: int
    flower_tasks: int
    statuses: dict[str, int]


@pytest.fixture(scope="module", params=["signed", "api_key"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    mode: str = request.param
    signed = mode == "signed"
    if not signed and WORKER_API_KEY_FIELD not in Settings.model_fields:
        pytest.skip(f"workers cannot be given an API key: no {WORKER_API_KEY_ENV} setting")
    tmp = tmp_path_factory.mktemp(f"secrets-{mode}")
    with pytest.MonkeyPatch.context() as env, redis_server(None) as redis_url, \
            emulator_process(tmp / "emulator.log", signed) as emulator_url:
        # The embedded server's generated password is a secret like the others.
        redis_password = urlparse(redis_url).password
        assert redis_password, "the embedded Redis must have a password"
        findings = Findings((*SECRETS, redis_password))
        for name in [k for k in os.environ if k.startswith(("MPQ_", "AGENTRUN_", "ALIBABA_"))]:
            env.delenv(name)
        env.delenv("REDIS_URL", raising=False)
        # What every process of the stack (and this one) reads: the canaries, the endpoint.
        if signed:
            env.setenv("AGENTRUN_ACCESS_KEY_ID", ACCESS_KEY_ID)
            env.setenv("AGENTRUN_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
        env.setenv(WORKER_API_KEY_ENV, API_KEY)  # in signed mode too: given, never shown
        env.setenv("AGENTRUN_CONTROL_ENDPOINT", emulator_url)
        env.setenv("AGENTRUN_DATA_ENDPOINT", emulator_url)
        env.setenv("MPQ_FLOWER_PASSWORD", FLOWER_PASSWORD)
        env.setenv("MPQ_REFRESH_INTERVAL_S", "1")  # beat refreshes the cache during the run
        _check_auth_is_on(emulator_url, signed)
        recorder = PubSubRecorder(redis_url)
        client = redis.Redis.from_url(redis_url)
        try:
            proxy = _create_proxy()
            with Client(Settings(redis_url=redis_url)) as mpq:
                batch, refused = mpq.submit_batch([chat_line(i) for i in range(BATCH_SIZE)],
                                                  proxy)
                assert refused == []
                stream_job = mpq.chat(proxy, [{"role": "user", "content": "stream"}],
                                      stream=True)
                get_job = mpq.get_proxy(proxy)
                # No worker yet: every job waits, in the broker's queues or (the batch's
                # lines, until a worker's feeder sends them) in the batch's pending lists.
                queued = sum(client.llen(key) for pattern in ("*broker*", "*:pending:*")
                             for key in client.scan_iter(match=pattern)
                             if client.type(key) == b"list")
                scan_redis(client, findings, "before the worker:")
                options = StackOptions(redis_url=redis_url, slots=20, with_beat=True,
                                       with_flower=True)
                with local_stack(options) as stack:
                    final = batch.wait(timeout=WAIT_S)
                    stream_job.result(WAIT_S)  # raises if the job failed
                    get_job.result(WAIT_S)
                    statuses = {s.value: n for s, n in final.counts.items() if n}
                    # A beat refresh ran (its log lines are scanned); the last task events
                    # land in Flower (and the recorder) while `_scan_flower` waits for them.
                    wait_until(lambda: _refreshed(stack.log_dir), WAIT_S, 0.1,
                               what="a beat refresh of the proxies in the worker's log")
                    tasks = _scan_flower(stack, findings)
                    _scan_command_lines(findings)
                    log_lines = _scan_logs([*stack.log_dir.iterdir(), tmp / "emulator.log"],
                                           findings)
            recorder.stop()
            for channel, data in recorder.messages:
                findings.scan(f"pub/sub {channel.decode(errors='replace')}", data)
            keys_after = scan_redis(client, findings, "after the run:")
        finally:
            recorder.stop()
            client.close()
        yield Run(mode, findings, queued, keys_after, len(recorder.messages), log_lines,
                  tasks, statuses)


def _check_auth_is_on(url: str, signed: bool) -> None:
    """Signature mode (or the API key) is live, so the canaries really are in use."""
    unsigned = httpx.get(f"{url}/2025-09-10/agents/model-proxies", timeout=5)
    assert unsigned.status_code == (401 if signed else 200), unsigned.text
    no_key = httpx.post(f"{url}/models/none/v1/chat/completions", json={}, timeout=5)
    assert no_key.status_code == 401, no_key.text
    with_key = httpx.post(f"{url}/models/none/v1/chat/completions", json={}, timeout=5,
                          headers={"Authorization": f"Bearer {API_KEY}"})
    assert with_key.status_code == 404, with_key.text  # past auth: the proxy is unknown


def _create_proxy() -> str:
    """Directly (signed with the canary key pair in signed mode), so the batch has a READY
    proxy before any worker runs."""
    name = f"secrets-{os.getpid()}"
    spec = ModelProxyCreateInput.model_validate({
        "modelProxyName": name, "proxyConfig": {"endpoints": [{"modelNames": ["m1"]}]}})
    proxy = ModelProxy.create(spec, config=Config())
    proxy.wait_until_ready_or_failed(interval_seconds=0.1, timeout_seconds=20)
    return name


def _refreshed(log_dir: Path) -> bool:
    return any(b"proxy refresh:" in path.read_bytes() for path in log_dir.glob("*.log"))


def _scan_logs(paths: list[Path], findings: Findings) -> int:
    lines = 0
    for path in paths:
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            findings.scan(f"log {path.name}:{number}", line)
            lines += 1
    return lines


def _scan_command_lines(findings: Findings) -> None:
    for pid, cmdline in command_lines().items():
        findings.scan(f"command line of process {pid}", cmdline)


def _scan_flower(stack: LocalStack, findings: Findings) -> int:
    """Flower's REST API and pages, once it has seen every task finish."""
    assert stack.flower_url is not None
    auth = (stack.flower_user, stack.flower_password)
    with httpx.Client(base_url=stack.flower_url, auth=auth, timeout=15) as flower:
        deadline = time.monotonic() + WAIT_S
        while True:
            listed = flower.get("/api/tasks")
            listed.raise_for_status()
            tasks: dict[str, Any] = listed.json()
            done = [t for t in tasks.values() if t.get("state") in ("SUCCESS", "FAILURE")]
            if len(done) >= BATCH_SIZE + 2 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        findings.scan("flower /api/tasks", listed.content)
        for task_id in list(tasks)[:BATCH_SIZE + 4]:
            for path in (f"/task/{task_id}", f"/api/task/info/{task_id}"):
                page = flower.get(path)
                assert page.status_code == 200, (path, page.status_code)
                findings.scan(f"flower {path}", page.content)
        table: dict[str, str | int] = {"draw": 1, "start": 0, "length": 100, "search[value]": "",
                 "order[0][column]": 0, "order[0][dir]": "asc", "columns[0][data]": "name"}
        pages: list[tuple[str, dict[str, str | int]]] = [
            ("/tasks", {}), ("/tasks/datatable", table), ("/api/workers", {"refresh": 1}),
            ("/workers", {}), ("/api/task/types", {}), ("/api/queues/length", {}),
            ("/broker", {}), ("/metrics", {})]
        for path, params in pages:
            page = flower.get(path, params=params)
            assert page.status_code == 200, (path, page.status_code)
            findings.scan(f"flower {path}", page.content)
        workers: dict[str, Any] = flower.get("/api/workers").json()
        for name in workers:
            page = flower.get(f"/worker/{name}")
            assert page.status_code == 200, (name, page.status_code)
            findings.scan(f"flower /worker/{name}", page.content)
    return len(tasks)


def test_the_run_used_the_secrets(run: Run) -> None:
    """The jobs ran through authenticated requests (the emulator refuses others), so a
    clean scan means the secrets stayed out, not that they were never there."""
    assert run.statuses == {JobStatus.SUCCEEDED.value: BATCH_SIZE}, run.mode
    assert run.broker_messages >= BATCH_SIZE + 2
    assert run.flower_tasks >= 3  # the batch's lines (one message or more), stream, get
    assert run.pubsub_messages > 0
    assert run.log_lines > 0
    assert run.redis_keys_after > BATCH_SIZE


def test_no_secret_anywhere(run: Run) -> None:
    assert run.findings.scanned > 100
    assert run.findings.seen == [], "\n".join(run.findings.seen)

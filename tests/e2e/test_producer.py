"""The producer as users run it: the `mpq` CLI and the Python API against a real local
stack (Redis-compatible server, emulator process, worker process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from polling import wait_until

from core.embedded_redis import redis_server
from core.settings import Settings
from modelproxy import ModelProxyCreateInput, ProxyConfig, ProxyConfigEndpoint
from modelproxy.portal import iterate_sync
from producer.client import AsyncClient, Client
from producer.local_stack import LocalStack, StackOptions, local_stack

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    options = StackOptions(slots=100, with_beat=False, with_flower=False,
                           emulator_args=["--lifecycle-delay-s", "0.1", "--tpot-s", "0.01"])
    with redis_server(None) as url:
        options.redis_url = url
        with local_stack(options) as running:
            yield running


def mpq(stack: LocalStack | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MPQ_", "REDIS_URL"))}
    if stack is not None:
        base["MPQ_REDIS_URL"] = stack.redis_url
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=150, check=False)


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[Client]:
    with Client(Settings(redis_url=stack.redis_url)) as mpq_client:
        yield mpq_client


def new_proxy(client: Client, **policies: Any) -> str:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    spec = ModelProxyCreateInput.model_validate({
        "modelProxyName": name,
        "proxyConfig": {"endpoints": [{"modelNames": ["m1"]}], "policies": policies}})
    client.create_proxy(spec).result(60)
    client.wait_proxy(name).result(60)
    return name


def batch_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def chat_line(custom_id: str, text: str = "hi") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": text}]}})


def test_batch_with_invalid_lines_runs_the_valid_ones(
    stack: LocalStack, client: Client, tmp_path: Path
) -> None:
    proxy = new_proxy(client)
    lines = [chat_line(f"ok-{i}", f"question {i}") for i in range(30)]
    lines.insert(5, "{not json")
    lines.insert(10, json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}))
    lines.append(chat_line("ok-3"))
    out = tmp_path / "results.jsonl"
    result = mpq(stack, "batch", "submit", str(batch_file(tmp_path, lines)), "--proxy", proxy,
                 "--wait", "--results", str(out))
    assert result.returncode == 1, result.stderr  # 3 lines were refused
    assert "line 6:" in result.stderr
    assert "line 11:" in result.stderr
    assert 'duplicate custom_id "ok-3"' in result.stderr
    assert "Traceback" not in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in rows) == sorted(f"ok-{i}" for i in range(30))
    by_id = {r["custom_id"]: r for r in rows}
    reply = client.chat(proxy, [{"role": "user", "content": "question 7"}]).final_text(60)
    assert by_id["ok-7"]["response"]["body"]["choices"][0]["message"]["content"] == reply
    batch_id = result.stdout.split()[1]
    errors = mpq(stack, "batch", "errors", batch_id)
    assert [json.loads(line)["error"]["line"] for line in errors.stdout.splitlines()] == [6, 11, 33]


def test_a_batch_of_only_invalid_lines_ends_at_once(
    stack: LocalStack, client: Client, tmp_path: Path
) -> None:
    proxy = new_proxy(client)
    path = batch_file(tmp_path, ["{not json", "[]"])
    result = mpq(stack, "batch", "submit", str(path), "--proxy", proxy, "--wait")
    assert result.returncode == 1, result.stderr  # every line was refused
    batch_id = result.stdout.split()[1]
    info = client.batch(batch_id).info()
    assert (info.status.value, info.total, info.invalid, info.submitting) == (
        "finished", 0, 2, False)


def test_strict_refuses_the_whole_file(stack: LocalStack, client: Client,
                                       tmp_path: Path) -> None:
    proxy = new_proxy(client)
    before = len(client.batches(1000))
    path = batch_file(tmp_path, [chat_line("a"), "[]"])
    result = mpq(stack, "batch", "submit", str(path), "--proxy", proxy, "--strict")
    assert result.returncode == 2
    assert "1 invalid line(s): line 2:" in result.stderr
    assert len(client.batches(1000)) == before


def test_cancel_mid_batch(stack: LocalStack, client: Client, tmp_path: Path) -> None:
    proxy = new_proxy(client, concurrencyLimit=2)
    path = batch_file(tmp_path, [chat_line(f"c-{i}") for i in range(200)])
    submitted = mpq(stack, "batch", "submit", str(path), "--proxy", proxy)
    batch_id = submitted.stdout.split()[1]
    wait_until(lambda: client.batch(batch_id).info().done > 0, 30,
               what=f"batch {batch_id} to be under way (a job final)")
    cancelled = mpq(stack, "batch", "cancel", batch_id)
    assert cancelled.returncode == 0, cancelled.stderr
    final = client.batch(batch_id).wait(timeout=60)
    counts = {status.value: n for status, n in final.counts.items()}
    assert counts["cancelled"] > 100
    assert counts["succeeded"] + counts["cancelled"] == 200
    status = mpq(stack, "batch", "status", batch_id)
    assert f"{counts['cancelled']} cancelled" in status.stdout


def test_a_batch_is_collected_by_another_process(
    stack: LocalStack, client: Client, tmp_path: Path
) -> None:
    proxy = new_proxy(client)
    batch, errors = client.submit_batch([chat_line(f"x-{i}") for i in range(20)], proxy)
    assert errors == []
    waited = mpq(stack, "batch", "wait", batch.id, "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    out = tmp_path / "collected.jsonl"
    collected = mpq(stack, "batch", "results", batch.id, "-o", str(out))
    assert collected.returncode == 0
    assert {json.loads(line)["custom_id"] for line in out.read_text().splitlines()} == {
        f"x-{i}" for i in range(20)}
    listed = mpq(stack, "batch", "list")
    assert batch.id[:8] in listed.stdout


def test_chat_streams_the_same_text_as_without_stream(stack: LocalStack, client: Client) -> None:
    proxy = new_proxy(client)
    plain = mpq(stack, "chat", proxy, "tell me about queues")
    streamed = mpq(stack, "chat", proxy, "tell me about queues", "--stream")
    assert plain.returncode == streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip() == plain.stdout.strip()
    assert plain.stdout.strip()


def test_python_api_stream_restarts_on_a_new_attempt(stack: LocalStack, client: Client) -> None:
    proxy = new_proxy(client)
    faults = f"{stack.modelproxy_url}/_emulator/proxies/{proxy}/faults"
    httpx.put(faults, json={"cut_stream_rate": 1.0, "cut_after_chunks": 3}).raise_for_status()
    job = client.chat(proxy, [{"role": "user", "content": "x"}], stream=True)
    kinds: list[str] = []
    for event in job.stream():
        kinds.append(event.kind)
        if event.kind == "error":
            httpx.delete(faults).raise_for_status()
    assert "restart" in kinds
    assert kinds[-1] == "done"
    final = [e.text for e in _after_last_restart(job)]
    assert "".join(final) == job.final_text(30)


def _after_last_restart(job: Any) -> list[Any]:
    events = list(job.stream())
    last = max((i for i, e in enumerate(events) if e.kind == "restart"), default=-1)
    return [e for e in events[last + 1:] if e.kind == "delta"]


async def test_async_api_submits_and_waits(stack: LocalStack) -> None:
    async with AsyncClient(Settings(redis_url=stack.redis_url)) as mpq_client:
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        spec = ModelProxyCreateInput(model_proxy_name=name, proxy_config=ProxyConfig(
            endpoints=[ProxyConfigEndpoint(model_names=["m1"])]))
        await (await mpq_client.create_proxy(spec)).result(60)
        await (await mpq_client.wait_proxy(name)).result(60)
        job = await mpq_client.responses(name, "hello", stream=True)
        texts = [event.text async for event in job.stream() if event.kind == "delta"]
        assert "".join(texts) == await job.final_text(30)
        with pytest.raises(ValueError, match="messages"):
            await mpq_client.chat(name, [])


def test_proxy_commands(stack: LocalStack) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = mpq(stack, "proxy", "create", name, "--model", "m1", "--tpm", "100000", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["status"] == "READY"
    assert name in mpq(stack, "proxy", "list").stdout
    updated = mpq(stack, "proxy", "update", name, "--description", "new one", "--json")
    assert json.loads(updated.stdout)["description"] == "new one"
    got = json.loads(mpq(stack, "proxy", "get", name, "--json").stdout)
    assert got["proxyConfig"]["policies"]["tokenRateLimiter"] == {"tpm": 100000}
    assert "DELETING" in mpq(stack, "proxy", "delete", name).stdout


def test_job_commands_follow_one_job(stack: LocalStack, client: Client) -> None:
    proxy = new_proxy(client)
    job = client.chat(proxy, [{"role": "user", "content": "one job"}])
    text = job.final_text(60)
    result = mpq(stack, "job", "result", job.id)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text + "\n"
    whole = json.loads(mpq(stack, "job", "result", job.id, "--json").stdout)
    assert (whole["status"], whole["attempt"], whole["proxy"]) == ("succeeded", 1, proxy)
    status = mpq(stack, "job", "status", job.id)
    assert status.stdout.startswith(f"job {job.id}: succeeded (attempt 1)\n"), status.stdout
    assert f"  proxy      {proxy}\n" in status.stdout
    cancel = mpq(stack, "job", "cancel", job.id)
    assert cancel.stdout == f"job {job.id} already succeeded: nothing to cancel\n"

    failed = client.chat("no-such-proxy", [{"role": "user", "content": "x"}])
    waited = mpq(stack, "job", "result", failed.id, "--timeout", "60")
    assert waited.returncode == 1, waited.stderr
    assert waited.stdout == ""
    assert waited.stderr.startswith(f"error: job {failed.id} failed: ")
    assert "does not exist" in waited.stderr


def test_custom_ids_with_markup_are_shown_as_typed(stack: LocalStack, client: Client,
                                                    tmp_path: Path) -> None:
    proxy = new_proxy(client)
    good = batch_file(tmp_path, [chat_line("[/bold]"), chat_line("[red]x\\")])
    ok = mpq(stack, "batch", "submit", str(good), "--proxy", proxy, "--wait")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("batch "), ok.stdout
    batch_id = ok.stdout.split()[1]
    assert {r["custom_id"] for r in client.batch(batch_id).results()} == {"[/bold]", "[red]x\\"}

    bad = batch_file(tmp_path, [chat_line("[/bold]"), chat_line("[/bold]")])
    refused = mpq(stack, "batch", "submit", str(bad), "--proxy", proxy, "--wait")
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout.startswith("batch "), refused.stdout
    assert 'line 2: duplicate custom_id "[/bold]" (first on line 1)' in refused.stderr
    assert "Traceback" not in refused.stderr


CLI_ERRORS = [
    (["batch", "submit", "/nope/missing.jsonl", "--proxy", "p"], 2, "no such file"),
    (["batch", "status", "0123456789abcdef"], 3, "no batch"),
    (["proxy", "update", "p"], 2, "nothing to change"),
    (["chat", "no-such-proxy", "hi", "--timeout", "30"], 1, "does not exist"),
]


@pytest.mark.parametrize(("args", "code", "message"), CLI_ERRORS)
def test_cli_errors_are_one_clear_line(stack: LocalStack, args: list[str], code: int,
                                       message: str) -> None:
    result = mpq(stack, *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_cli_error_for_a_bad_spec_file(stack: LocalStack, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("{bad json")
    result = mpq(stack, "proxy", "create", "x", "--file", str(spec))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_cli_without_or_with_unreachable_redis() -> None:
    missing = mpq(None, "batch", "list")
    assert missing.returncode == 2
    assert "MPQ_REDIS_URL" in missing.stderr
    unreachable = mpq(None, "batch", "list", MPQ_REDIS_URL="redis://127.0.0.1:1/0")
    assert unreachable.returncode == 4, unreachable.stderr
    assert "cannot reach Redis" in unreachable.stderr


def test_iterate_sync_is_reusable() -> None:
    async def numbers() -> Any:
        for i in range(3):
            yield i

    assert list(iterate_sync(numbers())) == [0, 1, 2]

"""`mpq job …`, terminal safety of what the CLI prints, and the proxy name rule at
submission, in-process (typer's `CliRunner`) against a private embedded server. No worker
runs here: jobs are written to Redis in the state a test needs."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.markup import render
from typer.testing import CliRunner, Result

from core.contract import PROXY_NAME_RULE, JobKind, JobRecord, JobStatus
from core.keys import Keys
from core.store import JobStore
from modelproxy.portal import run_sync
from producer import cli
from producer.cli import app
from producer.jobs import StreamEvent
from producer.terminal import escape_markup, safe_json, strip_controls

runner = CliRunner()

ESC = "\x1b"
# Clears the screen, then a hyperlink whose text hides where it points (OSC 8).
HOSTILE = ("before\x1b[2J after "
           "\x1b]8;;https://evil.example/\x1b\\click here\x1b]8;;\x1b\\ done\r\n\x9b31mred")
HOSTILE_SHOWN = "before after click here done\nred"
MARKUP = "[/bold]"


@pytest.fixture
def env(redis_url: str, prefix: str) -> dict[str, str | None]:
    return {"MPQ_REDIS_URL": redis_url, "REDIS_URL": None, "MPQ_BROKER_URL": None,
            "MPQ_KEY_PREFIX": prefix, "COLUMNS": "200", "NO_COLOR": "1"}


def invoke(argv: Sequence[str], env: dict[str, str | None]) -> Result:
    result = runner.invoke(app, list(argv), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def put(env: dict[str, str | None], **fields: Any) -> JobRecord:
    """Write one job record as the store does (no worker will take it)."""
    record = JobRecord.model_validate({"kind": JobKind.CHAT, "proxy": "p1",
                                       "request": {"messages": []}, **fields})

    async def write() -> None:
        client = aioredis.Redis.from_url(str(env["MPQ_REDIS_URL"]))
        try:
            await JobStore(client, Keys(str(env["MPQ_KEY_PREFIX"])), 3600).create_jobs([record])
        finally:
            await client.aclose()

    run_sync(write())
    return record


def chat_result(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


# ---- mpq job status | cancel | result -------------------------------------------------------


def test_status_shows_state_attempt_errors_and_times(env: dict[str, str | None]) -> None:
    record = put(env, status=JobStatus.FAILED, attempt=2, custom_id=MARKUP,
                 error="attempt 2: ServerError: HTTP 503 [/red]\x1b[2J",
                 errors=["attempt 1: boom [bold]", "attempt 2: ServerError: HTTP 503"],
                 started_at=1.7e9, finished_at=1.7e9 + 3)
    result = invoke(["job", "status", record.id], env)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"job {record.id}: failed (attempt 2)"
    assert f"  custom_id  {MARKUP}" in lines
    assert "  error      attempt 2: ServerError: HTTP 503 [/red]" in lines
    assert "  attempt 1 failed: attempt 1: boom [bold]" in lines
    assert any(line.startswith("  finished   20") for line in lines)
    assert ESC not in result.stdout

    as_json = invoke(["job", "status", record.id, "--json"], env)
    assert as_json.exit_code == 0
    assert JobRecord.model_validate(json.loads(as_json.stdout)) == record
    assert ESC not in as_json.stdout  # JSON escapes it


def test_result_prints_model_text_without_controls_and_raw_keeps_them(
    env: dict[str, str | None],
) -> None:
    record = put(env, status=JobStatus.SUCCEEDED, result=chat_result(HOSTILE + MARKUP))
    shown = invoke(["job", "result", record.id], env)
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout == HOSTILE_SHOWN + MARKUP + "\n"
    raw = invoke(["job", "result", record.id, "--raw"], env)
    assert raw.stdout_bytes == (HOSTILE + MARKUP + "\n").encode()  # .stdout folds \r\n


def test_result_of_a_responses_and_of_a_management_job(env: dict[str, str | None]) -> None:
    output = [{"type": "message", "content": [{"type": "output_text", "text": "hi\x1b[31m"}]}]
    responses = put(env, kind=JobKind.RESPONSES, status=JobStatus.SUCCEEDED,
                    request={"input": "x"}, result={"output": output})
    assert invoke(["job", "result", responses.id], env).stdout == "hi\n"
    proxy = {"modelProxyName": "p1", "description": "\x1b]0;pwned\x07 \x9b"}
    management = put(env, kind=JobKind.MGMT_GET, request={"name": "p1"},
                     status=JobStatus.SUCCEEDED, result=proxy)
    shown = invoke(["job", "result", management.id], env)
    assert shown.exit_code == 0
    assert json.loads(shown.stdout) == proxy
    assert ESC not in shown.stdout
    assert "\x9b" not in shown.stdout


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.CANCELLED])
def test_result_of_a_job_that_did_not_succeed_exits_1(env: dict[str, str | None],
                                                     status: JobStatus) -> None:
    error = "attempt 1: ProxyNotFoundError: [bold]no[/] such proxy" if status == "failed" else None
    record = put(env, status=status, error=error)
    result = invoke(["job", "result", record.id], env)
    assert result.exit_code == 1
    assert result.stdout == ""
    expected = f"error: job {record.id} {status.value}" + (f": {error}" if error else "")
    assert result.stderr.strip() == expected
    as_json = invoke(["job", "result", record.id, "--json"], env)
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["status"] == status.value


def test_result_of_an_unfinished_job(env: dict[str, str | None]) -> None:
    record = put(env)
    result = invoke(["job", "result", record.id], env)
    assert result.exit_code == 4
    assert result.stderr.strip() == (f"error: job {record.id} is queued, not finished "
                                     "(--timeout waits for it)")
    waited = invoke(["job", "result", record.id, "--timeout", "0.2"], env)
    assert waited.exit_code == 4
    assert "still queued" in waited.stderr


def test_cancel_one_job(env: dict[str, str | None]) -> None:
    record = put(env)
    first = invoke(["job", "cancel", record.id], env)
    assert (first.exit_code, first.stdout) == (0, f"job {record.id} cancelled\n")
    again = invoke(["job", "cancel", record.id], env)
    assert again.stdout == f"job {record.id} already cancelled: nothing to cancel\n"
    status = invoke(["job", "status", record.id, "--json"], env)
    assert json.loads(status.stdout)["status"] == "cancelled"


@pytest.mark.parametrize("command", ["status", "cancel", "result"])
@pytest.mark.parametrize(("job_id", "code"), [("0123abcd", 3), ("a:b", 2), (MARKUP, 3)])
def test_unknown_or_bad_job_id(env: dict[str, str | None], command: str, job_id: str,
                               code: int) -> None:
    result = invoke(["job", command, "--", job_id], env)
    assert result.exit_code == code
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    if code == 3:
        assert line == f"error: no job {job_id} (unknown, or its results expired)"


# ---- mpq chat: model text -------------------------------------------------------------------


class FakeJob:
    def __init__(self, text: str) -> None:
        self.text = text

    def final_text(self, timeout: float) -> str:
        return self.text

    def stream(self) -> Iterator[StreamEvent]:
        half = len(self.text) // 2  # an escape sequence may be cut between two chunks
        yield StreamEvent("1-0", 1, "error", data={"error": "HTTP 503 [/bold]\x1b[2J"})
        yield StreamEvent("2-0", 2, "restart")
        for n, piece in enumerate((self.text[:half], self.text[half:]), start=3):
            yield StreamEvent(f"{n}-0", 2, "delta", piece)
        yield StreamEvent("5-0", 2, "done")

    def result(self, timeout: float) -> None:
        return None


class FakeClient:
    def chat(self, proxy: str, messages: Any, **kwargs: Any) -> FakeJob:
        return FakeJob(HOSTILE)


@contextmanager
def fake_client() -> Iterator[FakeClient]:
    yield FakeClient()


@pytest.mark.parametrize("stream", [False, True])
def test_chat_prints_model_text_without_controls(monkeypatch: pytest.MonkeyPatch,
                                                 stream: bool) -> None:
    monkeypatch.setattr(cli, "client", fake_client)
    flags = ["--stream"] if stream else []
    shown = invoke(["chat", "p1", "hi", *flags], {"NO_COLOR": "1"})
    assert shown.exit_code == 0, shown.stderr
    assert ESC not in shown.stdout + shown.stderr
    assert "\x9b" not in shown.stdout
    assert "click here" in shown.stdout
    assert "evil.example" not in shown.stdout
    if not stream:
        assert shown.stdout == HOSTILE_SHOWN + "\n"
    else:
        assert "attempt 1 failed: HTTP 503 [/bold]" in shown.stderr
    raw = invoke(["chat", "p1", "hi", "--raw", *flags], {"NO_COLOR": "1"})
    assert HOSTILE.encode() in raw.stdout_bytes


# ---- batches with markup in what users wrote ------------------------------------------------


def chat_line(custom_id: str, **extra: Any) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": "hi"}]}, **extra})


def test_a_batch_with_markup_in_custom_ids_prints_its_id(env: dict[str, str | None],
                                                        tmp_path: Path) -> None:
    path = tmp_path / "[red]in.jsonl"
    path.write_text("\n".join([
        chat_line(MARKUP),
        chat_line(MARKUP),  # duplicate: its message quotes the custom_id
        chat_line("[bold]x", method="[/]"),
        chat_line("x\x1b[2J", proxy="[/bold]"),
    ]) + "\n")
    result = invoke(["batch", "submit", str(path), "--proxy", "p1"], env)
    assert result.exit_code == 0, result.stderr
    match = re.fullmatch(r"batch ([0-9a-f]{32}) submitted\n1 jobs queued, 3 invalid lines\n",
                         result.stdout)
    assert match, result.stdout
    assert f'line 2: duplicate custom_id "{MARKUP}" (first on line 1)' in result.stderr
    assert 'line 3: "method" must be "POST", not "[/]"' in result.stderr
    assert f'line 4: proxy name "{MARKUP}" is not valid' in result.stderr
    assert ESC not in result.stderr

    listed = invoke(["batch", "list"], env)
    assert listed.exit_code == 0
    assert match.group(1) in listed.stdout
    assert "[red]in.jsonl" in listed.stdout

    strict = invoke(["batch", "submit", str(path), "--proxy", "p1", "--strict"], env)
    assert strict.exit_code == 2
    [line] = strict.stderr.splitlines()
    assert line.startswith(f'error: 3 invalid line(s): line 2: duplicate custom_id "{MARKUP}"')


def test_batch_priority_and_share(env: dict[str, str | None], tmp_path: Path) -> None:
    """No worker runs here: the lines wait in their flows, and each batch's share is its
    priority over the sum of the waiting batches' priorities."""
    path = tmp_path / "in.jsonl"
    path.write_text(chat_line("a") + "\n" + chat_line("b") + "\n")
    ids = []
    for priority in ("1", "3"):
        result = invoke(["batch", "submit", str(path), "--proxy", "p1", "--priority", priority],
                        env)
        assert result.exit_code == 0, result.stderr
        ids.append(result.stdout.split()[1])
    listed = {batch["id"]: batch for batch in json.loads(
        invoke(["batch", "list", "--json"], env).stdout)}
    assert [(listed[i]["priority"], listed[i]["share"]) for i in ids] == [(1, 0.25), (3, 0.75)]
    table = invoke(["batch", "list"], env).stdout
    assert "priority" in table and "75%" in table and "25%" in table
    for bad in ("0", "101"):
        refused = invoke(["batch", "submit", str(path), "--proxy", "p1", "--priority", bad], env)
        assert refused.exit_code == 2
        assert "priority" in refused.stderr


# ---- the proxy name rule at submission ------------------------------------------------------

BAD_NAMES = ["a:b", "a*", "a?", "my proxy", "-p", "p" * 65, "é", "[/bold]"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_proxy_name_is_refused_at_submission(env: dict[str, str | None], tmp_path: Path,
                                                   name: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(chat_line("a") + "\n")
    commands = [["chat", "--timeout", "1", "--", name, "hi"],
                ["batch", "submit", str(path), f"--proxy={name}"],
                ["proxy", "create", "--model", "m", "--timeout", "1", "--", name],
                ["proxy", "delete", "--timeout", "1", "--", name]]
    for argv in commands:
        result = invoke(argv, env)
        assert result.exit_code == 2, (argv, result.stdout, result.stderr)
        [line] = result.stderr.splitlines()
        assert line.startswith("error: proxy name "), line
        assert line.endswith(f" is not valid: {PROXY_NAME_RULE}"), line
    assert not redis.Redis.from_url(str(env["MPQ_REDIS_URL"])).keys(f"{env['MPQ_KEY_PREFIX']}*")


# ---- the helpers ----------------------------------------------------------------------------

CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
hostile_text = st.lists(st.sampled_from([ESC, "[", "]", "\\", "\x07", "\x9b", "\x9d", "\x9c",
                                         "\r", "\n", "\t", "8", ";", "m", "/", "bold", "é"])
                        | st.characters(codec="utf-8"), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(hostile_text)
def test_strip_controls_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    stripped = strip_controls(text)
    assert not CONTROLS.search(stripped)
    assert strip_controls(stripped) == stripped
    printable = CONTROLS.sub("", text)
    if ESC not in text and not re.search(r"[\x90\x98\x9b\x9d-\x9f]", text):
        assert stripped == printable  # plain text keeps every printable character


@settings(max_examples=500, deadline=None)
@given(hostile_text, st.sampled_from(["", " tail", ": [bold]b[/]", "\n"]))
def test_escaped_markup_prints_as_itself(text: str, after: str) -> None:
    text = text.replace("\t", " ")  # rich expands tabs by cell width: not what is tested
    out = Console(width=1000, no_color=True, highlight=False, emoji=False, record=True,
                  file=io.StringIO())
    out.print(f"[red]error:[/] {escape_markup(text)}{after}", end="")
    assert out.export_text() == f"error: {strip_controls(text)}{render(after).plain}"
    json.loads(safe_json({"text": text}))
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", safe_json({"text": text}).replace("\n", ""))



def test_batch_list_shows_whole_ids_in_a_narrow_terminal_and_json(
        env: dict[str, str | None], tmp_path: Path) -> None:
    path = tmp_path / "a-rather-long-input-file-name.jsonl"
    path.write_text(chat_line("a") + "\n")
    submitted = invoke(["batch", "submit", str(path), "--proxy", "p1"], env)
    batch_id = submitted.stdout.split()[1]

    narrow = invoke(["batch", "list"], {**env, "COLUMNS": "60"})
    assert narrow.exit_code == 0
    assert batch_id in narrow.stdout  # whole, on one line

    [listed] = json.loads(invoke(["batch", "list", "--json"], env).stdout)
    assert (listed["id"], listed["total"], listed["done"]) == (batch_id, 1, 0)
    assert listed["name"] == path.name
    status = json.loads(invoke(["batch", "status", batch_id, "--json"], env).stdout)
    assert status["counts"]["queued"] == 1
    assert status["status"] == "in_progress"

"""Properties of the `mpq` command line under arbitrary arguments and input files.

Whatever the arguments: no Python traceback, an exit code among the documented ones
(0 ok, 1 the work failed, 2 bad arguments or input, 3 unknown job/batch, 4 Redis unreachable),
and a failure says so in one stderr line starting with "error:" (or is typer's own usage
error). Commands run in-process through typer's `CliRunner` against no Redis, an unreachable
loopback port, or a private embedded server (for the read-only batch commands and for
submits, which only enqueue: no worker runs here).
"""

from __future__ import annotations

import json
import re
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from producer.cli import app

EXIT_CODES = frozenset({0, 1, 2, 3, 4})
UNREACHABLE = "redis://127.0.0.1:1/0"
BOUNDED = settings(max_examples=100, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])
# Each run against the unreachable port waits for one reconnect (~0.2 s): fewer of those.
SLOW = settings(max_examples=20, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Commands that would start servers or the whole stack: never run from here.
LONG_RUNNING = frozenset({"emulator", "up", "demo"})

runner = CliRunner()

# Arguments as a shell hands them over: any text, lone surrogates included (undecodable
# argv bytes arrive surrogate-escaped), NUL excluded (no argv can hold it).
arg_chars = st.integers(0xDC80, 0xDCFF).map(chr) | st.characters(codec="utf-8",
                                                                  exclude_characters="\x00")
args = st.lists(arg_chars, max_size=30).map("".join)
numbers = (st.integers().map(str) | st.floats().map(str)
           | st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e309", "", " 1", "0x10"]))


def _env(redis_url: str | None, prefix: str = "mpqcli:") -> dict[str, str | None]:
    return {"MPQ_REDIS_URL": redis_url, "REDIS_URL": None, "MPQ_BROKER_URL": None,
            "MPQ_KEY_PREFIX": prefix, "COLUMNS": "200", "NO_COLOR": "1"}


def invoke(argv: Sequence[str], env: dict[str, str | None]) -> Result:
    return runner.invoke(app, list(argv), env=env)


def check(result: Result, allowed: frozenset[int] = EXIT_CODES) -> None:
    """No traceback, a documented exit code, and one clear error line on failure."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        shown = "".join(traceback.format_exception(result.exception))
        raise AssertionError(f"traceback instead of a clean error:\n{shown}")
    assert result.exit_code in allowed, (result.exit_code, result.stdout, result.stderr)
    if result.exit_code == 0:
        return
    stderr = ANSI.sub("", result.stderr)
    if result.exit_code == 2 and ("Usage:" in stderr or "─ Error ─" in stderr):
        return  # typer's usage error: a usage line and a hint, or a boxed message
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr


# ---- argument parsing -----------------------------------------------------------------------

COMMANDS: dict[tuple[str, ...], list[str]] = {
    ("chat",): ["--stream", "--no-stream", "--model", "--max-tokens", "--timeout", "--raw"],
    ("embed",): ["--model", "--dimensions", "--encoding-format", "--timeout"],
    ("batch", "submit"): ["--proxy", "--wait", "--strict", "--results"],
    ("batch", "status"): ["--json"],
    ("batch", "wait"): ["--timeout"],
    ("batch", "results"): ["--output", "-o"],
    ("batch", "errors"): ["--output", "-o"],
    ("batch", "cancel"): [],
    ("batch", "list"): ["--limit", "--json"],
    ("job", "status"): ["--json"],
    ("job", "cancel"): [],
    ("job", "result"): ["--json", "--raw", "--timeout"],
    ("proxy", "create"): ["--model", "--service", "--description", "--tpm", "--concurrency",
                          "--file", "--wait", "--no-wait", "--timeout", "--json"],
    ("proxy", "get"): ["--timeout", "--json"],
    ("proxy", "list"): ["--timeout", "--json"],
    ("proxy", "update"): ["--description", "--file", "--wait", "--timeout", "--json"],
    ("proxy", "delete"): ["--timeout"],
    ("proxy", "refresh"): ["--timeout"],
    ("worker",): ["--queues", "--slots", "--processes", "--loglevel", "--name"],
    ("beat",): ["--loglevel"],
    ("flower",): ["--address", "--port", "--user", "--password", "--password-file", "--no-auth",
                  "--force-open", "--oauth-provider", "--oauth-emails"],
}


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    tokens = st.sampled_from([*COMMANDS[command], "--help", "--", "-x"]) | args | numbers
    return [*command, *draw(st.lists(tokens, max_size=6))]


def test_long_running_commands_are_left_out() -> None:
    assert not {name for name, *_ in COMMANDS} & LONG_RUNNING


@BOUNDED
@given(argvs())
def test_any_arguments_without_redis(argv: list[str]) -> None:
    """No Redis configured: every command refuses cleanly (2), or prints its help (0)."""
    check(invoke(argv, _env(None)), frozenset({0, 2}))


@SLOW
@given(argvs())
def test_any_arguments_with_redis_unreachable(argv: list[str]) -> None:
    if argv[0] in {"worker", "beat", "flower"}:
        argv = ["batch", "list"]  # these would try to serve: their refusal is tested above
    check(invoke(argv, _env(UNREACHABLE)), frozenset({0, 2, 4}))


@BOUNDED
@given(st.sampled_from(["status", "wait", "results", "errors", "cancel"]), args)
def test_any_batch_id(redis_url: str, prefix: str, command: str, batch_id: str) -> None:
    """An id with ':' (or empty, or not UTF-8) is bad input (2); any other is unknown (3)."""
    check(invoke(["batch", command, "--", batch_id], _env(redis_url, prefix)),
          frozenset({2, 3}))


@BOUNDED
@given(st.sampled_from(["status", "cancel", "result"]), args)
def test_any_job_id(redis_url: str, prefix: str, command: str, job_id: str) -> None:
    """An id with ':' (or empty, or not UTF-8) is bad input (2); any other is unknown (3)."""
    check(invoke(["job", command, "--", job_id], _env(redis_url, prefix)), frozenset({2, 3}))


# ---- input files ----------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | args
json_values = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(args, inner, max_size=3), max_leaves=10)


def _chat_line(custom_id: Any, content: Any, extra: dict[str, Any]) -> bytes:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}]}, **extra}
    # ensure_ascii: lone surrogates travel as JSON escapes ("\udcff"), as JSON allows.
    return json.dumps(line).encode()


batch_lines = st.one_of(
    st.builds(_chat_line, args, args, st.just({})),
    st.builds(_chat_line, args, json_values, st.dictionaries(
        st.sampled_from(["proxy", "method", "url", "body", "extra"]), json_values, max_size=2)),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=40).map(lambda raw: raw.replace(b"\n", b" ")),
    st.just(b"[" * 5000 + b"]" * 5000),
)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(batch_lines, max_size=8), st.booleans())
def test_submit_any_batch_file(redis_url: str, prefix: str, tmp_path: Path,
                               lines: list[bytes], strict: bool) -> None:
    """Bad lines are reported and skipped (0), or, with --strict, refuse the file (2); the
    valid ones are queued either way. One bad line never refuses the whole file."""
    path = tmp_path / f"in-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    argv = ["batch", "submit", str(path), "--proxy", "p1", *(["--strict"] if strict else [])]
    result = invoke(argv, _env(redis_url, prefix))
    check(result, frozenset({0, 2}) if strict else frozenset({0}))
    if result.exit_code == 0:
        assert re.search(r"batch [0-9a-f]{32} submitted", result.stdout), result.stdout


SPEC_CONTENTS = [
    "", "{", "[]", "null", "a: [b", "a: {b", ": :", "\t- x", "!!python/object:os.system x",
    "modelProxyName: [1]", "proxyConfig: {endpoints: 5}", "cpu: -1", "{modelProxyName: x}",
    "[" * 5000 + "]" * 5000, '{"a": ' * 3000 + "1" + "}" * 3000, "- " * 3000 + "x",
    "&a [*a]", "a: &x [*x, *x]", "? [a, b]\n: c", "\x00\x01",
]


@BOUNDED
@given(st.sampled_from(["json", "yaml", "yml"]),
       st.sampled_from(SPEC_CONTENTS) | args | json_values.map(json.dumps),
       st.sampled_from(["create", "update"]))
def test_proxy_spec_file_of_any_content(tmp_path: Path, suffix: str, content: str,
                                        command: str) -> None:
    """A spec file that is not a valid proxy is bad input (2), whatever its content."""
    path = tmp_path / f"spec-{uuid.uuid4().hex[:6]}.{suffix}"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    check(invoke(["proxy", command, "p1", "--file", str(path)], _env(None)), frozenset({2}))

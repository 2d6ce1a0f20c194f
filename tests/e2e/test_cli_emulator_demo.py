"""`mpq emulator` and `mpq demo` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis
from polling import wait_until
from processes import command_lines

from core.embedded_redis import free_port

MPQ = shutil.which("mpq", path=str(Path(sys.executable).parent)) or "mpq"


def test_emulator_command_serves_and_stops_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [MPQ, "emulator", "--port", str(port), "--lifecycle-delay-s", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_emulator/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.1)
        assert health.status_code == 200
        listed = httpx.get(f"http://127.0.0.1:{port}/2025-09-10/agents/model-proxies")
        assert listed.json()["data"]["total"] == 0
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr


def test_emulator_refuses_open_public_bind() -> None:
    result = subprocess.run(
        [MPQ, "emulator", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=30, check=False,
        env={k: v for k, v in os.environ.items() if "ACCESS_KEY" not in k},
    )
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_emulator_with_credentials_still_refuses_a_public_bind() -> None:
    env = {**os.environ, "AGENTRUN_ACCESS_KEY_ID": "AK", "AGENTRUN_ACCESS_KEY_SECRET": "SK"}
    result = subprocess.run(
        [MPQ, "emulator", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "--allow-open" in result.stderr
    assert "Traceback" not in result.stderr


def test_emulator_refuses_an_api_key_on_the_command_line() -> None:
    result = subprocess.run(
        [MPQ, "emulator", "--port", "0", "--api-key", "sk-visible"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "MPQ_EMULATOR_API_KEYS" in result.stderr
    assert "--api-key-file" in result.stderr


def test_emulator_takes_api_keys_from_the_environment_and_a_file(tmp_path: Path) -> None:
    keys = ["sk-env-canary-1", "sk-env-canary-2", "sk-file-canary-3"]
    key_file = tmp_path / "keys"
    key_file.write_text(f"\n{keys[2]}\n\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTRUN_", "MPQ_"))}
    env["MPQ_EMULATOR_API_KEYS"] = f"{keys[0]}, {keys[1]}"
    process = subprocess.Popen(
        [MPQ, "emulator", "--port", str(port), "--api-key-file", str(key_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"{url}/_emulator/health", timeout=1)  # open: no key
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.1)
        assert health.status_code == 200
        assert httpx.put(f"{url}/_emulator/settings", json={}).status_code == 401
        for key in keys:
            answer = httpx.get(f"{url}/_emulator/stats",
                               headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200, (key, answer.text)
        lines = command_lines().values()
        assert any(str(key_file).encode() in line for line in lines)
        assert not [line for line in lines if any(key.encode() in line for key in keys)]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGENTRUN_", "REDIS_URL", "MPQ_", "OPENAI_"))}
    result = subprocess.run([MPQ, "demo"], capture_output=True, text=True, timeout=120,
                            check=False, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is READY" in result.stdout
    assert "200: 200 succeeded, 0 failed" in result.stdout
    # The gateway step: the official `openai` client, a chat and a whole batch.
    assert "chat.completions.create →" in result.stdout
    assert "batches.retrieve → completed: 10 of 10 lines succeeded" in result.stdout
    assert "files.content → 10 output lines" in result.stdout
    assert "demo finished" in result.stdout
    lines = (tmp_path / "mpq-demo-results.jsonl").read_text().splitlines()
    assert len({json.loads(line)["custom_id"] for line in lines}) == 200


def test_up_prints_no_secret_but_its_gateway_key_and_writes_them_to_a_private_file(
        tmp_path: Path) -> None:
    """`mpq up` shows masked URLs, the gateway's base URL and a key made for it (what a user
    pastes into a client), and where the env file is; the file (0600) has the URL with its
    password, the login, and the gateway's URL and key as the OpenAI clients read them."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGENTRUN_", "REDIS_URL", "MPQ_", "OPENAI_"))}
    out = tmp_path / "up.out"
    with out.open("wb") as sink:
        up = subprocess.Popen([MPQ, "up", "--slots", "4"], stdout=sink, stderr=subprocess.STDOUT,
                              env=env, cwd=tmp_path)
    try:
        wait_until(lambda: "Ctrl-C stops everything." in out.read_text(errors="replace"),
                   90, 0.2, what=lambda: out.read_text(errors="replace"))
        printed = out.read_text()
        found = re.search(r"are in (\S+) \(mode 0600\)", printed)
        assert found, printed
        env_file = Path(found.group(1))
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        values = {name: shlex.split(value)[0] for name, value in
                  re.findall(r"^export (\w+)=(.*)$", env_file.read_text(), re.MULTILINE)}
        url = values["MPQ_REDIS_URL"]
        password = urlparse(url).password
        flower_password = values["MPQ_FLOWER_PASSWORD"]
        assert password and flower_password
        assert password not in printed and flower_password not in printed
        assert "redis://***:***@127.0.0.1:" in printed
        with redis.Redis.from_url(url) as client:
            assert client.ping()
        _check_gateway(printed, values)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    assert up.returncode == 0, out.read_text()
    assert not env_file.exists()  # it went with the stack's private directory


def _check_gateway(printed: str, values: dict[str, str]) -> None:
    """The printed base URL and key are the file's, and an OpenAI client gets in with them."""
    base_url = re.search(r"Gateway\s+(http://127\.0\.0\.1:\d+/v1)", printed)
    key = re.search(r"API key\s+(sk-mpq-\S+)", printed)
    assert base_url and key, printed
    assert values["OPENAI_BASE_URL"] == base_url.group(1)
    assert values["OPENAI_API_KEY"] == key.group(1)
    listed = httpx.get(f"{base_url.group(1)}/models",
                       headers={"Authorization": f"Bearer {key.group(1)}"})
    assert listed.status_code == 200, listed.text
    assert listed.json()["object"] == "list"
    assert httpx.get(f"{base_url.group(1)}/models").status_code == 401

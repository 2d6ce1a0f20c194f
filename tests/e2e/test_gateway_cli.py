"""`mpq gateway` as a user runs it: it becomes the gateway process (same pid, so a signal
reaches uvicorn), serves on loopback without keys, and refuses any other address until a
key exists (`mpq gateway key create`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from polling import wait_until

from core.embedded_redis import redis_server

MPQ = shutil.which("mpq", path=str(Path(sys.executable).parent)) or "mpq"
SERVING = re.compile(r"mpq gateway serving at (http://\S+/v1)")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    """A fresh server of its own: no key exists until a test makes one."""
    with redis_server(None) as url:
        yield {**{k: v for k, v in os.environ.items()
                  if not k.startswith(("MPQ_", "REDIS_URL", "OPENAI_"))}, "MPQ_REDIS_URL": url}


def mpq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MPQ, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def serve(env: dict[str, str], out: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    with out.open("wb") as sink:
        process = subprocess.Popen([MPQ, "gateway", "--port", "0", *args], env=env,
                                   stdout=sink, stderr=subprocess.STDOUT)

    def ready() -> re.Match[str] | None:
        assert process.poll() is None, out.read_text()
        return SERVING.search(out.read_text())

    found = wait_until(ready, 30, 0.1, what=out.read_text)
    return process, found.group(1)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and a graceful exit: uvicorn shuts down, then re-raises the signal it caught
    (so a supervisor sees why it ended)."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) in (0, -signal.SIGTERM)


def test_a_public_address_needs_a_key_first(env: dict[str, str]) -> None:
    refused = mpq(env, "gateway", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "without API keys" in refused.stderr
    assert "mpq gateway key create NAME" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_it_becomes_the_gateway_and_stops_on_sigterm(env: dict[str, str],
                                                     tmp_path: Path) -> None:
    made = mpq(env, "gateway", "key", "create", "e2e")
    assert made.returncode == 0, made.stderr
    (secret,) = re.findall(r"^sk-mpq-\S+$", made.stdout, re.MULTILINE)
    out = tmp_path / "gateway.out"
    process, base_url = serve(env, out, "--host", "0.0.0.0", "--log-level", "info")
    try:
        # The same process: `mpq gateway` replaced itself with `python -m gateway`.
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[1:3] == [b"-m", b"gateway"], argv
        assert base_url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{base_url}/files").status_code == 401
        authorized = httpx.get(f"{base_url}/files",
                               headers={"Authorization": f"Bearer {secret}"})
        assert authorized.status_code != 401, authorized.text
    finally:
        stop(process)
    assert "Finished server process" in out.read_text()  # uvicorn got the signal itself


def test_loopback_serves_without_keys(env: dict[str, str], tmp_path: Path) -> None:
    process, base_url = serve(env, tmp_path / "gateway.out")
    try:
        reply = httpx.get(f"{base_url}/models")
        assert reply.status_code == 401  # serving, and every request still needs a key
        assert reply.json()["error"]["code"] == "invalid_api_key"
    finally:
        stop(process)

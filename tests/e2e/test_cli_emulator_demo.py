"""`mpq emulator` and `mpq demo` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from worker.embedded_redis import free_port

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


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGENTRUN_", "REDIS_URL", "MPQ_"))}
    result = subprocess.run([MPQ, "demo"], capture_output=True, text=True, timeout=120,
                            check=False, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is READY" in result.stdout
    assert "200: 200 succeeded, 0 failed" in result.stdout
    assert "demo finished" in result.stdout
    lines = (tmp_path / "mpq-demo-results.jsonl").read_text().splitlines()
    assert len({json.loads(line)["custom_id"] for line in lines}) == 200

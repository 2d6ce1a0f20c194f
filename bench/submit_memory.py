"""Submit memory: the peak RSS of the real `mpq batch submit FILE` process for a 50,000-line
chat batch file (13 MB, lines like an OpenAI Batch file's) and for one ten times larger,
against an embedded Valkey (no worker: the jobs just wait). The file is read as a stream, so
the peak must not grow with it. Limit, for information: the same command for a 10-line file
(the interpreter and its imports). Target: at most 120 MB at each size."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from bench.harness import MPQ, arguments
from bench.throughput import peak_rss_mb
from core.embedded_redis import redis_server

SIZES = (50_000, 500_000)
BASE_LINES = 10
TARGET_MB = 120
PROXY = "bench-proxy"
KB = 1024
POLL_S = 0.02
DELETE_ROUND = 1_000


def chat_line(i: int) -> str:
    """One input line of ~280 bytes, as the OpenAI Batch docs show them."""
    return json.dumps({
        "custom_id": f"request-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 1000, "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Summarise item {i} in one line."}]}})


def write_file(path: Path, lines: int) -> int:
    """A batch file of `lines` chat lines; returns its size in bytes."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            out.write(chat_line(i) + "\n")
    return path.stat().st_size


def run_peak_mb(command: list[str], env: dict[str, str], log: Path) -> float:
    """Run `command` to its end; its peak resident set, in MB: VmHWM, read until it exits
    (not `wait4`'s ru_maxrss, which counts the pages of this process that the child had
    before its exec)."""
    peak = 0.0
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):  # it ended between the two
                peak = max(peak, peak_rss_mb(process.pid))
            time.sleep(POLL_S)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n"
                           f"{log.read_text()[-2000:]}")
    return peak


def submit_peak(redis_url: str, path: Path) -> float:
    """`mpq batch submit` of `path` under a fresh key prefix; the server is emptied after."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPQ_")}
    env.update(MPQ_REDIS_URL=redis_url, MPQ_KEY_PREFIX=prefix)
    command = [MPQ, "batch", "submit", str(path), "--proxy", PROXY]
    try:
        return run_peak_mb(command, env, path.with_suffix(".log"))
    finally:
        delete_prefix(redis_url, prefix)


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Every key under `prefix` (its jobs would only weigh on the next run)."""
    client = redis.Redis.from_url(redis_url)
    try:
        found: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=DELETE_ROUND):
            found.append(key)
            if len(found) == DELETE_ROUND:
                client.unlink(*found)
                found = []
        if found:
            client.unlink(*found)
    finally:
        client.close()


def run_sizes(sizes: tuple[int, ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mpq-bench-submit-") as tmp, \
            redis_server(None) as redis_url:
        base = Path(tmp) / "base.jsonl"
        write_file(base, BASE_LINES)
        found: dict[str, Any] = {"base_mb": submit_peak(redis_url, base), "runs": []}
        for lines in sizes:
            path = Path(tmp) / f"batch-{lines}.jsonl"
            size = write_file(path, lines)
            peak = submit_peak(redis_url, path)
            path.unlink()
            found["runs"].append({"lines": lines, "file_mb": size / KB / KB, "peak_mb": peak})
    return found


async def measure(sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    return await asyncio.to_thread(run_sizes, sizes)


def report(found: dict[str, Any]) -> None:
    print(f"mpq batch submit of a {BASE_LINES}-line file: peak RSS {found['base_mb']:.0f} MB")
    for run in found["runs"]:
        verdict = "pass" if run["peak_mb"] <= TARGET_MB else "FAIL"
        print(f"{run['lines']:>9,} lines ({run['file_mb']:.0f} MB): peak RSS "
              f"{run['peak_mb']:.0f} MB (target <= {TARGET_MB} MB) {verdict}")


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--lines", type=int, action="append",
                        help=f"file sizes in lines (repeatable; default {SIZES})")
    chosen = parser.parse_args().lines
    report(asyncio.run(measure(tuple(chosen) if chosen else SIZES)))

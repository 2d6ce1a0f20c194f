"""A batch input read as a stream against a real server (no worker: the jobs just wait): the
valid lines become jobs in input order, a round at a time while the input is still being
read; the invalid ones are stored as they are found; `strict` still refuses the whole input,
from a file (read twice) or a pipe (copied aside first); `mpq batch submit` prints its
summary."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import IO, cast

import pytest
import redis
from typer.testing import CliRunner

from core.contract import JobStatus
from core.keys import Keys
from core.settings import Settings
from producer.cli import app
from producer.cli_common import EXIT_USAGE
from producer.client import INVALID_ROUND, AsyncClient, BatchInvalidError

PROXY = "p"
LINES = 3_000
# Every other line of this span is invalid: more of them than one round of stored errors.
INVALID_SPAN = range(501, 2_701)
READ_BEFORE_CHECK = 2_500  # jobs must be in Redis by the time this line is read


def line(n: int) -> bytes:
    """Line `n` of the test input: valid, or (in the span, every other line) not JSON or a
    repeated custom_id."""
    if n in INVALID_SPAN and n % 2 == 0:
        return b"{not json\n" if n % 4 == 0 else chat(f"id-{n - 1}")
    return chat(f"id-{n}")


def chat(custom_id: str) -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST",
                       "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": "hi"}]}}
                      ).encode() + b"\n"


INVALID = [n for n in range(1, LINES + 1) if n in INVALID_SPAN and n % 2 == 0]
VALID_IDS = [f"id-{n}" for n in range(1, LINES + 1) if n not in INVALID]


@pytest.fixture
def settings(redis_url: str, keys: Keys) -> Settings:
    return Settings(redis_url=redis_url, key_prefix=keys.prefix)


@pytest.fixture
async def mpq(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(settings) as client:
        yield client


@pytest.fixture
def batch_file(tmp_path: Path) -> Path:
    path = tmp_path / "batch.jsonl"
    path.write_bytes(b"".join(line(n) for n in range(1, LINES + 1)))
    return path


def batch_jobs(redis_url: str, keys: Keys) -> int:
    """How many jobs the batches under `keys` have (0 without a batch)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        batch_ids = cast(list[str], client.zrange(keys.batches(), 0, -1))
        return sum([client.llen(keys.batch_jobs(batch_id)) for batch_id in batch_ids])
    finally:
        client.close()


def watched(lines: Iterable[bytes], redis_url: str, keys: Keys,
            seen: list[int]) -> Iterator[bytes]:
    """`lines`, noting how many jobs exist when line `READ_BEFORE_CHECK` is read."""
    for n, raw in enumerate(lines, start=1):
        if n == READ_BEFORE_CHECK:
            seen.append(batch_jobs(redis_url, keys))
        yield raw


async def test_valid_lines_go_in_order_while_the_file_is_read_and_errors_are_stored(
        mpq: AsyncClient, batch_file: Path, redis_url: str, keys: Keys) -> None:
    seen: list[int] = []
    with batch_file.open("rb") as source:
        batch, errors = await mpq.submit_batch(watched(source, redis_url, keys, seen), PROXY,
                                               name="b.jsonl")
    assert len(INVALID) > INVALID_ROUND
    assert seen and seen[0] >= INVALID_ROUND  # rounds of jobs were in before the end
    assert [e.line_no for e in errors] == INVALID
    assert str(errors[0]) == f'line {INVALID[0]}: duplicate custom_id "id-{INVALID[0] - 1}" ' \
        f"(first on line {INVALID[0] - 1})"
    info = await batch.info()
    assert (info.total, info.invalid, info.submitting, info.name) == (
        len(VALID_IDS), len(INVALID), False, "b.jsonl")
    stored = [json.loads(raw) for raw in await mpq.store.invalid_lines(batch.id)]
    assert [s["error"]["line"] for s in stored] == INVALID
    assert [s["error"]["message"] for s in stored] == [str(e) for e in errors]
    records = [record async for record in batch.records()]
    assert [r.custom_id for r in records] == VALID_IDS
    assert {r.status for r in records} == {JobStatus.QUEUED}
    listed = [e async for e in batch.errors()]
    assert [e["error"]["line"] for e in listed] == INVALID


async def test_strict_refuses_a_file_with_an_invalid_line_and_submits_nothing(
        mpq: AsyncClient, batch_file: Path, redis_url: str, keys: Keys) -> None:
    with batch_file.open("rb") as source, pytest.raises(BatchInvalidError) as refused:
        await mpq.submit_batch(source, PROXY, strict=True)
    assert [e.line_no for e in refused.value.errors] == INVALID
    assert await mpq.store.batch_ids(10) == []
    assert batch_jobs(redis_url, keys) == 0


def valid_input() -> bytes:
    return b"".join(chat(f"id-{n}") for n in range(1, 101))


def pipe_reader(data: bytes) -> IO[bytes]:
    """A pipe (not seekable) that carries `data`, written from a thread."""
    read_fd, write_fd = os.pipe()

    def write() -> None:
        with os.fdopen(write_fd, "wb") as out:
            out.write(data)

    threading.Thread(target=write, daemon=True).start()
    return os.fdopen(read_fd, "rb")


async def test_strict_reads_a_file_again_from_where_it_was(
        mpq: AsyncClient, tmp_path: Path) -> None:
    path = tmp_path / "valid.jsonl"
    path.write_bytes(b"header to skip\n" + valid_input())
    with path.open("rb") as source:
        source.readline()
        batch, errors = await mpq.submit_batch(source, PROXY, strict=True)
    assert errors == []
    assert await custom_ids(batch.id, mpq) == [f"id-{n}" for n in range(1, 101)]


@pytest.mark.parametrize("valid", [True, False])
async def test_strict_from_a_pipe(mpq: AsyncClient, valid: bool) -> None:
    data = valid_input() + (b"" if valid else b"[]\n" + chat("id-1"))
    with pipe_reader(data) as source:
        assert not source.seekable()
        if not valid:
            with pytest.raises(BatchInvalidError) as refused:
                await mpq.submit_batch(source, PROXY, strict=True)
            assert [e.line_no for e in refused.value.errors] == [101, 102]
            assert await mpq.store.batch_ids(10) == []
            return
        batch, errors = await mpq.submit_batch(source, PROXY, strict=True)
    assert errors == []
    assert (await batch.info()).total == 100


async def custom_ids(batch_id: str, mpq: AsyncClient) -> list[str | None]:
    return [record.custom_id async for record in mpq.batch(batch_id).records()]


def test_the_command_line_prints_its_summary(settings: Settings, batch_file: Path) -> None:
    env = {"MPQ_REDIS_URL": settings.redis_url, "REDIS_URL": None, "MPQ_BROKER_URL": None,
           "MPQ_KEY_PREFIX": settings.key_prefix, "COLUMNS": "200", "NO_COLOR": "1"}
    runner = CliRunner()
    done = runner.invoke(app, ["batch", "submit", str(batch_file), "--proxy", PROXY], env=env)
    assert done.exit_code == 0, done.output
    assert f"skipped line {INVALID[0]}: duplicate custom_id" in done.output
    assert f"skipped line {INVALID[1]}: not valid JSON" in done.output
    assert f"… and {len(INVALID) - 20} more invalid lines" in done.output
    assert f"{len(VALID_IDS)} jobs queued, {len(INVALID)} invalid lines" in done.output
    refused = runner.invoke(app, ["batch", "submit", str(batch_file), "--proxy", PROXY,
                                  "--strict"], env=env)
    assert refused.exit_code == EXIT_USAGE
    assert f"{len(INVALID)} invalid line(s): line {INVALID[0]}: duplicate" in refused.output

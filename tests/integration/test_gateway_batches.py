"""The Batches API through the official `openai` client, against real gateway processes, a
worker and the emulator: the whole flow for each endpoint, request counts rising while the
batch runs, cancel, expiry, paging, files that fail validation, lines the upstream refuses,
two gateway processes sharing one batch, the webhook and retrying the failed lines."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import openai
import pytest
import redis
from gateway_stack import GatewayStack, create_key, gateway_env, gateway_stack
from openai.types import Batch
from polling import wait_until

from core.contract import BatchStatus
from core.keys import Keys
from emulator.server import EmulatorServer
from gateway.batch_lease import lease_name
from gateway.webhook import deliver
from producer.client import Client

MODEL = "batch-model"
ENDED = ("completed", "failed", "expired", "cancelled")
LATER_AT = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
            "cancelling_at", "cancelled_at")
SLOW = {"tpot_s": 0.05, "reply_tokens": 500}  # a line's time is its max_tokens × 50 ms


@pytest.fixture(scope="module")
def gw(redis_url: str, emulator: EmulatorServer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    settings = {"gateway_webhook_hosts": "127.0.0.1"}
    with gateway_stack(redis_url, emulator.url, tmp_path_factory.mktemp("gwb"), gateways=2,
                       settings=settings, request_timeout_s=30.0) as stack:
        stack.add_proxy([MODEL, "embed-model"])
        yield stack


@pytest.fixture(scope="module")
def client(gw: GatewayStack) -> openai.OpenAI:
    return gw.openai()


# ---- helpers -------------------------------------------------------------------------------


def chat_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": custom_id}],
                     **body}}


LINES = {
    "/v1/chat/completions": lambda i: chat_line(f"q-{i}", max_tokens=4),
    "/v1/responses": lambda i: {"custom_id": f"r-{i}", "method": "POST", "url": "/v1/responses",
                                "body": {"model": MODEL, "input": f"hello {i}"}},
    "/v1/embeddings": lambda i: {"custom_id": f"e-{i}", "method": "POST",
                                 "url": "/v1/embeddings",
                                 "body": {"model": "embed-model", "input": [f"text {i}", "b"]}},
}


def upload(client: openai.OpenAI, lines: list[dict[str, Any]],
           filename: str = "input.jsonl") -> str:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.create(file=(filename, content), purpose="batch").id


def create(client: openai.OpenAI, lines: list[dict[str, Any]], *,
           endpoint: str = "/v1/chat/completions", window: str = "24h",
           filename: str = "input.jsonl", **options: Any) -> Batch:
    file_id = upload(client, lines, filename)
    return client.batches.create(input_file_id=file_id, endpoint=endpoint,  # type: ignore[arg-type]
                                 completion_window=window, **options)  # type: ignore[arg-type]


def wait_for(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...] = ENDED,
             timeout_s: float = 30) -> Batch:
    def reached() -> Batch | None:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in statuses else None

    return wait_until(reached, timeout_s, 0.05, what=f"batch {batch_id} to reach {statuses}")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def custom_ids(lines: list[dict[str, Any]]) -> set[str]:
    return {line["custom_id"] for line in lines}


def set_at(batch: Batch) -> set[str]:
    return {name for name in LATER_AT if getattr(batch, name) is not None}


# ---- the whole flow ------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(LINES))
def test_whole_flow(gw: GatewayStack, client: openai.OpenAI, endpoint: str) -> None:
    lines = [LINES[endpoint](i) for i in range(6)]
    created = create(client, lines, endpoint=endpoint, metadata={"team": "a", "priority": "2"},
                     output_expires_after={"anchor": "created_at", "seconds": 7200})
    assert created.status == "validating"
    assert created.id.startswith("batch_") and created.object == "batch"
    assert created.expires_at == created.created_at + 24 * 3600
    assert set_at(created) == set()
    assert created.metadata == {"team": "a", "priority": "2"}

    done = wait_for(client, created.id)
    assert done.status == "completed", done.errors
    assert set_at(done) == {"in_progress_at", "finalizing_at", "completed_at"}
    assert (created.created_at <= done.in_progress_at <= done.finalizing_at  # type: ignore[operator]
            <= done.completed_at)  # type: ignore[operator]
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 6, "completed": 6, "failed": 0}
    assert done.error_file_id is None
    assert done.output_file_id is not None
    output = jsonl(client, done.output_file_id)
    assert custom_ids(output) == custom_ids(lines)
    for line in output:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"]
        assert line["id"].startswith("batch_req_")
    bodies = [line["response"]["body"] for line in output]
    usage = done.usage
    assert usage is not None
    if endpoint == "/v1/embeddings":
        assert all(len(body["data"]) == 2 for body in bodies)
        assert usage.input_tokens == sum(body["usage"]["prompt_tokens"] for body in bodies)
        assert usage.output_tokens == 0
    elif endpoint == "/v1/responses":
        assert usage.output_tokens == sum(body["usage"]["output_tokens"] for body in bodies)
    else:
        assert usage.input_tokens == sum(body["usage"]["prompt_tokens"] for body in bodies)
        assert usage.output_tokens == sum(body["usage"]["completion_tokens"]
                                          for body in bodies)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens > 0
    stored = client.files.retrieve(done.output_file_id)
    assert stored.purpose == "batch_output"
    assert stored.expires_at == stored.created_at + 7200

    # It is an mpq batch too, under the same id.
    with Client(gw.stack.settings) as mpq:
        record = mpq.batch(created.id).info()
    assert (record.status, record.total, record.priority) == (BatchStatus.FINISHED, 6, 2)

    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(created.id)


def test_request_counts_rise_while_in_progress(gw: GatewayStack, client: openai.OpenAI) -> None:
    lines = [chat_line(f"c-{i}", max_tokens=4 * i) for i in range(1, 13)]
    seen: list[tuple[str, int]] = []
    with gw.stack.emulator_settings(**SLOW):
        batch = create(client, lines)

        def ended() -> bool:
            now = client.batches.retrieve(batch.id)
            assert now.request_counts is not None
            seen.append((now.status, now.request_counts.completed))
            return now.status in ENDED

        wait_until(ended, 30, 0.05, what="the batch to end")
    running = {completed for status, completed in seen if status == "in_progress"}
    assert len(running - {0, 12}) >= 2, seen  # several counts between none and all
    assert seen[-1] == ("completed", 12)


# ---- cancel and expiry ---------------------------------------------------------------------


def test_cancel_keeps_finished_lines_and_a_second_cancel_answers_200(
        gw: GatewayStack, client: openai.OpenAI) -> None:
    fast = [chat_line(f"fast-{i}", max_tokens=1) for i in range(5)]
    slow = [chat_line(f"slow-{i}", max_tokens=400) for i in range(15)]
    with gw.stack.emulator_settings(**SLOW):
        batch = create(client, fast + slow)

        def fast_done() -> bool:
            counts = client.batches.retrieve(batch.id).request_counts
            return counts is not None and counts.completed >= 5

        wait_until(fast_done, 30, 0.05, what="the fast lines")
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        assert cancelling.cancelling_at is not None and cancelling.cancelled_at is None
        again = client.batches.cancel(batch.id)
        assert again.status in ("cancelling", "cancelled")
        done = wait_for(client, batch.id)
    assert done.status == "cancelled"
    assert set_at(done) == {"in_progress_at", "cancelling_at", "cancelled_at"}
    assert client.batches.cancel(batch.id).status == "cancelled"
    output, errors = jsonl(client, done.output_file_id), jsonl(client, done.error_file_id)
    assert len(output) + len(errors) == 20
    assert custom_ids(output) | custom_ids(errors) == custom_ids(fast + slow)
    assert not custom_ids(output) & custom_ids(errors)
    assert custom_ids(fast) <= custom_ids(output)
    for line in errors:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_cancelled"
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 20, "completed": len(output),
                                                "failed": len(errors)}

    # The mpq extension: the failed lines again, as a new batch that runs them (fast now).
    retry = client.post(f"/batches/{batch.id}/retry_failed", cast_to=Batch, body={})
    assert retry.id != batch.id and retry.status == "validating"
    rerun = wait_for(client, retry.id)
    assert rerun.status == "completed", rerun.errors
    assert custom_ids(jsonl(client, rerun.output_file_id)) == custom_ids(errors)
    with pytest.raises(openai.BadRequestError, match="no failed lines"):  # none here
        client.post(f"/batches/{retry.id}/retry_failed", cast_to=Batch)

    # And from the command line, on the mpq batch of the same id.
    done_cli = subprocess.run(
        [sys.executable, "-m", "producer.cli", "batch", "retry-failed", batch.id, "--wait"],
        env=gateway_env(gw.stack), capture_output=True, text=True, timeout=60, check=False)
    assert done_cli.returncode == 0, done_cli.stderr
    assert f"{len(errors)} jobs queued" in done_cli.stdout


def test_expiry_keeps_finished_lines_and_expires_the_rest(client: openai.OpenAI,
                                                          gw: GatewayStack) -> None:
    fast = [chat_line(f"fast-{i}", max_tokens=1) for i in range(3)]
    slow = [chat_line(f"slow-{i}", max_tokens=400) for i in range(7)]
    with gw.stack.emulator_settings(**SLOW):
        batch = create(client, fast + slow, window="3s")
        assert batch.expires_at == batch.created_at + 3
        done = wait_for(client, batch.id, timeout_s=20)
    assert done.status == "expired"
    assert set_at(done) == {"in_progress_at", "expired_at"}
    assert done.expired_at is not None and done.expired_at >= batch.expires_at
    output, errors = jsonl(client, done.output_file_id), jsonl(client, done.error_file_id)
    assert custom_ids(output) == custom_ids(fast)
    assert custom_ids(errors) == custom_ids(slow)
    assert all(line["response"] is None and line["error"]["code"] == "batch_expired"
               for line in errors)


# ---- listing -------------------------------------------------------------------------------


def test_paging_over_25_batches_newest_first(gw: GatewayStack) -> None:
    client = gw.openai(key=create_key(gw.stack, "pager"))
    file_id = upload(client, [chat_line("one", max_tokens=1)])
    made = [client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h").id for _ in range(25)]
    newest_first = made[::-1]

    first = client.batches.list()
    assert [b.id for b in first.data] == newest_first[:20] and first.has_more
    pages, after = [], None
    while True:
        page = client.batches.list(limit=10, **({"after": after} if after else {}))
        pages.append([b.id for b in page.data])
        if not page.has_more:
            break
        after = page.data[-1].id
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [batch_id for page in pages for batch_id in page] == newest_first
    assert [b.id for b in client.batches.list(limit=7)] == newest_first  # auto-paging
    raw = client.get("/batches", cast_to=object, options={"params": {"limit": 3}})
    assert isinstance(raw, dict)
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (made[-1], made[-3], True)
    for limit in (0, 101):
        with pytest.raises(openai.BadRequestError):
            client.batches.list(limit=limit)

    # Another key sees none of them.
    assert not set(made) & {b.id for b in gw.openai().batches.list(limit=100).data}
    with pytest.raises(openai.NotFoundError):
        gw.openai().batches.retrieve(made[0])
    with pytest.raises(openai.NotFoundError):
        gw.openai().batches.cancel(made[0])
    for batch_id in made:
        wait_for(client, batch_id)


# ---- validation ----------------------------------------------------------------------------


def test_a_file_that_fails_validation_names_its_lines(client: openai.OpenAI) -> None:
    lines = [chat_line(f"v-{i}") for i in range(6)]
    lines[2]["url"] = "/v1/responses"  # line 3
    lines[4]["custom_id"] = "v-0"  # line 5 repeats line 1
    lines[5]["body"]["model"] = "no-such-model"  # line 6
    batch = create(client, lines)
    done = wait_for(client, batch.id)
    assert done.status == "failed"
    assert set_at(done) == {"failed_at"}
    assert done.output_file_id is None and done.error_file_id is None
    assert done.request_counts is not None and done.request_counts.total == 0
    assert done.errors is not None and done.errors.data is not None
    found = {(e.line, e.code, e.param) for e in done.errors.data}
    assert found == {(3, "mismatched_endpoint", "url"), (5, "duplicate_custom_id", "custom_id"),
                     (6, "model_not_found", "body.model")}
    assert all(e.message and f"line {e.line}" in e.message for e in done.errors.data)


def test_a_file_not_named_jsonl_fails(client: openai.OpenAI) -> None:
    batch = create(client, [chat_line("x")], filename="input.txt")
    done = wait_for(client, batch.id)
    assert done.status == "failed"
    assert done.errors is not None and done.errors.data is not None
    assert [(e.code, e.line) for e in done.errors.data] == [("invalid_file_format", None)]


@pytest.mark.parametrize("options", [
    {"endpoint": "/v1/completions"},
    {"window": "soon"},
    {"metadata": {f"k{i}": "v" for i in range(17)}},
    {"metadata": {"proxy": "not a name"}},
    {"metadata": {"priority": "0"}},
    {"metadata": {"priority": "high"}},
])
def test_a_bad_create_request_is_refused_at_once(client: openai.OpenAI,
                                                 options: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError):
        create(client, [chat_line("x")], **options)


# ---- upstream refusals ---------------------------------------------------------------------


def test_a_batch_whose_lines_all_fail_upstream_is_completed(client: openai.OpenAI) -> None:
    lines = [chat_line(f"bad-{i}", top_p=1.5) for i in range(4)]  # the upstream says 400
    done = wait_for(client, create(client, lines).id)
    assert done.status == "completed"
    assert done.output_file_id is None
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 4, "completed": 0, "failed": 4}
    errors = jsonl(client, done.error_file_id)
    assert custom_ids(errors) == custom_ids(lines)
    for line in errors:
        assert line["error"] is None
        assert line["response"]["status_code"] == 400
        assert line["response"]["body"]["error"]["message"]


# ---- two gateway processes -----------------------------------------------------------------


def test_a_batch_made_on_one_gateway_is_followed_and_collected_on_the_other(
        gw: GatewayStack) -> None:
    first, second = gw.openai(gateway=0), gw.openai(gateway=1)
    lines = [chat_line(f"two-{i}", max_tokens=2) for i in range(8)]
    batch = create(first, lines)
    done = wait_for(second, batch.id)
    assert done.status == "completed"
    assert custom_ids(jsonl(second, done.output_file_id)) == custom_ids(lines)
    assert batch.id in [b.id for b in second.batches.list(limit=100).data]


def test_a_batch_left_finalizing_by_a_dead_process_is_taken_over(
        gw: GatewayStack, client: openai.OpenAI) -> None:
    keys = Keys(gw.stack.settings.key_prefix)
    store = redis.Redis.from_url(gw.stack.settings.redis_url or "")
    try:
        with gw.stack.emulator_settings(**SLOW):
            batch = create(client, [chat_line(f"t-{i}", max_tokens=20) for i in range(3)])
            wait_for(client, batch.id, ("in_progress",))
            # What a process that died while finalizing leaves: its lease, not run out yet,
            # and the batch `finalizing` once its jobs had all finished.
            store.set(keys.lock(lease_name(batch.id)), "a-dead-process", px=4000)
            with Client(gw.stack.settings) as mpq:
                mpq.batch(batch.id).wait(timeout=20, interval_s=0.05)
            store.hset(keys.gateway_batch(batch.id),
                       mapping={"status": "finalizing", "finalizing_at": str(time.time())})
        assert client.batches.retrieve(batch.id).status == "finalizing"
        done = wait_for(client, batch.id, timeout_s=20)
    finally:
        store.close()
    assert done.status == "completed"
    assert custom_ids(jsonl(client, done.output_file_id)) == {"t-0", "t-1", "t-2"}


# ---- the webhook ---------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, Any]]]  # each test's receiver has its own list
    answers: ClassVar[list[int]] = []  # statuses to answer with first (then 200)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append(json.loads(body))
        self.send_response(_Receiver.answers.pop(0) if _Receiver.answers else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    calls: list[dict[str, Any]] = []
    handler = type("Receiver", (_Receiver,), {"calls": calls})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/done", calls
    finally:
        server.shutdown()
        server.server_close()


def test_the_webhook_is_called_once_when_the_batch_ends(
        client: openai.OpenAI, receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, calls = receiver
    batch = create(client, [chat_line("hook", max_tokens=1)], metadata={"webhook_url": url})
    wait_for(client, batch.id)
    wait_until(lambda: calls, 10, what="the webhook call")
    time.sleep(1.5)  # several rounds of both gateways' finalizer loops
    assert len(calls) == 1
    assert (calls[0]["id"], calls[0]["status"]) == (batch.id, "completed")
    assert calls[0]["output_file_id"] is not None


async def test_the_webhook_is_retried_until_it_is_taken(
        receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, calls = receiver
    answers = [503, 429, 200]

    async def no_wait(_: float) -> None:
        return None

    _Receiver.answers = answers
    try:
        assert await deliver(url, {"id": "batch_x"}, sleep=no_wait)
        assert len(calls) == 3 and answers == []
        answers += [400, 200]
        assert not await deliver(url, {"id": "batch_x"}, sleep=no_wait)
        assert len(calls) == 4  # a 400 is not retried
    finally:
        _Receiver.answers = []


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest", "ftp://127.0.0.1/x",
                                 "http://localhost:1/x"])
def test_a_webhook_host_not_allowed_is_refused(client: openai.OpenAI, url: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        create(client, [chat_line("hook")], metadata={"webhook_url": url})
    assert "webhook_url" in str(refused.value)

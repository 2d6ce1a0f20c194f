"""Direct calls through a real gateway, worker and emulator with the official `openai` client:
chat (streamed and not), responses, embeddings, routing by model, the upstream's refusals,
a retry in the middle of a stream, backpressure, a client that leaves, and `/v1/models`."""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_stack import GatewayStack, gateway_stack
from polling import wait_until

from core.contract import JobStatus
from core.keys import Keys
from emulator.server import EmulatorServer
from modelproxy.data import DataAPI, embeddings_body
from modelproxy.portal import run_sync

MODEL = "gw-direct-model"
SHARED = "gw-shared-model"
MAX_IN_FLIGHT = 2
CALL_TIMEOUT_S = 5


@pytest.fixture(scope="module")
def gw(redis_url: str, emulator: EmulatorServer,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    # A long first backoff: a test clears a fault while the retry waits for its turn.
    settings = {"gateway_max_interactive": MAX_IN_FLIGHT,
                "gateway_call_timeout_s": CALL_TIMEOUT_S}
    with gateway_stack(redis_url, emulator.url, tmp_path_factory.mktemp("gwdirect"),
                       settings=settings, backoff_base_s=2.0, backoff_max_s=3.0,
                       max_attempts=2) as stack:
        stack.add_proxy([MODEL])
        try:
            yield stack
        finally:
            run_sync(stack.stack.redis.aclose())  # the tests read jobs through it


@pytest.fixture(scope="module")
def client(gw: GatewayStack) -> Iterator[openai.OpenAI]:
    with gw.openai() as client:
        yield client


@pytest.fixture(scope="module")
def proxy(gw: GatewayStack) -> str:
    return next(name for name, models in gw.proxies.items() if models == [MODEL])


def messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def job_status(gw: GatewayStack, job_id: str) -> JobStatus | None:
    record = run_sync(gw.stack.store.load(job_id))
    return None if record is None else record.status


# ---- chat ----------------------------------------------------------------------------------


def test_chat_answers_with_the_upstreams_body(gw: GatewayStack, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages("hello gateway"))
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.total_tokens > 0
    job_id = raw.headers["x-request-id"]
    assert job_status(gw, job_id) == JobStatus.SUCCEEDED


def test_a_chat_stream_is_the_same_text_and_ends_with_done(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=messages("stream me"))
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages("stream me"), stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_the_raw_stream_ends_with_done(gw: GatewayStack) -> None:
    body = {"model": MODEL, "messages": messages("raw"), "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {gw.key}"}, timeout=30) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    # without include_usage no chunk carries a usage
    assert all("usage" not in json.loads(line[6:]) for line in lines[:-1])


async def test_async_client_streams_chat(gw: GatewayStack) -> None:
    async with gw.async_openai() as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages("async stream"), stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        whole = await client.chat.completions.create(model=MODEL,
                                                     messages=messages("async stream"))
    assert text == whole.choices[0].message.content


# ---- responses -----------------------------------------------------------------------------


def test_responses_answer_and_stream(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=MODEL, input="tell me about queues")
    assert whole.status == "completed"
    events = list(client.responses.create(model=MODEL, input="tell me about queues",
                                          stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    final = events[-1].response  # type: ignore[union-attr]
    assert final.id == events[0].response.id  # type: ignore[union-attr]
    assert final.output_text == whole.output_text
    assert final.usage is not None


def test_the_responses_stream_helper_collects_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="helper") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas)


def test_responses_streams_send_no_done(gw: GatewayStack) -> None:
    body = {"model": MODEL, "input": "raw events", "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/responses", json=body,
                      headers={"Authorization": f"Bearer {gw.key}"}, timeout=30) as reply:
        text = reply.read().decode()
    assert "[DONE]" not in text
    assert text.rstrip().splitlines()[-2] == "event: response.completed"


# ---- embeddings ----------------------------------------------------------------------------


def direct_vectors(gw: GatewayStack, proxy: str, texts: list[str]) -> list[list[float]]:
    answer = run_sync(DataAPI(proxy, gw.stack.config).embeddings(embeddings_body(texts, MODEL)))
    return [list(item.embedding) for item in answer.data]  # type: ignore[arg-type]


def test_embeddings_in_both_encodings_equal_a_direct_call(gw: GatewayStack, client: openai.OpenAI,
                                                          proxy: str) -> None:
    texts = ["first text", "second text"]
    expected = direct_vectors(gw, proxy, texts)
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    # The client asks for base64 unless told, and decodes it itself.
    default = client.embeddings.create(model=MODEL, input=texts)
    for answer in (floats, default):
        assert len(answer.data) == len(expected)
        for item, vector in zip(answer.data, expected, strict=True):
            assert item.embedding == pytest.approx(vector)
    raw = httpx.post(f"{gw.base_url}/embeddings", json={
        "model": MODEL, "input": texts, "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {gw.key}"}, timeout=30).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert list(decoded) == pytest.approx(expected[0])


# ---- errors and routing --------------------------------------------------------------------


def test_a_bad_body_is_refused_before_any_job(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[])
    assert caught.value.body["param"] == "messages"  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
def test_the_upstreams_refusal_is_passed_on(client: openai.OpenAI, stream: bool) -> None:
    """Streamed or not: an error before the first chunk is a plain answer."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=messages("x"), top_p=1.5,
                                       stream=stream)
    assert "top_p" in caught.value.message
    assert caught.value.code == "decimal_above_max_value"
    assert caught.value.request_id  # the job's id


def test_an_unknown_model_is_404_naming_the_known_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=messages("x"))
    assert caught.value.code == "model_not_found"
    assert MODEL in caught.value.message


def test_a_model_two_proxies_serve_needs_a_choice(gw: GatewayStack, client: openai.OpenAI) -> None:
    first, second = gw.add_proxy([SHARED]), gw.add_proxy([SHARED])
    # Calls route by the gateway's last read of the proxy cache (one every 1.5 s): one
    # made between the two proxies' refreshes knows the first only, and routes to it.
    wait_until(lambda: {(SHARED, first), (SHARED, second)} <= {
        (m.id, m.owned_by) for m in client.models.list().data}, 10, 0.1,
        what="both proxies in the gateway's routing")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=SHARED, messages=messages("x"))
    assert first in caught.value.message and second in caught.value.message
    assert "X-Mpq-Proxy" in caught.value.message
    raw = client.chat.completions.with_raw_response.create(
        model=SHARED, messages=messages("x"), extra_headers={"X-Mpq-Proxy": second})
    record = run_sync(gw.stack.store.load(raw.headers["x-request-id"]))
    assert record is not None and record.proxy == second
    assert raw.parse().choices[0].message.content


def test_models_lists_each_proxys_models(client: openai.OpenAI, proxy: str) -> None:
    models = client.models.list().data
    assert {(m.id, m.owned_by) for m in models} >= {(MODEL, proxy)}
    assert all(m.object == "model" for m in models)
    assert client.models.retrieve(MODEL).owned_by == proxy
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# ---- retries, backpressure, leaving --------------------------------------------------------


def test_a_retry_mid_stream_sends_each_character_once(gw: GatewayStack, client: openai.OpenAI,
                                                      proxy: str) -> None:
    prompt = messages("a stream that is cut and retried")
    whole = client.chat.completions.create(model=MODEL, messages=prompt)
    gw.stack.faults(proxy, cut_stream_rate=1.0, cut_after_chunks=4)
    try:
        with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=prompt, stream=True) as response:
            job_id = response.headers["x-request-id"]
            wait_until(lambda: job_status(gw, job_id) == JobStatus.RETRYING, 20, 0.02,
                       what="the cut attempt to be retried")
            gw.stack.faults(proxy)
            chunks = list(response.parse())
    finally:
        gw.stack.faults(proxy)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    entries = run_sync(gw.stack.store.read_chunks(job_id))
    first_attempt = [entry for _, entry in entries if entry.attempt == 1]
    assert any(entry.kind == "delta" for entry in first_attempt)  # it was cut mid-stream
    assert first_attempt[-1].kind == "error"


def test_a_failure_after_the_stream_began_is_sent_as_an_error(
        gw: GatewayStack, client: openai.OpenAI, proxy: str) -> None:
    """Every attempt is cut: the client raises instead of taking the cut text as a reply."""
    gw.stack.faults(proxy, cut_stream_rate=1.0, cut_after_chunks=4)
    received: list[str] = []
    try:
        with pytest.raises(openai.APIError) as caught:
            for chunk in client.chat.completions.create(
                    model=MODEL, messages=messages("always cut"), stream=True):
                received += [c.delta.content or "" for c in chunk.choices]
    finally:
        gw.stack.faults(proxy)
    assert "".join(received)  # the first attempt's text was relayed
    assert "StreamInterruptedError" in caught.value.message


def test_a_call_past_the_timeout_gets_504_and_its_job_is_cancelled(
        gw: GatewayStack, client: openai.OpenAI, proxy: str) -> None:
    gw.stack.faults(proxy, slow_rate=1.0, slow_s=CALL_TIMEOUT_S + 2)
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=MODEL, messages=messages("too slow"))
    finally:
        gw.stack.faults(proxy)
    assert caught.value.status_code == 504
    assert caught.value.code == "timeout"
    assert job_status(gw, caught.value.request_id or "") == JobStatus.CANCELLED


def test_a_stream_past_the_timeout_ends_with_a_timeout_error_and_its_job_is_cancelled(
        gw: GatewayStack) -> None:
    body = {"model": MODEL, "messages": messages("a story too long"), "stream": True}
    with gw.stack.emulator_settings(tpot_s=0.05, default_completion_tokens=400), httpx.stream(
            "POST", f"{gw.base_url}/chat/completions", json=body,
            headers={"Authorization": f"Bearer {gw.key}"}, timeout=30) as reply:
        job_id = reply.headers["x-request-id"]
        events = [json.loads(line[6:]) for line in reply.iter_lines()
                  if line.startswith("data: {")]
    assert any(e.get("choices") and e["choices"][0]["delta"].get("content") for e in events)
    assert events[-1]["error"]["code"] == "timeout"
    assert job_status(gw, job_id) == JobStatus.CANCELLED


def _held(gw: GatewayStack) -> int:
    key = Keys(gw.stack.settings.key_prefix).gateway_interactive()
    return int(run_sync(gw.stack.redis.zcard(key)))


def test_past_the_limit_of_calls_in_flight_a_call_gets_429(gw: GatewayStack,
                                                           client: openai.OpenAI) -> None:
    slow = gw.add_proxy(["gw-slow-model"])
    gw.stack.faults(slow, slow_rate=1.0, slow_s=2.0)
    replies: list[str] = []

    def call() -> None:
        reply = client.chat.completions.create(model="gw-slow-model",
                                                    messages=messages("slow"))
        replies.append(reply.choices[0].message.content or "")

    threads = [threading.Thread(target=call) for _ in range(MAX_IN_FLIGHT)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: _held(gw) == MAX_IN_FLIGHT, 10, 0.02, what="the calls in flight")
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gw-slow-model", messages=messages("x"))
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.code == "rate_limit_exceeded"
    finally:
        for thread in threads:
            thread.join(30)
        gw.stack.faults(slow)
    assert len(replies) == MAX_IN_FLIGHT
    wait_until(lambda: _held(gw) == 0, 5, 0.02, what="the slots to be freed")


def test_a_client_that_leaves_mid_stream_cancels_its_job(gw: GatewayStack) -> None:
    body = {"model": MODEL, "messages": messages("a long story"), "stream": True}
    with gw.stack.emulator_settings(tpot_s=0.05, default_completion_tokens=400):
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {gw.key}"}, timeout=30) as reply:
            job_id = reply.headers["x-request-id"]
            lines = reply.iter_lines()
            assert next(lines).startswith("data: ")
        wait_until(lambda: job_status(gw, job_id) == JobStatus.CANCELLED, 10, 0.05,
                   what="the job to be cancelled")
    wait_until(lambda: _held(gw) == 0, 5, 0.02, what="the slot to be freed")


def job_ids(gw: GatewayStack) -> set[str]:
    keys = Keys(gw.stack.settings.key_prefix)
    prefix = keys.job("x")[:-1]

    async def scan() -> set[str]:
        return {key[len(prefix):] async for key in gw.stack.redis.scan_iter(f"{prefix}*")
                if ":" not in key[len(prefix):]}

    return run_sync(scan())


def test_a_client_that_leaves_a_plain_call_cancels_its_job(gw: GatewayStack,
                                                           proxy: str) -> None:
    before = job_ids(gw)
    gw.stack.faults(proxy, slow_rate=1.0, slow_s=2.5)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{gw.base_url}/chat/completions", json={
                "model": MODEL, "messages": messages("leaving")},
                headers={"Authorization": f"Bearer {gw.key}"}, timeout=0.5)
        (job_id,) = job_ids(gw) - before
        wait_until(lambda: job_status(gw, job_id) == JobStatus.CANCELLED, 1.5, 0.02,
                   what="the job to be cancelled (before its slow answer)")
    finally:
        gw.stack.faults(proxy)
    wait_until(lambda: _held(gw) == 0, 5, 0.02, what="the slot to be freed")

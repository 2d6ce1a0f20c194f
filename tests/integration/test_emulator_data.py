"""The emulator's data plane over a real socket: both APIs, errors, policies and faults."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from polling import wait_until

from emulator.server import EmulatorServer
from emulator.settings import EmulatorSettings

CONTROL = "/2025-09-10/agents/model-proxies"
PROMPT = [{"role": "user", "content": "Say something about rate limits."}]


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(create_delay_s=0, update_delay_s=0, delete_delay_s=0)
    with EmulatorServer(settings) as running:
        yield running


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def create_proxy(
    client: httpx.Client,
    name: str,
    policies: dict[str, Any] | None = None,
    mode: str = "single",
    models: tuple[str, ...] = ("qwen-max", "qwen-plus"),
) -> None:
    config: dict[str, Any] = {"endpoints": [{"modelNames": list(models)}, {"modelNames": ["x"]}]}
    if policies is not None:
        config["policies"] = policies
    body = {
        "modelProxyName": name,
        "cpu": 2,
        "memory": 4096,
        "proxyMode": mode,
        "proxyConfig": config,
    }
    assert client.post(CONTROL, json=body).status_code == 200


def put_settings(client: httpx.Client, **changes: Any) -> None:
    assert client.put("/_emulator/settings", json=changes).status_code == 200


def put_faults(client: httpx.Client, name: str, **faults: Any) -> None:
    assert client.put(f"/_emulator/proxies/{name}/faults", json=faults).status_code == 200


def chat(client: httpx.Client, name: str, **body: Any) -> httpx.Response:
    return client.post(f"/models/{name}/v1/chat/completions", json={"messages": PROMPT, **body})


def responses(client: httpx.Client, name: str, **body: Any) -> httpx.Response:
    return client.post(f"/models/{name}/v1/responses", json={"input": "Say hi.", **body})


def sse_lines(client: httpx.Client, path: str, body: dict[str, Any]) -> list[str]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line for line in response.iter_lines() if line]


def chat_chunks(client: httpx.Client, name: str, **body: Any) -> tuple[list[dict[str, Any]], str]:
    lines = sse_lines(
        client, f"/models/{name}/v1/chat/completions", {"messages": PROMPT, "stream": True, **body}
    )
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line[6:]) for line in lines[:-1]], lines[-1]


def response_events(client: httpx.Client, name: str, **body: Any) -> list[dict[str, Any]]:
    lines = sse_lines(
        client, f"/models/{name}/v1/responses", {"input": "Say hi.", "stream": True, **body}
    )
    events = []
    for head, data in zip(lines[::2], lines[1::2], strict=True):
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        events.append(event)
    return events


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert {"message", "type", "code"} <= set(error)
    return error


# -- chat completions ----------------------------------------------------------------------


def test_chat_completion(client: httpx.Client) -> None:
    create_proxy(client, "p1")
    body = chat(client, "p1").json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "qwen-max"  # the default of a single proxy
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"]
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == 6  # Say something about rate limits .
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert chat(client, "p1", model="qwen-plus").json()["model"] == "qwen-plus"


def test_chat_is_deterministic_and_max_tokens_cuts(client: httpx.Client) -> None:
    create_proxy(client, "p1")
    first = chat(client, "p1").json()
    second = chat(client, "p1").json()
    assert first["id"] != second["id"]
    assert first["choices"] == second["choices"]
    cut = chat(client, "p1", max_tokens=2).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 2
    assert first["choices"][0]["message"]["content"].startswith(
        cut["choices"][0]["message"]["content"]
    )


def test_chat_stream_without_usage(client: httpx.Client) -> None:
    create_proxy(client, "p1")
    chunks, last = chat_chunks(client, "p1")
    assert last == "data: [DONE]"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == chat(client, "p1").json()["choices"][0]["message"]["content"]


def test_chat_stream_with_usage(client: httpx.Client) -> None:
    create_proxy(client, "p1")
    chunks, last = chat_chunks(client, "p1", stream_options={"include_usage": True})
    assert last == "data: [DONE]"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == chat(client, "p1").json()["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_multi_mode_models(client: httpx.Client) -> None:
    create_proxy(client, "pm", mode="multi", models=("a", "b"))
    assert chat(client, "pm").json()["model"] == "pm"
    assert chat(client, "pm", model="x").json()["model"] == "x"
    assert error_of(chat(client, "pm", model="nope"), 400)["code"] == "model_not_found"


def test_every_answer_has_a_model_request_id(client: httpx.Client) -> None:
    """OpenAI's `x-request-id` on each answer, error or not, streamed or not: its own per
    request, and not the gateway's `x-acs-request-id`."""
    create_proxy(client, "p1")
    with client.stream("POST", "/models/p1/v1/chat/completions",
                       json={"messages": PROMPT, "stream": True}) as streamed:
        streamed.read()
    answers = [chat(client, "p1"), streamed, responses(client, "p1"),
               client.post("/models/p1/v1/embeddings", json={"input": "hi"}),
               chat(client, "p1", model="nope"), chat(client, "nope")]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 400, 404]
    ids = [answer.headers["x-request-id"] for answer in answers]
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", request_id) for request_id in ids), ids
    assert len(set(ids)) == len(ids)
    assert all(a.headers["x-acs-request-id"] != a.headers["x-request-id"] for a in answers)


# -- responses -----------------------------------------------------------------------------


def test_response(client: httpx.Client) -> None:
    create_proxy(client, "p1")
    body = responses(client, "p1").json()
    assert (body["object"], body["status"], body["model"]) == ("response", "completed", "qwen-max")
    content = body["output"][0]["content"][0]
    assert content["type"] == "output_text"
    assert content["text"]
    usage = body["usage"]
    assert usage["input_tokens"] == 3
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert responses(client, "p1").json()["output"][0]["content"] == body["output"][0]["content"]


def test_response_stream(client: httpx.Client) -> None:
    create_proxy(client, "p1")
    events = response_events(client, "p1")
    types = [e["type"] for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["text"] == "".join(deltas)
    completed = events[-1]["response"]
    assert completed["usage"]["output_tokens"] == len(deltas)
    assert completed["output"][0]["content"][0]["text"] == "".join(deltas)
    whole = responses(client, "p1").json()
    assert (completed["output"][0]["content"], completed["usage"]) == (
        whole["output"][0]["content"], whole["usage"])


def test_response_cut_by_max_output_tokens_is_incomplete(client: httpx.Client) -> None:
    create_proxy(client, "p1")
    events = response_events(client, "p1", max_output_tokens=3)
    assert events[-1]["type"] == "response.incomplete"
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) == 3
    cut = events[-1]["response"]
    assert (cut["status"], cut["incomplete_details"]) == (
        "incomplete", {"reason": "max_output_tokens"})
    assert cut["usage"]["output_tokens"] == 3
    assert responses(client, "p1", max_output_tokens=3).json()["status"] == "incomplete"


# -- reply length --------------------------------------------------------------------------


def streamed_text(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["delta"]["content"] for c in chunks
            if c["choices"] and c["choices"][0]["delta"].get("content")]


def test_a_configured_reply_length_streams_that_many_tokens(client: httpx.Client) -> None:
    create_proxy(client, "long")
    put_settings(client, reply_tokens=500)
    chunks, last = chat_chunks(client, "long", stream_options={"include_usage": True})
    assert last == "data: [DONE]"
    pieces = streamed_text(chunks)
    assert len(pieces) == 500  # one chunk per token
    assert chunks[-1]["usage"]["completion_tokens"] == 500
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    whole = chat(client, "long").json()
    assert whole["choices"][0]["message"]["content"] == "".join(pieces)  # deterministic
    assert whole["usage"]["completion_tokens"] == 500


def test_max_tokens_caps_a_long_reply(client: httpx.Client) -> None:
    create_proxy(client, "long")
    put_settings(client, reply_tokens=500)
    full = chat(client, "long").json()["choices"][0]["message"]["content"]
    for cap in ({"max_tokens": 120}, {"max_completion_tokens": 120}):
        chunks, _ = chat_chunks(client, "long", **cap)
        pieces = streamed_text(chunks)
        assert len(pieces) == 120
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert full.startswith("".join(pieces))
    events = response_events(client, "long", max_output_tokens=200)
    assert sum(e["type"] == "response.output_text.delta" for e in events) == 200


def test_per_proxy_reply_length(client: httpx.Client) -> None:
    create_proxy(client, "long")
    create_proxy(client, "short")
    put = client.put("/_emulator/proxies/long/reply", json={"reply_tokens": 300})
    assert put.status_code == 200, put.text
    assert client.get("/_emulator/proxies/long/reply").json() == {"reply_tokens": 300}
    assert client.get("/_emulator/proxies/short/reply").json() == {"reply_tokens": None}
    events = response_events(client, "long")
    assert sum(e["type"] == "response.output_text.delta" for e in events) == 300
    assert events[-1]["response"]["usage"]["output_tokens"] == 300
    assert chat(client, "short").json()["usage"]["completion_tokens"] <= 16
    put_settings(client, reply_tokens=40)
    assert chat(client, "long").json()["usage"]["completion_tokens"] == 300  # its own wins
    assert client.delete("/_emulator/proxies/long/reply").json() == {"reply_tokens": 40}
    assert chat(client, "long").json()["usage"]["completion_tokens"] == 40
    assert client.put("/_emulator/proxies/ghost/reply", json={"reply_tokens": 3}).status_code == 404
    assert client.put("/_emulator/proxies/long/reply", json={"reply_tokens": 0}).status_code == 400


def test_reply_length_can_be_unset_again(client: httpx.Client) -> None:
    create_proxy(client, "p1")
    put_settings(client, reply_tokens=100)
    assert chat(client, "p1").json()["usage"]["completion_tokens"] == 100
    put_settings(client, reply_tokens=None)
    assert client.get("/_emulator/settings").json()["reply_tokens"] is None
    assert chat(client, "p1").json()["usage"]["completion_tokens"] <= 16


def test_a_long_paced_stream_keeps_its_pace(client: httpx.Client) -> None:
    create_proxy(client, "long")
    put_settings(client, reply_tokens=200, tpot_s=0.001)
    started = time.monotonic()
    chunks, _ = chat_chunks(client, "long")
    assert len(streamed_text(chunks)) == 200
    assert time.monotonic() - started >= 199 * 0.001


# -- errors --------------------------------------------------------------------------------


def test_unknown_proxy_is_404(client: httpx.Client) -> None:
    error = error_of(chat(client, "ghost"), 404)
    assert "does not exist" in error["message"]
    error_of(responses(client, "ghost"), 404)


def test_proxy_not_ready_is_409(client: httpx.Client) -> None:
    put_settings(client, create_delay_s=60)
    create_proxy(client, "young")
    error = error_of(chat(client, "young"), 409)
    assert "CREATING" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": PROMPT, "model": "gpt-4o"},
        {"messages": PROMPT, "model": "p1"},  # the proxy name is no model in single mode
        {"messages": PROMPT, "max_tokens": "3"},
        {"messages": [{"content": "no role"}]},
    ],
)
def test_bad_chat_body_is_400(client: httpx.Client, body: dict[str, Any]) -> None:
    create_proxy(client, "p1")
    response = client.post("/models/p1/v1/chat/completions", json=body)
    assert error_of(response, 400)["type"] == "invalid_request_error"


def test_invalid_json_is_400(client: httpx.Client) -> None:
    create_proxy(client, "p1")
    response = client.post("/models/p1/v1/responses", content=b"{not json")
    error_of(response, 400)


def test_data_auth_is_required_when_configured() -> None:
    settings = EmulatorSettings(create_delay_s=0)
    with (
        EmulatorServer(settings, api_keys=["sk-test"]) as running,
        httpx.Client(base_url=running.url) as http,
    ):
        create_proxy(http, "p1")
        assert chat(http, "p1").status_code == 401
        http.headers["Authorization"] = "Bearer sk-test"
        assert chat(http, "p1").status_code == 200


# -- policies ------------------------------------------------------------------------------


def assert_retry_after(response: httpx.Response, low_s: float, high_s: float) -> None:
    error_of(response, 429)
    ms = int(response.headers["retry-after-ms"])
    assert low_s * 1000 <= ms <= high_s * 1000
    assert int(response.headers["Retry-After"]) == -(-ms // 1000)


def test_token_rate_limit(client: httpx.Client) -> None:
    create_proxy(client, "tl", {"tokenRateLimiter": {"tpm": 60}})
    used = 0
    while used < 60:
        body = chat(client, "tl").json()
        used += body["usage"]["total_tokens"]
    # 60 tpm refills 1 token/s: the debt beyond the limit, plus one token, in seconds.
    response = chat(client, "tl")
    assert_retry_after(response, used - 60, used - 60 + 1)
    assert "tpm=60" in response.json()["error"]["message"]
    stats = client.get("/_emulator/stats").json()
    assert stats["by_proxy"]["tl"]["429"] == 1
    assert stats["rate_limited"] == 1


def test_token_rate_limit_resets_when_policies_change(client: httpx.Client) -> None:
    create_proxy(client, "tl", {"tokenRateLimiter": {"tpd": 5}})
    used = chat(client, "tl").json()["usage"]["total_tokens"]
    wait_s = (used - 5 + 1) * 86400 / 5  # the debt plus one token, at 5 tokens a day
    assert_retry_after(chat(client, "tl"), wait_s - 1, wait_s)
    update = {
        "proxyConfig": {
            "endpoints": [{"modelNames": ["qwen-max"]}],
            "policies": {"tokenRateLimiter": {"tpd": 6}},
        }
    }
    assert client.put(f"{CONTROL}/tl", json=update).status_code == 200
    assert chat(client, "tl").status_code == 200


def test_request_rate_limit_extension(client: httpx.Client) -> None:
    create_proxy(client, "rl", {"requestRateLimiter": {"rpm": 3}})
    assert [chat(client, "rl").status_code for _ in range(3)] == [200] * 3
    response = chat(client, "rl")
    assert_retry_after(response, 19, 20)  # one request every 20 s
    assert "3 rpm" in response.json()["error"]["message"]


def test_concurrency_limit(client: httpx.Client) -> None:
    create_proxy(client, "cl", {"concurrencyLimit": 1})
    put_settings(client, ttft_s=1.0, tpot_s=0.0)
    with client.stream(
        "POST", "/models/cl/v1/chat/completions", json={"messages": PROMPT, "stream": True}
    ) as first:
        assert first.status_code == 200
        refused = chat(client, "cl")
        assert_retry_after(refused, 0.001, 1.0)
        assert "concurrency" in refused.json()["error"]["message"]
        first.read()
    put_settings(client, ttft_s=0.0)
    assert chat(client, "cl").status_code == 200  # the slot is free once the stream ended


def test_client_gone_frees_the_slot(client: httpx.Client) -> None:
    create_proxy(client, "cl", {"concurrencyLimit": 1})
    put_settings(client, ttft_s=30.0)
    with client.stream(
        "POST", "/models/cl/v1/chat/completions", json={"messages": PROMPT, "stream": True}
    ) as first:
        assert '"role"' in next(line for line in first.iter_lines() if line)
    # The stream is closed mid-way; the server notices and frees the slot.
    put_settings(client, ttft_s=0.0)
    wait_until(lambda: chat(client, "cl").status_code != 429, 5,
               what="the closed stream's concurrency slot to be freed")


TTFT_S = 1.5


def test_latency(client: httpx.Client) -> None:
    # A time to first token long enough that "the role comes before it" holds with a wide
    # margin on a loaded machine (with 0.3 s, the role once took 0.385 s to arrive).
    create_proxy(client, "p1")
    put_settings(client, ttft_s=TTFT_S, tpot_s=0.02)
    started = time.monotonic()
    with client.stream(
        "POST",
        "/models/p1/v1/chat/completions",
        json={"messages": PROMPT, "stream": True, "max_tokens": 5},
    ) as response:
        lines = response.iter_lines()
        assert '"role"' in next(line for line in lines if line)  # sent before the first token
        role_s = time.monotonic() - started
        assert '"content"' in next(line for line in lines if line)
        first_token_s = time.monotonic() - started
        assert [line for line in lines if line][-1] == "data: [DONE]"
    total_s = time.monotonic() - started
    assert role_s < TTFT_S - 0.5
    assert first_token_s >= TTFT_S
    assert total_s >= TTFT_S + 4 * 0.02


# -- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "status"), [("error_500_rate", 500), ("error_503_rate", 503)])
def test_injected_errors(client: httpx.Client, rate: str, status: int) -> None:
    create_proxy(client, "f")
    put_faults(client, "f", **{rate: 1.0})
    for _ in range(3):
        assert error_of(chat(client, "f"), status)["type"] == "server_error"
        error_of(responses(client, "f", stream=True), status)
    events = client.get("/_emulator/stats").json()["events"]
    assert events[f"injected_{status}"] == 6


def test_injected_429_has_retry_after(client: httpx.Client) -> None:
    create_proxy(client, "f")
    put_faults(client, "f", error_429_rate=1.0, retry_after_s=2.5)
    response = chat(client, "f")
    error_of(response, 429)
    assert response.headers["Retry-After"] == "3"
    assert response.headers["retry-after-ms"] == "2500"


def test_faults_are_per_proxy(client: httpx.Client) -> None:
    create_proxy(client, "f")
    create_proxy(client, "ok")
    put_faults(client, "f", error_500_rate=1.0)
    assert chat(client, "ok").status_code == 200


def test_slow_answer_times_the_client_out(client: httpx.Client) -> None:
    create_proxy(client, "f")
    put_faults(client, "f", slow_rate=1.0, slow_s=1.0)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/models/f/v1/chat/completions", json={"messages": PROMPT}, timeout=0.3)
    started = time.monotonic()
    assert chat(client, "f").status_code == 200
    assert time.monotonic() - started >= 1.0


def read_until_broken(client: httpx.Client, path: str, body: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            lines.extend(line for line in response.iter_lines() if line)
    return lines


@pytest.mark.parametrize("cut_after", [0, 2, 1000])
def test_cut_chat_stream(client: httpx.Client, cut_after: int) -> None:
    create_proxy(client, "f")
    put_faults(client, "f", cut_stream_rate=1.0, cut_after_chunks=cut_after)
    body = {"messages": PROMPT, "stream": True, "stream_options": {"include_usage": True}}
    lines = read_until_broken(client, "/models/f/v1/chat/completions", body)
    assert "data: [DONE]" not in lines
    if cut_after < 1000:
        assert len(lines) == cut_after
    else:  # a cut always lands before [DONE], here just after the usage chunk
        assert json.loads(lines[-1][6:])["choices"] == []
    assert chat(client, "f").status_code == 200  # non-streaming answers are not cut
    assert client.get("/_emulator/stats").json()["events"]["stream_cut"] == 1


def test_cut_response_stream(client: httpx.Client) -> None:
    create_proxy(client, "f")
    put_faults(client, "f", cut_stream_rate=1.0, cut_after_chunks=5)
    lines = read_until_broken(client, "/models/f/v1/responses", {"input": "hi", "stream": True})
    assert len(lines) == 10  # 5 events of two lines each
    assert not any("response.completed" in line for line in lines)


def test_cut_stream_frees_the_concurrency_slot(client: httpx.Client) -> None:
    create_proxy(client, "f", {"concurrencyLimit": 1})
    put_faults(client, "f", cut_stream_rate=1.0, cut_after_chunks=1)
    for _ in range(3):
        read_until_broken(
            client, "/models/f/v1/chat/completions", {"messages": PROMPT, "stream": True}
        )
    put_faults(client, "f")
    assert chat(client, "f").status_code == 200

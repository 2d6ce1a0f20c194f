"""The data plane's wire: request checks, served model names, bodies and SSE frames."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelproxy.emulator.openai_wire import (
    DONE_FRAME,
    Reply,
    WireError,
    chat_completion,
    chat_frames,
    parse_chat,
    parse_json,
    parse_responses,
    resolve_model,
    response_frames,
    response_object,
    served_models,
)

MESSAGES = [{"role": "user", "content": "hi there"}]


def reply(include_usage: bool = False) -> Reply:
    return Reply("resp_abc", 1, "m", ["Hello", " world", "."], "stop", 2, include_usage)


def error_of(call: Any, *args: Any) -> WireError:
    with pytest.raises(WireError) as info:
        call(*args)
    return info.value


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b"3"])
def test_body_must_be_a_json_object(raw: bytes) -> None:
    assert error_of(parse_json, raw).status == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content"),
        ({"messages": MESSAGES, "model": 3}, "model"),
        ({"messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": True}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": 1.5}, "max_tokens"),
        ({"messages": MESSAGES, "stream_options": []}, "stream_options"),
        ({"messages": MESSAGES, "stream_options": {"include_usage": 1}}, "include_usage"),
    ],
)
def test_bad_chat_bodies(body: dict[str, Any], param: str) -> None:
    error = error_of(parse_chat, body)
    assert error.status == 400
    assert error.param == param
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_chat_request() -> None:
    body = {
        "model": "m",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 9,
        "max_completion_tokens": 5,
        "temperature": 0.2,
    }
    wanted = parse_chat(body)
    assert (wanted.model, wanted.prompt, wanted.max_tokens) == ("m", "hi there", 5)
    assert wanted.stream
    assert wanted.include_usage
    plain = parse_chat({"messages": MESSAGES, "stream": None, "stream_options": None})
    assert (plain.model, plain.max_tokens, plain.stream, plain.include_usage) == (
        None,
        None,
        False,
        False,
    )


@pytest.mark.parametrize(
    "body",
    [{}, {"input": ""}, {"input": []}, {"input": 3}, {"input": [3]}, {"input": "x", "stream": 1}],
)
def test_bad_responses_bodies(body: dict[str, Any]) -> None:
    assert error_of(parse_responses, body).status == 400


def test_responses_request() -> None:
    wanted = parse_responses(
        {"input": "tell me", "instructions": "be kind", "max_output_tokens": 7, "stream": True}
    )
    assert (wanted.prompt, wanted.max_tokens, wanted.stream) == ("be kind\ntell me", 7, True)
    assert not wanted.include_usage


SINGLE = {
    "proxyMode": "single",
    "proxyConfig": {
        "endpoints": [{"modelNames": ["qwen-max", "qwen-plus"]}, {"modelNames": ["x"]}]
    },
}
MULTI = {
    "proxyMode": "multi",
    "proxyConfig": {"endpoints": [{"modelNames": ["a", "b"]}, {"modelNames": ["c"]}]},
}


@pytest.mark.parametrize(
    ("wire", "default", "accepted"),
    [
        (SINGLE, "qwen-max", ["qwen-max", "qwen-plus"]),
        (MULTI, "px", ["px", "a", "b", "c"]),
        ({**MULTI, "proxyMode": None}, "px", ["px", "a", "b", "c"]),
        ({"proxyMode": "single", "proxyConfig": {"endpoints": []}}, "", []),
        ({"proxyMode": "single"}, "", []),
        ({}, "px", ["px"]),
    ],
)
def test_served_models(wire: dict[str, Any], default: str, accepted: list[str]) -> None:
    assert served_models("px", wire) == (default, accepted)


@pytest.mark.parametrize(
    ("wire", "requested", "model"),
    [
        (SINGLE, None, "qwen-max"),
        (SINGLE, "", "qwen-max"),
        (SINGLE, "qwen-plus", "qwen-plus"),
        (MULTI, None, "px"),
        (MULTI, "c", "c"),
        (MULTI, "px", "px"),
    ],
)
def test_resolve_model(wire: dict[str, Any], requested: str | None, model: str) -> None:
    assert resolve_model(requested, "px", wire) == model


@pytest.mark.parametrize(("wire", "requested"), [(SINGLE, "x"), (SINGLE, "px"), (MULTI, "z")])
def test_model_not_served(wire: dict[str, Any], requested: str) -> None:
    error = error_of(resolve_model, requested, "px", wire)
    assert (error.status, error.code, error.param) == (400, "model_not_found", "model")


def test_chat_completion_body() -> None:
    body = chat_completion(reply())
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello world.",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def data_of(frame: bytes) -> dict[str, Any]:
    text = frame.decode()
    assert text.endswith("\n\n")
    data: dict[str, Any] = json.loads(text.split("data: ", 1)[1])
    return data


def test_chat_frames_without_usage() -> None:
    frames = list(chat_frames(reply()))
    assert [f.kind for f in frames] == ["meta", "token", "token", "token", "meta", "final"]
    assert frames[-1].data == DONE_FRAME
    chunks = [data_of(f.data) for f in frames[:-1]]
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello world."
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_chat_frames_with_usage() -> None:
    frames = list(chat_frames(reply(include_usage=True)))
    chunks = [data_of(f.data) for f in frames[:-1]]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_response_object() -> None:
    body = response_object(reply())
    assert (body["object"], body["status"]) == ("response", "completed")
    assert body["output"][0]["content"][0] == {
        "type": "output_text",
        "text": "Hello world.",
        "annotations": [],
    }
    assert body["usage"]["input_tokens"] == 2
    assert body["usage"]["output_tokens"] == 3
    assert body["usage"]["total_tokens"] == 5
    assert "output_text" not in body


def test_response_frames() -> None:
    frames = list(response_frames(reply()))
    events = []
    for frame in frames:
        head, data = frame.data.decode().split("\n", 1)
        payload = json.loads(data.removeprefix("data: "))
        assert head == f"event: {payload['type']}"
        events.append(payload)
    types = [e["type"] for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert [f.kind for f in frames].count("final") == 1
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == (
        "Hello world."
    )
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["text"] == "Hello world."
    assert events[-1]["response"]["usage"]["total_tokens"] == 5

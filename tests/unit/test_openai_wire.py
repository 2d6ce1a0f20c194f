"""The data plane's wire: request checks, served model names, bodies and SSE frames."""

from __future__ import annotations

import json
from typing import Any

import pytest

from emulator.openai_errors import WireError
from emulator.openai_requests import (
    parse_chat,
    parse_json,
    parse_responses,
    resolve_model,
    served_models,
)
from emulator.openai_wire import (
    DONE_FRAME,
    Reply,
    chat_completion,
    chat_frames,
    response_frames,
    response_object,
)

MESSAGES = [{"role": "user", "content": "hi there"}]


def reply(include_usage: bool = False) -> Reply:
    return Reply("resp_abc", 1, "m", ["Hello", " world", "."], "stop", 2, include_usage)


def cut_reply() -> Reply:
    return Reply("resp_cut", 1, "m", ["Hello", " world"], "length", 2, False)


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
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]},
         "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages[0].content[0]"),
        ({"messages": MESSAGES, "model": 3}, "model"),
        ({"messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": True}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": 1.5}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": 1e999}, "max_tokens"),
        ({"messages": MESSAGES, "max_completion_tokens": "5"}, "max_completion_tokens"),
        ({"messages": MESSAGES, "stream_options": []}, "stream_options"),
        ({"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": 1}},
         "stream_options.include_usage"),
        ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": MESSAGES, "stream": False, "stream_options": {}}, "stream_options"),
        ({"messages": MESSAGES, "n": 2}, "n"),
        ({"messages": MESSAGES, "temperature": 2.5}, "temperature"),
        ({"messages": MESSAGES, "temperature": True}, "temperature"),
        ({"messages": MESSAGES, "top_p": -0.1}, "top_p"),
    ],
)
def test_bad_chat_bodies(body: dict[str, Any], param: str) -> None:
    error = error_of(parse_chat, body)
    assert error.status == 400
    assert error.param == param
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({}, "missing_required_parameter", "Missing required parameter: 'messages'."),
        ({"messages": []}, "empty_array", "Invalid 'messages': empty array."),
        ({"messages": [{"role": "user", "content": 3}]}, "invalid_type",
         "Invalid type for 'messages[0].content': expected a string or an array of content"),
        ({"messages": MESSAGES, "max_tokens": "3"}, "invalid_type",
         "Invalid type for 'max_tokens': expected an integer."),
        ({"messages": MESSAGES, "max_tokens": 0}, "integer_below_min_value",
         "Expected a value >= 1, but got 0 instead."),
        ({"messages": MESSAGES, "temperature": 2.5}, "decimal_above_max_value",
         "Expected a value <= 2.0, but got 2.5 instead."),
        ({"messages": [{"role": "robot", "content": "x"}]}, "invalid_value",
         "Invalid value for 'messages[0].role': 'robot'. Supported values are: 'system',"),
        ({"messages": [{"role": "tool"}]}, "missing_required_parameter",
         "Missing required parameter: 'messages[0].content'."),
        ({"messages": MESSAGES, "stream_options": {}}, "invalid_value",
         "'stream_options' is only allowed when 'stream' is true"),
    ],
)
def test_errors_are_worded_as_openai_words_them(
    body: dict[str, Any], code: str, message: str
) -> None:
    error = error_of(parse_chat, body)
    assert error.code == code
    assert message in error.message
    assert error.type == "invalid_request_error"


def test_a_long_bad_value_is_cut_in_the_message() -> None:
    error = error_of(parse_chat, {"messages": [{"role": "r" * 10_000, "content": "x"}]})
    assert len(error.message) < 300


def test_messages_that_may_omit_content() -> None:
    calls = [{"role": "user", "content": "hi"},
             {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
             {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "ok"}]},
             {"role": "function", "name": "f", "content": None}]
    assert parse_chat({"messages": calls, "n": 1, "temperature": 0}).prompt == "hi\nok"


@pytest.mark.parametrize("raw", [b'{"messages": NaN}', b'{"x": Infinity}', b'{"x": -Infinity}'])
def test_non_json_constants_are_refused(raw: bytes) -> None:
    error = error_of(parse_json, raw)
    assert (error.status, error.code) == (400, "invalid_json")


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
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": 3}, "input"),
        ({"input": [3]}, "input[0]"),
        ({"input": ["x"]}, "input[0]"),
        ({"input": [{"content": "x"}]}, "input[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": "x", "stream": 1}, "stream"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "instructions": 3}, "instructions"),
    ],
)
def test_bad_responses_bodies(body: dict[str, Any], param: str) -> None:
    error = error_of(parse_responses, body)
    assert (error.status, error.param) == (400, param)


def test_responses_input_items() -> None:
    items = [{"role": "user", "content": [{"type": "input_text", "text": "one"}]},
             {"type": "function_call_output", "call_id": "c1", "output": "two"}]
    assert parse_responses({"input": items}).prompt == "one\ntwo"


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


def test_a_response_cut_by_max_output_tokens_is_incomplete() -> None:
    body = response_object(cut_reply())
    assert (body["status"], body["incomplete_details"]) == (
        "incomplete", {"reason": "max_output_tokens"})
    assert body["output"][0]["status"] == "incomplete"
    assert body["usage"]["output_tokens"] == 2
    events = [json.loads(f.data.decode().split("data: ", 1)[1])
              for f in response_frames(cut_reply())]
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"] == body
    assert response_object(reply())["incomplete_details"] is None


def test_chat_frames_of_a_cut_reply_say_length() -> None:
    frames = list(chat_frames(cut_reply()))
    assert data_of(frames[-2].data)["choices"][0]["finish_reason"] == "length"
    assert chat_completion(cut_reply())["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("frames_of", [chat_frames, response_frames])
def test_a_long_reply_streams_one_frame_per_token(frames_of: Any) -> None:
    pieces = [f" w{i}" for i in range(500)]
    long = Reply("resp_long", 1, "m", pieces, "stop", 2, True)
    tokens = [data_of(f.data) for f in frames_of(long) if f.kind == "token"]
    texts = [t["delta"] if "delta" in t else t["choices"][0]["delta"]["content"] for t in tokens]
    assert texts == pieces


def test_token_chunks_have_the_chunk_shape() -> None:
    """Token frames reuse one validated chunk: each must still be a whole, valid chunk."""
    frames = [f for f in chat_frames(reply(include_usage=True)) if f.kind == "token"]
    chunks = [data_of(f.data) for f in frames]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"content": "Hello"}, {"content": " world"}, {"content": "."}]
    assert all(set(c) == {"id", "object", "created", "model", "system_fingerprint", "usage",
                          "choices"} for c in chunks)

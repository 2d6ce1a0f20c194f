"""The OpenAI-compatible wire of the data plane, as pure functions: request checks, the model
names a proxy serves, and the bodies and SSE frames of both APIs.

Bodies are plain dicts turned into JSON by `json.dumps`: the emulator must answer over a
thousand small requests a second on two cores, and pydantic on this path costs too much.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from modelproxy.emulator.synthetic import prompt_text

FrameKind = Literal["meta", "token", "final"]
DONE_FRAME = b"data: [DONE]\n\n"
# Deeper request bodies are refused (400): real ones nest a handful of levels.
MAX_JSON_DEPTH = 64
_TOO_DEEP = f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"


class WireError(Exception):
    """An OpenAI-style error answer: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> WireError:
    return WireError(400, message, code=code, param=param)


@dataclass(frozen=True)
class InferenceRequest:
    model: str | None
    prompt: str
    max_tokens: int | None
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class Reply:
    """Everything a body or stream needs; `pieces` are one token each."""

    id: str
    created: int
    model: str
    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    include_usage: bool

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)


class Frame(NamedTuple):
    data: bytes
    kind: FrameKind  # "token" frames are paced; a cut always lands before the "final" one


# -- request checks ------------------------------------------------------------------------


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest more than `limit` levels (checked without recursion, so
    the recursive readers below, e.g. `prompt_text`, never meet such a body)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_request("the request body is not valid JSON", code="invalid_json") from None
    except RecursionError:  # deeper than json itself reads
        raise bad_request(_TOO_DEEP, code="invalid_json") from None
    if _deeper_than(body, MAX_JSON_DEPTH):
        raise bad_request(_TOO_DEEP, code="invalid_json")
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return body


def _optional(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise bad_request(f"'{key}' must be {what}", param=key)
    return value


def _optional_positive_int(body: dict[str, Any], key: str) -> int | None:
    value: int | None = _optional(body, key, int, "an integer")
    if value is not None and value < 1:
        raise bad_request(f"'{key}' must be at least 1", param=key)
    return value


def _check_content(content: Any, param: str) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise bad_request(f"'{param}' must be a string or a list of content parts", param)


def _check_messages(messages: Any) -> list[Any]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages", "missing_required")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"'{param}' must be an object with a string 'role'", param)
        _check_content(message.get("content"), f"{param}.content")
    return messages


def parse_chat(body: dict[str, Any]) -> InferenceRequest:
    messages = _check_messages(body.get("messages"))
    max_tokens = _optional_positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_positive_int(body, "max_tokens")
    options = _optional(body, "stream_options", dict, "an object") or {}
    return InferenceRequest(
        model=_optional(body, "model", str, "a string"),
        prompt=prompt_text(messages),
        max_tokens=max_tokens,
        stream=bool(_optional(body, "stream", bool, "a boolean")),
        include_usage=bool(_optional(options, "include_usage", bool, "a boolean")),
    )


def parse_responses(body: dict[str, Any]) -> InferenceRequest:
    given = body.get("input")
    if not isinstance(given, str | list) or not given:
        raise bad_request("'input' must be a non-empty string or list", "input", "missing_required")
    if isinstance(given, list) and not all(isinstance(item, dict | str) for item in given):
        raise bad_request("'input' items must be objects", "input")
    instructions = _optional(body, "instructions", str, "a string")
    return InferenceRequest(
        model=_optional(body, "model", str, "a string"),
        prompt=prompt_text([instructions or "", given]),
        max_tokens=_optional_positive_int(body, "max_output_tokens"),
        stream=bool(_optional(body, "stream", bool, "a boolean")),
        include_usage=False,  # usage always arrives in response.completed
    )


# -- model names ---------------------------------------------------------------------------


def _model_names(endpoint: Any) -> list[str]:
    names = endpoint.get("modelNames") if isinstance(endpoint, dict) else None
    return [name for name in names or [] if isinstance(name, str)]


def served_models(name: str, wire: dict[str, Any]) -> tuple[str, list[str]]:
    """(the default model, every accepted model) of a proxy, as in spec §5.2.

    Single mode serves `endpoints[0].modelNames` (default: the first, or ""); multi mode (and
    a missing mode) serves the proxy name, which is the default, and every endpoint's names."""
    config = wire.get("proxyConfig")
    endpoints = (config.get("endpoints") if isinstance(config, dict) else None) or []
    if wire.get("proxyMode") == "single":
        names = _model_names(endpoints[0]) if endpoints else []
        return (names[0] if names else ""), names
    return name, [name, *(model for endpoint in endpoints for model in _model_names(endpoint))]


def resolve_model(requested: str | None, name: str, wire: dict[str, Any]) -> str:
    default, accepted = served_models(name, wire)
    if not requested or requested == default:
        return default
    if requested in accepted:
        return requested
    raise bad_request(
        f"model '{requested}' is not served by model proxy '{name}'; use one of {accepted}",
        "model",
        "model_not_found",
    )


# -- bodies and frames ---------------------------------------------------------------------


def new_reply(
    prefix: str,
    model: str,
    *,
    pieces: list[str],
    finish_reason: str,
    prompt_tokens: int,
    include_usage: bool,
) -> Reply:
    reply_id = f"{prefix}{secrets.token_hex(12)}"
    return Reply(
        reply_id, int(time.time()), model, pieces, finish_reason, prompt_tokens, include_usage
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def json_bytes(value: Any) -> bytes:
    return _dumps(value).encode()


def sse_data(value: Any) -> bytes:
    return f"data: {_dumps(value)}\n\n".encode()


def sse_event(event: str, value: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {_dumps(value)}\n\n".encode()


def chat_usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def chat_completion(reply: Reply) -> dict[str, Any]:
    message = {"role": "assistant", "content": reply.text, "refusal": None}
    return {
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
        ],
        "usage": chat_usage(reply),
        "system_fingerprint": None,
    }


def chat_frames(reply: Reply) -> Iterator[Frame]:
    """Role chunk, one chunk per token, the finish chunk, the usage chunk if asked, [DONE]."""
    head = {
        "id": reply.id,
        "object": "chat.completion.chunk",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": None,
    }
    if reply.include_usage:
        head["usage"] = None  # earlier chunks say null; the usage chunk fills it

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse_data({**head, "choices": [choice]})

    yield Frame(chunk({"role": "assistant", "content": ""}), "meta")
    for piece in reply.pieces:
        yield Frame(chunk({"content": piece}), "token")
    yield Frame(chunk({}, reply.finish_reason), "meta")
    if reply.include_usage:
        yield Frame(sse_data({**head, "choices": [], "usage": chat_usage(reply)}), "meta")
    yield Frame(DONE_FRAME, "final")


def _message_item(reply: Reply, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": reply.text, "annotations": []}]
    return {
        "id": f"msg_{reply.id[5:]}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content if status == "completed" else [],
    }


def response_object(reply: Reply, status: str = "completed") -> dict[str, Any]:
    """The Responses API `response`; output and usage only once completed."""
    done = status == "completed"
    usage = {
        "input_tokens": reply.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": reply.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    return {
        "id": reply.id,
        "object": "response",
        "created_at": reply.created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": reply.model,
        "output": [_message_item(reply, status)] if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage if done else None,
    }


def response_frames(reply: Reply) -> Iterator[Frame]:
    """The typed events of a streamed response, each with its `sequence_number`."""
    sequence = itertools.count()
    item = _message_item(reply, "in_progress")
    part = {"item_id": item["id"], "output_index": 0, "content_index": 0}

    def event(kind: str, **fields: Any) -> bytes:
        return sse_event(kind, {"type": kind, "sequence_number": next(sequence), **fields})

    started = response_object(reply, "in_progress")
    yield Frame(event("response.created", response=started), "meta")
    yield Frame(event("response.in_progress", response=started), "meta")
    yield Frame(event("response.output_item.added", output_index=0, item=item), "meta")
    empty = {"type": "output_text", "text": "", "annotations": []}
    yield Frame(event("response.content_part.added", **part, part=empty), "meta")
    for piece in reply.pieces:
        yield Frame(event("response.output_text.delta", **part, delta=piece, logprobs=[]), "token")
    yield from _response_tail(reply, event, part)


def _response_tail(
    reply: Reply, event: Callable[..., bytes], part: dict[str, Any]
) -> Iterator[Frame]:
    finished = response_object(reply)
    text_part = finished["output"][0]["content"][0]
    yield Frame(event("response.output_text.done", **part, text=reply.text, logprobs=[]), "meta")
    yield Frame(event("response.content_part.done", **part, part=text_part), "meta")
    item = finished["output"][0]
    yield Frame(event("response.output_item.done", output_index=0, item=item), "meta")
    yield Frame(event("response.completed", response=finished), "final")


@dataclass(frozen=True)
class Api:
    """What differs between chat completions and responses."""

    id_prefix: str
    parse: Callable[[dict[str, Any]], InferenceRequest]
    body: Callable[[Reply], dict[str, Any]]
    frames: Callable[[Reply], Iterator[Frame]]


CHAT_API = Api("chatcmpl-", parse_chat, chat_completion, chat_frames)
RESPONSES_API = Api("resp_", parse_responses, response_object, response_frames)

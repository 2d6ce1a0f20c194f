"""Reading a data-plane request: the JSON body, its check against the emulator's own models,
the model it addresses among those the proxy serves (spec §5.2), and the embedding length
it asks for."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from emulator.openai_errors import bad_request, validated
from emulator.openai_models import ChatCompletionRequest, EmbeddingRequest, ResponsesRequest
from emulator.synthetic import prompt_text

# Deeper request bodies are refused (400): real ones nest a handful of levels.
MAX_JSON_DEPTH = 64
_TOO_DEEP = f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"


@dataclass(frozen=True)
class InferenceRequest:
    """What the synthetic model needs of a request; `max_tokens` caps the reply."""

    model: str | None
    prompt: str
    max_tokens: int | None
    stream: bool
    include_usage: bool


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest more than `limit` levels (checked without recursion, so
    the recursive readers, e.g. `prompt_text` and pydantic, never meet such a body)."""
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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)  # NaN, Infinity: not JSON
    except ValueError:
        raise bad_request("the request body is not valid JSON", code="invalid_json") from None
    except RecursionError:  # deeper than json itself reads
        raise bad_request(_TOO_DEEP, code="invalid_json") from None
    if _deeper_than(body, MAX_JSON_DEPTH):
        raise bad_request(_TOO_DEEP, code="invalid_json")
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return body


def parse_chat(body: dict[str, Any]) -> InferenceRequest:
    request = validated(ChatCompletionRequest, body)
    options = request.stream_options
    return InferenceRequest(
        model=request.model,
        prompt=prompt_text(body["messages"]),
        max_tokens=request.output_cap,
        stream=bool(request.stream),
        include_usage=bool(options and options.include_usage),
    )


def parse_responses(body: dict[str, Any]) -> InferenceRequest:
    request = validated(ResponsesRequest, body)
    return InferenceRequest(
        model=request.model,
        prompt=prompt_text([request.instructions or "", body["input"]]),
        max_tokens=request.max_output_tokens,
        stream=bool(request.stream),
        include_usage=False,  # usage always arrives in the final response event
    )


def parse_embeddings(body: dict[str, Any]) -> EmbeddingRequest:
    return validated(EmbeddingRequest, body)


def output_dimensions(requested: int | None, model: str, available: int) -> int:
    """The vector length to answer: the model's own, or a shorter one the request asks for."""
    if requested is None:
        return available
    if requested > available:
        raise bad_request(
            f"Invalid 'dimensions': integer above maximum value. Expected a value <= {available}"
            f" (the dimensions of model '{model}'), but got {requested} instead.",
            "dimensions",
            "integer_above_max_value",
        )
    return requested


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

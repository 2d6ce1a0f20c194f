"""Embeddings: the emulator's synthetic vectors and request checks, the client's body and
answer models."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest

from emulator.embeddings import (
    MAX_EMBEDDING_INPUTS,
    from_base64,
    input_tokens,
    to_base64,
    unit_vector,
)
from emulator.openai_errors import WireError
from emulator.openai_models import EmbeddingList
from emulator.openai_requests import output_dimensions, parse_embeddings
from emulator.openai_wire import embedding_list
from emulator.settings import EmulatorSettings
from modelproxy import Embedding, EmbeddingResponse
from modelproxy.data import embeddings_body


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


# -- the synthetic vectors -----------------------------------------------------------------


def test_same_model_and_input_same_vector() -> None:
    assert unit_vector("m", "hello world", 64) == unit_vector("m", "hello world", 64)
    assert unit_vector("m", [1, 2, 3], 64) == unit_vector("m", [1, 2, 3], 64)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("m", "hello"), ("m", "hello!")),
        (("m", "hello"), ("n", "hello")),
        (("m", [1, 2]), ("m", [2, 1])),
        (("m", "[1,2]"), ("m", [1, 2])),  # a text never meets a token array's vector
        (("m\x00a", "b"), ("m", "a\x00b")),
    ],
)
def test_different_inputs_different_vectors(
    left: tuple[str, Any], right: tuple[str, Any]
) -> None:
    assert unit_vector(*left, 32) != unit_vector(*right, 32)


@pytest.mark.parametrize("dimensions", [1, 2, 3, 256, 1536, 8192])
def test_vectors_have_unit_length(dimensions: int) -> None:
    for item in ("hello", "", "\ud800 lone surrogate", [0], [2**40, 7]):
        vector = unit_vector("m", item, dimensions)
        assert len(vector) == dimensions
        assert norm(vector) == pytest.approx(1.0, abs=1e-6)


def test_components_are_float32_values() -> None:
    vector = unit_vector("m", "hello", 16)
    assert vector == [float32(x) for x in vector]


def test_fewer_dimensions_are_the_full_vector_truncated_and_renormalised() -> None:
    full = unit_vector("m", "hello", 256)
    short = unit_vector("m", "hello", 8)
    head = full[:8]
    assert short == pytest.approx([x / norm(head) for x in head], abs=1e-6)


def test_vectors_are_pinned() -> None:
    """A change here changes every vector a caller may have stored: on purpose only."""
    assert [round(x, 6) for x in unit_vector("m", "hello", 4)] == [
        -0.791355, 0.22418, 0.33478, 0.459809]


def test_base64_round_trip() -> None:
    vector = unit_vector("m", "hello", 256)
    encoded = to_base64(vector)
    assert len(base64.b64decode(encoded)) == 4 * 256
    assert from_base64(encoded) == vector
    assert struct.unpack("<2f", base64.b64decode(encoded)[:8]) == tuple(vector[:2])  # LE
    assert Embedding(embedding=encoded).vector == vector  # the client reads it the same


def test_input_tokens() -> None:
    assert input_tokens("Hello, world!") == 4
    assert input_tokens([5, 6, 7]) == 3


# -- requests -------------------------------------------------------------------------------


def test_embedding_request_items() -> None:
    assert parse_embeddings({"input": "hi"}).items == ["hi"]
    assert parse_embeddings({"input": ["a", "b"]}).items == ["a", "b"]
    assert parse_embeddings({"input": [1, 2]}).items == [[1, 2]]
    assert parse_embeddings({"input": [[1], [2, 3]]}).items == [[1], [2, 3]]
    request = parse_embeddings({"input": "hi", "model": "m", "dimensions": 8,
                                "encoding_format": "base64", "user": "u", "extra": 1})
    assert (request.model, request.dimensions, request.encoding_format) == ("m", 8, "base64")


BAD_BODIES: list[tuple[dict[str, Any], str, str]] = [
    ({}, "input", "missing_required_parameter"),
    ({"input": ""}, "input", "empty_string"),
    ({"input": []}, "input", "empty_array"),
    ({"input": ["a", ""]}, "input[1]", "empty_string"),
    ({"input": [[1], []]}, "input[1]", "empty_array"),
    ({"input": ["a"] * (MAX_EMBEDDING_INPUTS + 1)}, "input", "array_above_max_length"),
    ({"input": [[1]] * (MAX_EMBEDDING_INPUTS + 1)}, "input", "array_above_max_length"),
    ({"input": [1, "a"]}, "input[1]", "invalid_type"),
    ({"input": [1.5]}, "input[0]", "invalid_type"),
    ({"input": [True]}, "input[0]", "invalid_type"),
    ({"input": [[1], [2.0]]}, "input[1][0]", "invalid_type"),
    ({"input": ["a", 1]}, "input[1]", "invalid_type"),
    ({"input": [-1]}, "input[0]", "integer_below_min_value"),
    ({"input": None}, "input", "invalid_type"),
    ({"input": {"text": "a"}}, "input", "invalid_type"),
    ({"input": "a", "dimensions": 0}, "dimensions", "integer_below_min_value"),
    ({"input": "a", "dimensions": "8"}, "dimensions", "invalid_type"),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
    ({"input": "a", "model": 3}, "model", "invalid_type"),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_BODIES)
def test_bad_embedding_bodies(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(WireError) as info:
        parse_embeddings(body)
    error = info.value
    assert (error.status, error.type, error.param, error.code) == (
        400, "invalid_request_error", param, code)


def test_a_long_token_array_is_one_input() -> None:
    assert len(parse_embeddings({"input": [1] * (MAX_EMBEDDING_INPUTS + 1)}).items) == 1


def test_output_dimensions() -> None:
    assert output_dimensions(None, "m", 256) == 256
    assert output_dimensions(256, "m", 256) == 256
    assert output_dimensions(3, "m", 256) == 3
    with pytest.raises(WireError) as info:
        output_dimensions(257, "m", 256)
    assert (info.value.param, info.value.code) == ("dimensions", "integer_above_max_value")
    assert "<= 256" in info.value.message


def test_dimensions_by_model() -> None:
    settings = EmulatorSettings(embedding_dimensions={"big": 1024})
    assert settings.dimensions_of("big") == 1024
    assert settings.dimensions_of("other") == 256  # the documented default
    assert EmulatorSettings(default_embedding_dimensions=64).dimensions_of("other") == 64


@pytest.mark.parametrize("bad", [{"m": 0}, {"m": 8193}])
def test_dimensions_setting_is_bounded(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="embedding_dimensions"):
        EmulatorSettings(embedding_dimensions=bad)


# -- answers, read by the client -------------------------------------------------------------


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_the_client_reads_the_emulators_answer(encoding: str | None) -> None:
    vectors = [unit_vector("m", "a", 8), unit_vector("m", "b", 8)]
    body = embedding_list("m", vectors, encoding, 2)  # type: ignore[arg-type]
    EmbeddingList.model_validate(body)
    answer = EmbeddingResponse.model_validate(body)
    assert [e.vector for e in answer.data] == vectors
    assert [e.index for e in answer.data] == [0, 1]
    assert isinstance(answer.data[0].embedding, str) == (encoding == "base64")
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (2, 2)
    # What the client keeps is what was sent: the emulator's own model takes it back.
    assert EmbeddingList.model_validate(answer.model_dump()).model_dump() == body


def test_the_client_keeps_unknown_fields() -> None:
    answer = EmbeddingResponse.model_validate(
        {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [1.0],
                                     "extra": "x"}], "model": "m", "usage": None, "id": "e1"})
    assert answer.model_extra == {"id": "e1"}
    assert answer.data[0].model_extra == {"extra": "x"}
    assert answer.usage is None


def test_a_truncated_base64_embedding_is_refused() -> None:
    with pytest.raises(ValueError, match="not float32"):
        _ = Embedding(embedding=base64.b64encode(b"\x00" * 6).decode()).vector


# -- the client's request body ---------------------------------------------------------------


@pytest.mark.parametrize("input_", ["hi", ["a", "b"], [1, 2], [[1], [2, 3]]])
def test_embeddings_body(input_: Any) -> None:
    assert embeddings_body(input_, "m") == {"model": "m", "input": input_}


def test_embeddings_body_options() -> None:
    body = embeddings_body("hi", "m", dimensions=8, encoding_format="base64", user="u")
    assert body == {"model": "m", "input": "hi", "dimensions": 8, "encoding_format": "base64",
                    "user": "u"}
    # None is "not given"; model and input are the arguments, never a stray option.
    assert embeddings_body("hi", "m", dimensions=None, encoding_format=None, user=None) == {
        "model": "m", "input": "hi"}
    assert embeddings_body("hi", "m", input="y") == {"model": "m", "input": "hi"}

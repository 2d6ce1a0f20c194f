"""Embeddings jobs as both sides see them: how many inputs a request has, and how its
vectors are kept in Redis and handed back. Pure: no I/O.

A job's vectors are stored as raw little-endian float32, back to back, beside its record
(`Keys.job_vectors`, `JobStore.finish`): 4 bytes a dimension, where JSON floats take ~20 and
base64 5.33. The job's result keeps the rest of the answer (model, usage, how many vectors
of how many dimensions); `embeddings_response` puts the two together again in the encoding
the request asked for: floats unless it said base64.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

ENCODINGS = ("float", "base64")
FLOAT32_BYTES = 4
# The result's field that describes the stored vectors (the vectors themselves are not in it).
VECTORS = "vectors"
VECTORS_FORMAT = "float32le"

Embedding = list[float] | str
# What a request's ``input`` may be: a text, texts, token ids, or lists of token ids.
EmbeddingsInput = str | list[str] | list[int] | list[list[int]]


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def input_count(input_: object) -> int:
    """How many vectors a request's ``input`` asks for: one per string or token list, one for
    a flat list of token ids; 0 for anything else."""
    if isinstance(input_, str):
        return 1
    if not isinstance(input_, list) or not input_:
        return 0
    return 1 if all(_is_token(item) for item in input_) else len(input_)


def _float32(values: array[float]) -> array[float]:
    if sys.byteorder == "big":
        values.byteswap()
    return values


def packed(embedding: Sequence[float] | str) -> bytes:
    """One vector as little-endian float32: a base64 string (what the upstream sends when
    asked for base64) is that already, a list of floats is packed."""
    if isinstance(embedding, str):
        try:
            raw = base64.b64decode(embedding, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"an embedding is not valid base64: {exc}") from None
        if len(raw) % FLOAT32_BYTES:
            raise ValueError(f"a base64 embedding of {len(raw)} bytes is not float32 values")
        return raw
    return _float32(array("f", embedding)).tobytes()


def pack(embeddings: Sequence[Sequence[float] | str]) -> tuple[bytes, int]:
    """Every vector back to back, and their dimension count (they must all have it)."""
    parts = [packed(embedding) for embedding in embeddings]
    sizes = sorted({len(part) for part in parts})
    if len(sizes) > 1:
        raise ValueError(f"vectors of different lengths: {sizes[0]} and {sizes[-1]} bytes")
    return b"".join(parts), (sizes[0] // FLOAT32_BYTES if sizes else 0)


def unpack(blob: bytes, count: int, dimensions: int, encoding: str) -> list[Embedding]:
    """`count` vectors of `dimensions` from `blob`, each a list of floats or, for
    ``base64``, its float32 bytes in base64 (as OpenAI sends them)."""
    size = FLOAT32_BYTES * dimensions
    if len(blob) != size * count:
        raise ValueError(f"stored vectors are {len(blob)} bytes, not {count} x {size}")
    rows = [blob[start:start + size] for start in range(0, size * count, size)]
    if encoding == "base64":
        return [base64.b64encode(row).decode("ascii") for row in rows]
    return [_float32(array("f", row)).tolist() for row in rows]


def stored_result(model: str, usage: dict[str, Any] | None, count: int,
                  dimensions: int) -> dict[str, Any]:
    """What the job record keeps of an answer whose vectors are stored apart."""
    return {"object": "list", "model": model, "usage": usage,
            VECTORS: {"count": count, "dimensions": dimensions, "format": VECTORS_FORMAT}}


def embeddings_response(result: Mapping[str, Any], request: Mapping[str, Any],
                        blob: bytes | None) -> dict[str, Any]:
    """A job's OpenAI embeddings answer: its stored result with the vectors from `blob` in
    the encoding its request asked for."""
    shape = result[VECTORS]
    encoding = request.get("encoding_format") or "float"
    vectors = unpack(blob or b"", int(shape["count"]), int(shape["dimensions"]), encoding)
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    rest = {name: value for name, value in result.items() if name not in (VECTORS, "object")}
    return {"object": "list", "data": data, **rest}

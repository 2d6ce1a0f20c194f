"""Embeddings jobs: one upstream call for all of a job's inputs, never streamed.

The upstream is always asked for base64, whatever the request said: those are the float32
bytes the store keeps (core/embeddings.py), taken without parsing a float, and a quarter
the size of JSON floats on the wire. The request's own ``encoding_format`` decides only
what its producer reads back.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from core.embeddings import input_count, pack, stored_result
from modelproxy.data import DataAPI, embeddings_body
from modelproxy.errors import ModelProxyError

UPSTREAM_ENCODING = "base64"


class BadEmbeddingsAnswer(ModelProxyError):
    """The upstream's answer does not fit the request (vector count, lengths, encoding).
    Not retried: the same upstream would answer the same."""


class Embedded(NamedTuple):
    """A successful call: the record's result, usage, the vectors to store apart, and the
    upstream's request id."""

    result: dict[str, Any]
    usage: dict[str, Any] | None
    vectors: bytes
    request_id: str | None = None


def embeddings_request(request: dict[str, Any], model: str) -> dict[str, Any]:
    """The upstream body of a job's request (``model`` and ``stream`` taken out already)."""
    params = {k: v for k, v in request.items() if k not in ("input", "encoding_format")}
    return embeddings_body(request.get("input", ""), model, **params,
                           encoding_format=UPSTREAM_ENCODING)


async def embed(data: DataAPI, body: dict[str, Any]) -> Embedded:
    reply = await data.embeddings(body)
    ordered = sorted(reply.data, key=lambda item: item.index)
    expected = input_count(body.get("input"))
    if [item.index for item in ordered] != list(range(expected)):
        raise BadEmbeddingsAnswer(f"the upstream answered {len(ordered)} vectors for "
                                  f"{expected} inputs, or not one for each index")
    try:
        vectors, dimensions = pack([item.embedding for item in ordered])
    except (ValueError, OverflowError) as exc:
        raise BadEmbeddingsAnswer(f"the upstream's vectors cannot be stored: {exc}") from None
    usage = reply.usage.model_dump() if reply.usage is not None else None
    result = stored_result(reply.model, usage, len(ordered), dimensions)
    return Embedded(result, usage, vectors, reply.request_id)

"""Reading embeddings jobs back: the record's result as OpenAI's answer, its vectors (kept
apart as float32 bytes) in the encoding the request asked for. The Python API, `mpq embed`,
`mpq job result` and batch output all read them through `with_vectors`."""

from __future__ import annotations

from collections.abc import Sequence

from core.contract import JobKind, JobRecord, JobStatus
from core.embeddings import VECTORS, Embedding, embeddings_response
from core.store import JobStore


def _stored_apart(record: JobRecord) -> bool:
    return (record.kind == JobKind.EMBEDDINGS and record.status == JobStatus.SUCCEEDED
            and record.result is not None and VECTORS in record.result)


def complete(record: JobRecord, blob: bytes | None) -> JobRecord:
    """The record with its vectors from `blob` put back into its result."""
    assert record.result is not None  # only records stored apart get here
    answer = embeddings_response(record.result, record.request, blob)
    return record.model_copy(update={"result": answer})


async def with_vectors(store: JobStore, records: Sequence[JobRecord]) -> list[JobRecord]:
    """The records, those of succeeded embeddings jobs with their vectors (one round trip
    for all); the others as they are."""
    apart = [record.id for record in records if _stored_apart(record)]
    if not apart:
        return list(records)
    blobs = dict(zip(apart, await store.load_vectors(apart), strict=True))
    return [complete(record, blobs[record.id]) if record.id in blobs else record
            for record in records]


def embeddings_of(record: JobRecord) -> list[Embedding]:
    """The vectors of a record `with_vectors` completed, by input index."""
    data = (record.result or {}).get("data") or []
    return [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]

"""The files an ended batch leaves, as OpenAI writes them: the output file (one line per
request that succeeded) and the error file (every other request: refused by the upstream,
failed, cancelled or expired), each line in the OpenAI Batch output format, so every input
line is in exactly one of the two. A file that would be empty is not made (its id is null).

Both are read from the mpq batch job by job (producer/batches.py) and written to the file
store as they are read; the request counts and the usage are summed on the way.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.batch_objects import GatewayBatch, add_usage, request_counts, zero_usage
from gateway.file_store import OUTPUT_PURPOSE, FileStore, StoredFile
from producer.batches import AsyncBatch

JSON_SEPARATORS = (",", ":")


@dataclass
class BatchResults:
    output: StoredFile | None
    errors: StoredFile | None
    completed: int
    failed: int
    usage: dict[str, Any] = field(default_factory=zero_usage)

    def fields(self) -> dict[str, Any]:
        """What the batch's hash gets when it ends with these files."""
        return {"output_file_id": self.output.id if self.output else None,
                "error_file_id": self.errors.id if self.errors else None,
                "request_counts": request_counts(self.completed + self.failed, self.completed,
                                                 self.failed),
                "usage": self.usage}


async def _encoded(first: dict[str, Any], rest: AsyncIterator[dict[str, Any]],
                   ) -> AsyncIterator[bytes]:
    yield json.dumps(first, separators=JSON_SEPARATORS).encode() + b"\n"
    async for line in rest:
        yield json.dumps(line, separators=JSON_SEPARATORS).encode() + b"\n"


async def write_jsonl(files: FileStore, owner: str, filename: str, purpose: str,
                      lines: AsyncIterator[dict[str, Any]], *,
                      expires_after_s: int | None = None) -> StoredFile | None:
    """A JSONL file of `lines`, written as they come; None (and no file) when there are
    none."""
    first = await anext(lines, None)
    if first is None:
        return None
    return await files.write(owner, filename, purpose, _encoded(first, lines),
                             expires_after_s=expires_after_s)


class _Tally:
    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.usage = zero_usage()

    async def outputs(self, lines: AsyncIterator[dict[str, Any]],
                      ) -> AsyncIterator[dict[str, Any]]:
        async for line in lines:
            self.completed += 1
            body = (line.get("response") or {}).get("body")
            add_usage(self.usage, body.get("usage") if isinstance(body, dict) else None)
            yield line

    async def errors(self, lines: AsyncIterator[dict[str, Any]],
                     ) -> AsyncIterator[dict[str, Any]]:
        async for line in lines:
            self.failed += 1
            yield line


async def write_results(files: FileStore, source: AsyncBatch, batch: GatewayBatch,
                        cancelled_code: str) -> BatchResults:
    """Write the batch's output and error files; lines of jobs that were cancelled get
    `cancelled_code` (`batch_cancelled`, `batch_expired`)."""
    tally = _Tally()
    expires = batch.output_expires_after_s
    output = await write_jsonl(files, batch.owner, f"{batch.id}_output.jsonl", OUTPUT_PURPOSE,
                               tally.outputs(source.results()), expires_after_s=expires)
    try:
        errors = await write_jsonl(files, batch.owner, f"{batch.id}_error.jsonl",
                                   OUTPUT_PURPOSE,
                                   tally.errors(source.errors(cancelled_code=cancelled_code)),
                                   expires_after_s=expires)
    except BaseException:
        if output is not None:
            await files.delete(batch.owner, output.id)
        raise
    return BatchResults(output, errors, tally.completed, tally.failed, tally.usage)


async def discard(files: FileStore, results: BatchResults) -> None:
    """Delete files written for an end the batch did not reach after all."""
    for stored in (results.output, results.errors):
        if stored is not None:
            await files.delete(stored.owner, stored.id)

"""`mpq embed`: texts through the queue as embeddings jobs, one JSON line per vector."""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum

import typer

from producer.batch_format import EMBEDDING_INPUTS_MAX
from producer.cli_common import EXIT_USAGE, clean_errors, client, fail

NO_TEXT = "no text: pass TEXT arguments, or lines on stdin (one text a line)"


class Encoding(StrEnum):
    FLOAT = "float"
    BASE64 = "base64"


def _stdin_texts() -> list[str]:
    """One text a line; blank lines are skipped (an input must not be empty)."""
    if sys.stdin.isatty():
        fail(NO_TEXT, EXIT_USAGE)
    lines = (line.removesuffix("\n").removesuffix("\r") for line in sys.stdin)
    return [line for line in lines if line.strip()]


@clean_errors
def embed_command(
    proxy: str = typer.Argument(..., help="Proxy name."),
    texts: list[str] | None = typer.Argument(
        None, help="Texts to embed (default: stdin, one a line)."),
    model: str | None = typer.Option(None, help="Model (default: the proxy's)."),
    dimensions: int | None = typer.Option(None, min=1, help="Dimensions of each vector."),
    encoding_format: Encoding = typer.Option(
        Encoding.FLOAT, help="Each vector as a list of floats, or float32 bytes in base64."),
    timeout: float = typer.Option(120, help="Seconds to wait for all the vectors."),
) -> None:
    """Embed texts through the queue and print their vectors, one JSON line each.

    Lines are {"index": i, "embedding": [...]}, in the order of the texts; more than 2048
    texts go as several jobs."""
    inputs = texts or _stdin_texts()
    if not inputs:
        fail(NO_TEXT, EXIT_USAGE)
    params: dict[str, object] = {"encoding_format": encoding_format.value}
    if dimensions:
        params["dimensions"] = dimensions
    deadline = time.monotonic() + timeout
    with client() as mpq:
        jobs = [mpq.embed(proxy, inputs[start:start + EMBEDDING_INPUTS_MAX], model=model,
                          **params)
                for start in range(0, len(inputs), EMBEDDING_INPUTS_MAX)]
        index = 0
        for job in jobs:
            for vector in job.embeddings(max(deadline - time.monotonic(), 0.0)):
                sys.stdout.write(json.dumps({"index": index, "embedding": vector}) + "\n")
                index += 1
    sys.stdout.flush()

"""The demo's gateway step: the same proxy through the OpenAI API, with the official `openai`
Python client pointed at the gateway (`base_url`, `api_key`), as any OpenAI program would be:
one chat completion, then a small batch (upload, create, poll, download)."""

from __future__ import annotations

import io
import json
import time
from typing import TYPE_CHECKING

from rich.console import Console

from producer.terminal import escape_markup, strip_controls

if TYPE_CHECKING:
    from openai import OpenAI

BATCH_LINES = 10
POLL_S = 0.2
BATCH_TIMEOUT_S = 60.0
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


def gateway_batch_file(model: str, count: int) -> bytes:
    return "".join(json.dumps({
        "custom_id": f"gw-{i:03d}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"Count to {i}."}]},
    }) + "\n" for i in range(count)).encode()


def run_gateway_step(console: Console, base_url: str, api_key: str, model: str) -> bool:
    """True when the chat answered and every batch line came back in the output file."""
    try:  # a dev dependency (`make demo` installs it): the demo runs without it
        from openai import OpenAI, OpenAIError  # noqa: PLC0415
    except ImportError:
        console.print("[yellow]gateway step skipped[/]: the official `openai` package is not "
                      "installed (`pip install openai`, or `make demo` installs it)")
        return True
    console.print(f"[bold]gateway[/] the OpenAI API at {base_url}, official `openai` client:")
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    try:
        _chat(console, client, model)
        return _batch(console, client, model)
    except OpenAIError as exc:
        console.print(f"  [red]the gateway refused[/]: {escape_markup(str(exc))}")
        return False
    finally:
        client.close()


def _chat(console: Console, client: OpenAI, model: str) -> None:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello from the OpenAI client."}])
    text = strip_controls(reply.choices[0].message.content or "")
    tokens = reply.usage.total_tokens if reply.usage else None
    console.print(f"  chat.completions.create → {text!r} ({tokens} tokens)", markup=False,
                  highlight=False)


def _batch(console: Console, client: OpenAI, model: str) -> bool:
    upload = client.files.create(
        file=("gateway-demo.jsonl", io.BytesIO(gateway_batch_file(model, BATCH_LINES))),
        purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    console.print(f"  files.create → {upload.id}; batches.create → {batch.id}", markup=False,
                  highlight=False)
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while batch.status not in ENDED and time.monotonic() < deadline:
        time.sleep(POLL_S)
        batch = client.batches.retrieve(batch.id)
    counts = batch.request_counts
    done = f"{counts.completed} of {counts.total}" if counts else "no counts"
    console.print(f"  batches.retrieve → {batch.status}: {done} lines succeeded",
                  markup=False, highlight=False)
    if not batch.output_file_id:
        return False
    lines = client.files.content(batch.output_file_id).text.splitlines()
    ids = sorted(json.loads(line)["custom_id"] for line in lines)
    console.print(f"  files.content → {len(lines)} output lines, {ids[0]} … {ids[-1]}",
                  markup=False, highlight=False)
    return batch.status == "completed" and len(lines) == BATCH_LINES

"""Files through the gateway: upload (`files.create`) and download (`files.content`) of a
50,000-line batch input file with the official `openai` client, in MB/s (10^6 bytes), against
a raw copy of the same bytes over loopback: an HTTP PUT and GET with httpx (the client the
`openai` package sends with) to a bare ASGI app on the same server (uvicorn, its own process)
that keeps the body in memory and sends it back in the gateway's piece size. The gateway
does what the raw copy does, plus its own work: parsing the multipart form, counting lines
and bytes against the limits, writing the pieces to Redis and reading them back.

Each transfer is timed from the call to the last byte received; best of `ROUNDS`, the four
transfers taking turns. Both copies are checked byte for byte.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import uvicorn

from bench.harness import MODEL, GatewayTarget, arguments, module_server
from bench.streaming import Asgi, Message, Receive, Scope, Send
from gateway.file_store import PIECE_BYTES

LINES = 50_000
ROUNDS = 3
# About 600 bytes a line (a short document to summarise): 31 MB in all, within OpenAI's
# limits of 200 MB and 50,000 requests.
PROSE = ("The committee met on Tuesday to review the quarterly figures, the hiring plan and "
         "the schedule for the new warehouse; most of the discussion was about delays. ") * 3
TARGET_RATIO = 0.25
RAW_PATH = "/raw"
MB = 1_000_000
TIMEOUT_S = 300.0


def batch_input(lines: int = LINES) -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [
            {"role": "user", "content": f"Summarise document {i}: {PROSE}"}]},
    }).encode() + b"\n" for i in range(lines))


# -- the raw copy: a bare app on the gateway's server ----------------------------------


class RawCopy:
    """PUT keeps the body; GET sends it back in `PIECE_BYTES` pieces, as the gateway does."""

    def __init__(self) -> None:
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "PUT":
            pieces = []
            while True:
                message = await receive()
                pieces.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            self.body = b"".join(pieces)
            await _answer(send, 204, [])
            return
        await _answer(send, 200, [self.body[i:i + PIECE_BYTES]
                                  for i in range(0, len(self.body), PIECE_BYTES)],
                      len(self.body))


async def _answer(send: Send, status: int, pieces: list[bytes], length: int = 0) -> None:
    start: Message = {"type": "http.response.start", "status": status,
                      "headers": [(b"content-length", str(length).encode())]}
    await send(start)
    for piece in pieces:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def serve_raw(port: int) -> None:
    """The raw-copy app with the gateway's server settings, until SIGTERM (own process)."""
    app: Asgi = RawCopy()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                ws="none", lifespan="off")


@contextlib.contextmanager
def raw_server() -> Iterator[str]:
    with module_server("bench.gateway_files", "--serve-raw", RAW_PATH,
                       "raw-copy server") as url:
        yield f"{url}{RAW_PATH}"


# -- the transfers ----------------------------------------------------------------------


def _checked(received: bytes, sent: bytes, what: str) -> None:
    if received != sent:
        raise RuntimeError(f"{what}: {len(received)} bytes came back, not the "
                           f"{len(sent)} sent")


async def gateway_copy(oai: openai.AsyncOpenAI, data: bytes) -> tuple[float, float]:
    """Seconds to upload `data` as a batch input file, and to download it."""
    started = time.perf_counter()
    uploaded = await oai.files.create(file=("bench.jsonl", data), purpose="batch")
    upload_s = time.perf_counter() - started
    if uploaded.bytes != len(data):
        raise RuntimeError(f"the gateway stored {uploaded.bytes} bytes of {len(data)}")
    started = time.perf_counter()
    content = await oai.files.content(uploaded.id)
    download_s = time.perf_counter() - started
    _checked(content.content, data, "gateway")
    await oai.files.delete(uploaded.id)
    return upload_s, download_s


async def raw_copy(http: httpx.AsyncClient, url: str, data: bytes) -> tuple[float, float]:
    started = time.perf_counter()
    (await http.put(url, content=data)).raise_for_status()
    upload_s = time.perf_counter() - started
    started = time.perf_counter()
    response = await http.get(url)
    download_s = time.perf_counter() - started
    response.raise_for_status()
    _checked(response.content, data, "raw copy")
    return upload_s, download_s


async def measure_files(target: GatewayTarget, lines: int = LINES,
                        rounds: int = ROUNDS) -> dict[str, Any]:
    data = batch_input(lines)
    gateway: list[tuple[float, float]] = []
    raw: list[tuple[float, float]] = []
    with raw_server() as url:
        async with openai.AsyncOpenAI(base_url=target.base_url, api_key=target.key,
                                      max_retries=0, timeout=TIMEOUT_S) as oai, \
                httpx.AsyncClient(timeout=TIMEOUT_S) as http:
            for _ in range(rounds):
                gateway.append(await gateway_copy(oai, data))
                raw.append(await raw_copy(http, url, data))
    mb = len(data) / MB
    result: dict[str, Any] = {
        "lines": lines, "mb": mb, "rounds": rounds,
        "upload_mb_s": mb / min(up for up, _ in gateway),
        "download_mb_s": mb / min(down for _, down in gateway),
        "raw_upload_mb_s": mb / min(up for up, _ in raw),
        "raw_download_mb_s": mb / min(down for _, down in raw)}
    result["upload_ratio"] = result["upload_mb_s"] / result["raw_upload_mb_s"]
    result["download_ratio"] = result["download_mb_s"] / result["raw_download_mb_s"]
    return result


def passed(result: dict[str, Any]) -> bool:
    return bool(min(result["upload_ratio"], result["download_ratio"]) >= TARGET_RATIO)


def report(result: dict[str, Any]) -> None:
    print(f"a {result['lines']}-line batch input file, {result['mb']:.1f} MB, best of "
          f"{result['rounds']}")
    for way in ("upload", "download"):
        print(f"{way:<9} gateway {result[f'{way}_mb_s']:>7.0f} MB/s, raw HTTP copy "
              f"{result[f'raw_{way}_mb_s']:>7.0f} MB/s: {result[f'{way}_ratio']:.2f} "
              f"(target >= {TARGET_RATIO})")


if __name__ == "__main__":
    parser = arguments(__doc__)
    parser.add_argument("--serve-raw", type=int, metavar="PORT",
                        help=argparse.SUPPRESS)  # the raw-copy server's own process
    args = parser.parse_args()
    if args.serve_raw is not None:
        serve_raw(args.serve_raw)

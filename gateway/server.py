"""Run the gateway with uvicorn in the foreground (`mpq gateway`, `python -m gateway`).

It binds its socket first, so `--port 0` picks a free port, and prints its base URL once it
serves. A non-loopback address is refused unless API keys exist: a gateway reachable from
other machines must not start in a state where nobody could use it safely.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import sys
from collections.abc import Sequence

import uvicorn

from core.api_keys import ApiKeys
from core.keys import Keys
from core.network import is_loopback
from core.redis_client import redis_client
from core.settings import Settings
from gateway.app import create_app

READY_LINE = "mpq gateway serving at"


class GatewayStartError(RuntimeError):
    pass


def base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 (a lookup)
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/v1"


async def _has_keys(settings: Settings) -> bool:
    assert settings.redis_url is not None
    client = redis_client(settings.redis_url, retries=1)
    try:
        return await ApiKeys(client, Keys(settings.key_prefix)).any()
    finally:
        await client.aclose()


def check_start(settings: Settings, host: str) -> None:
    if not settings.redis_url:
        raise GatewayStartError("no Redis: set MPQ_REDIS_URL (the gateway keeps its files and "
                                "batches there, shared with the workers)")
    if not is_loopback(host) and not asyncio.run(_has_keys(settings)):
        raise GatewayStartError(
            f"refusing to serve the gateway on {host} without API keys: make one with "
            "`mpq gateway key create NAME` first")


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(socket.SOMAXCONN)
    return sock


class _AnnouncingServer(uvicorn.Server):
    """Prints the base URL once it accepts requests (tests and `mpq up` wait for the line)."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"{READY_LINE} {self.url}", flush=True)


def serve(settings: Settings, host: str, port: int, log_level: str = "warning") -> None:
    check_start(settings, host)
    sock = bind_socket(host, port)
    config = uvicorn.Config(create_app(settings), log_level=log_level, access_log=False,
                            ws="none", timeout_graceful_shutdown=5)
    # Keep the start-up objects (FastAPI's, pydantic's, ours) out of the cyclic GC's full
    # collections: each stopped the event loop for tens of ms, and every relayed stream's
    # chunks waited meanwhile.
    gc.collect()
    gc.freeze()
    server = _AnnouncingServer(config, base_url(host, sock.getsockname()[1]))
    asyncio.run(server.serve(sockets=[sock]))


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="mpq gateway",
                                     description="Serve the OpenAI-compatible gateway.")
    parser.add_argument("--host", default=settings.gateway_address)
    parser.add_argument("--port", type=int, default=settings.gateway_port)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        serve(settings, args.host, args.port, args.log_level)
    except GatewayStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

"""What the gateway's routes share in one process: settings, the mpq client (Redis, the
broker), the file store and the API keys. Everything lasting is in Redis, so any number of
gateway processes serve the same files and batches."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from core.api_keys import ApiKeys
from core.settings import Settings
from gateway.backpressure import InFlight
from gateway.file_store import FileStore
from gateway.proxy_directory import ProxyDirectory
from producer.client import AsyncClient


@dataclass
class Gateway:
    settings: Settings
    client: AsyncClient
    files: FileStore
    api_keys: ApiKeys
    proxies: ProxyDirectory = field(init=False)  # which proxy serves which model
    in_flight: InFlight = field(init=False)  # direct calls across all gateway processes

    def __post_init__(self) -> None:
        self.proxies = ProxyDirectory(self.client.redis, self.client.keys)
        self.in_flight = InFlight(self.client.redis, self.client.keys,
                                  self.settings.gateway_max_interactive,
                                  self.settings.gateway_call_timeout_s)


async def gateway(request: Request) -> Gateway:
    """The process's `Gateway` (a FastAPI dependency; async, so that FastAPI calls it in the
    event loop instead of handing it to a worker thread)."""
    found: Gateway = request.app.state.gateway
    return found

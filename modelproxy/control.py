"""Control plane (spec §4): the five ModelProxy operations over the ROA JSON API.

Thin I/O: builds the request, signs it with ACS3 when credentials are set, unwraps the
`{code, requestId, data}` envelope. Errors come from `transport` (one mapping).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from modelproxy.auth import Acs3Auth
from modelproxy.config import Config
from modelproxy.errors import ServerError
from modelproxy.transport import send

API_VERSION = "2025-09-10"
COLLECTION_PATH = f"/{API_VERSION}/agents/model-proxies"


def proxy_path(name: str) -> str:
    """The item path; the name is percent-encoded (the SDK forgot on the data plane, Q12)."""
    return f"{COLLECTION_PATH}/{quote(name, safe='')}"


class ControlAPI:
    """ModelProxy control-plane calls for one resolved `Config`."""

    def __init__(self, config: Config) -> None:
        self._config = config

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("CreateModelProxy", "POST", COLLECTION_PATH, body=body)

    async def get(self, name: str) -> dict[str, Any]:
        return await self._call("GetModelProxy", "GET", proxy_path(name))

    async def update(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("UpdateModelProxy", "PUT", proxy_path(name), body=body)

    async def delete(self, name: str) -> dict[str, Any]:
        return await self._call("DeleteModelProxy", "DELETE", proxy_path(name))

    async def list_page(self, query: dict[str, Any]) -> dict[str, Any]:
        params = {key: str(value) for key, value in query.items() if value is not None}
        return await self._call("ListModelProxies", "GET", COLLECTION_PATH, params=params)

    def _auth(self) -> httpx.Auth | None:
        config = self._config
        if not config.has_credentials():
            return None
        return Acs3Auth(
            config.get_access_key_id(),
            config.get_access_key_secret(),
            config.get_security_token(),
        )

    async def _call(
        self,
        action: str,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {
            "accept": "application/json",
            "x-acs-version": API_VERSION,
            "x-acs-action": action,
        }
        response = await send(
            self._config,
            method,
            self._config.get_control_endpoint() + path,
            json_body=body,
            params=params,
            headers=headers,
            auth=self._auth(),
            extensions={"acs_action": action},
        )
        return _unwrap(response)


def _unwrap(response: httpx.Response) -> dict[str, Any]:
    try:
        envelope = response.json()
    except ValueError as exc:
        raise ServerError(
            "control plane answered with a body that is not JSON",
            status_code=response.status_code,
        ) from exc
    data = envelope.get("data") if isinstance(envelope, dict) else None
    if not isinstance(data, dict):
        raise ServerError(
            "control plane answered without a `data` object",
            status_code=response.status_code,
            request_id=envelope.get("requestId") if isinstance(envelope, dict) else None,
            response_body=envelope,
        )
    return data

"""httpx ``Auth`` handlers that sign each real request at send time (sync and async); the
data plane's two also give their headers to a request made without httpx (`headers_for`)."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from datetime import UTC, datetime

import httpx

from modelproxy.signing.acs3 import acs3_headers, sign_acs3
from modelproxy.signing.agentrun4 import sign_agentrun4

ACS_ACTION_EXTENSION = "acs_action"


def _mask(value: str) -> str:
    """Show at most the first four characters of an identifier."""
    return f"{value[:4]}***" if len(value) > 8 else "***"


def _host(request: httpx.Request) -> str:
    return request.headers.get("host") or request.url.netloc.decode("ascii")


def _ram_signed(name: str) -> bool:
    return name in ("host", "content-type") or name.startswith("x-acs-")


class Acs3Auth(httpx.Auth):
    """Control-plane ACS3-HMAC-SHA256 signing.

    The action comes from the request extension ``acs_action``
    (``client.request(..., extensions={"acs_action": "GetModelProxy"})``).
    """

    requires_request_body = True

    def __init__(
        self, access_key_id: str, access_key_secret: str, security_token: str | None = None
    ) -> None:
        self._access_key_id = access_key_id
        self._access_key_secret = access_key_secret
        self._security_token = security_token

    def __repr__(self) -> str:
        sts = ", security_token=<redacted>" if self._security_token else ""
        return f"Acs3Auth(access_key_id={_mask(self._access_key_id)!r}, secret=<redacted>{sts})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add ``x-acs-*`` headers and ``Authorization`` to the request."""
        action = request.extensions.get(ACS_ACTION_EXTENSION)
        body = request.content
        request.headers.update(
            acs3_headers(
                action=str(action) if action else None,
                body=body,
                host=_host(request),
                security_token=self._security_token,
                access_key_id=self._access_key_id,
            )
        )
        request.headers["Authorization"] = sign_acs3(
            request.method,
            request.url.raw_path.decode("ascii"),
            request.headers,
            body,
            self._access_key_id,
            self._access_key_secret,
        )
        yield request


class AgentrunRamAuth(httpx.Auth):
    """Data-plane AGENTRUN4-HMAC-SHA256 signing of host, content-type and ``x-acs-*``."""

    def __init__(
        self,
        access_key_id: str,
        access_key_secret: str,
        region: str,
        security_token: str | None = None,
    ) -> None:
        self._access_key_id = access_key_id
        self._access_key_secret = access_key_secret
        self._region = region
        self._security_token = security_token

    def __repr__(self) -> str:
        sts = ", security_token=<redacted>" if self._security_token else ""
        return (
            f"AgentrunRamAuth(access_key_id={_mask(self._access_key_id)!r}, "
            f"secret=<redacted>, region={self._region!r}{sts})"
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add ``x-acs-*`` headers and ``Agentrun-Authorization`` to the request."""
        request.headers.update(self.headers_for(request.method, str(request.url),
                                                request.headers))
        yield request

    def headers_for(self, method: str, url: str, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers that sign a request whose `headers` include its host and
        content-type (both are signed)."""
        extra = {k.lower(): v for k, v in headers.items() if _ram_signed(k.lower())}
        return sign_agentrun4(
            method,
            url,
            extra,
            self._access_key_id,
            self._access_key_secret,
            self._region,
            datetime.now(UTC),
            self._security_token,
        )


class ApiKeyAuth(httpx.Auth):
    """Inbound API key: ``Authorization: Bearer <key>``, or the raw key in another header."""

    def __init__(self, api_key: str, header: str = "Authorization") -> None:
        self._api_key = api_key
        self._header = header

    def __repr__(self) -> str:
        return f"ApiKeyAuth(header={self._header!r}, api_key=<redacted>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Set the API-key header."""
        request.headers.update(self.headers_for(request.method, str(request.url),
                                                request.headers))
        yield request

    def headers_for(self, method: str, url: str, headers: Mapping[str, str]) -> dict[str, str]:
        """The API-key header (the request itself does not change it)."""
        del method, url, headers
        is_bearer = self._header.lower() == "authorization"
        return {self._header: f"Bearer {self._api_key}" if is_bearer else self._api_key}

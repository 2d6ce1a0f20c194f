"""Signature mode: who may call the emulator.

Without credentials the emulator is open. With `credentials` (access key id -> secret):

- the control plane needs a valid ACS3-HMAC-SHA256 `Authorization` (`require_control_auth`).
  The clock is not checked: the official SDK's captured requests carry fixed past dates.
- the data plane needs a valid AGENTRUN4-HMAC-SHA256 `Agentrun-Authorization`
  (`require_data_auth`), or `Authorization: Bearer <key>` with one of `api_keys`.

`api_keys` alone protect the data plane only. Missing auth answers 401, a bad signature 403,
a wrong API key 401 "API key mismatch" (as the gateway's LiteLLM answers, spec §5.3).

Administration (`/_emulator/...`, `require_admin_auth`) is open only while both planes are:
once credentials or API keys are set it takes whatever either plane takes (an ACS3 or an
AGENTRUN4 signature, or `Authorization: Bearer <api key>`), since it can change what both
planes answer. `/_emulator/health` stays open (the admin router leaves it out).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fastapi import Request

from emulator.api_errors import (
    INVALID_API_KEY,
    MISSING_AUTHORIZATION,
    SIGNATURE_MISMATCH,
    ApiError,
)
from modelproxy.signing.acs3 import verify_acs3
from modelproxy.signing.agentrun4 import AUTH_HEADER, DEFAULT_MAX_SKEW_S, verify_agentrun4

_BEARER = "bearer "


@dataclass(frozen=True)
class AuthConfig:
    """`credentials=None` leaves the control plane open; see the module docstring."""

    credentials: Mapping[str, str] | None = None
    api_keys: frozenset[str] = frozenset()
    # Region the data-plane signature scope must name; None accepts any region.
    data_region: str | None = None
    data_max_skew_s: float | None = DEFAULT_MAX_SKEW_S

    @classmethod
    def build(
        cls,
        credentials: Mapping[str, str] | None,
        api_keys: Iterable[str] | None,
        data_region: str | None = None,
    ) -> AuthConfig:
        return cls(
            credentials=None if credentials is None else dict(credentials),
            api_keys=frozenset(api_keys or ()),
            data_region=data_region,
        )

    @property
    def data_open(self) -> bool:
        return self.credentials is None and not self.api_keys


def auth_of(request: Request) -> AuthConfig:
    auth: AuthConfig = request.app.state.auth
    return auth


def raw_target(request: Request) -> str:
    """Path and query exactly as received (percent-encoding intact), as the client signed."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = bytes(raw).split(b"?", 1)[0].decode("latin-1")
    query = bytes(request.scope.get("query_string", b"")).decode("latin-1")
    return f"{path}?{query}" if query else path


async def require_control_auth(request: Request) -> None:
    """FastAPI dependency: a valid ACS3 signature when the app has credentials."""
    auth = auth_of(request)
    if auth.credentials is None:
        return
    if "authorization" not in request.headers:
        raise ApiError(401, MISSING_AUTHORIZATION, "Authorization (ACS3-HMAC-SHA256) is missing")
    body = await request.body()
    if not verify_acs3(
        request.method, raw_target(request), request.headers, body, auth.credentials
    ):
        raise ApiError(403, SIGNATURE_MISMATCH, "the request signature does not match")


async def require_data_auth(request: Request) -> None:
    """FastAPI dependency: an AGENTRUN4 signature or an inbound API key, when configured."""
    auth = auth_of(request)
    if auth.data_open:
        return
    if auth.credentials is not None and AUTH_HEADER.lower() in request.headers:
        _check_agentrun4(request, auth, auth.credentials)
        return
    key = _bearer_key(request.headers.get("authorization"))
    if key is not None and auth.api_keys:
        _check_api_key(key, auth.api_keys)
        return
    raise ApiError(
        401, MISSING_AUTHORIZATION, f"{AUTH_HEADER} or Authorization: Bearer <api key> is missing"
    )


async def require_admin_auth(request: Request) -> None:
    """FastAPI dependency for `/_emulator` administration: any credential either plane
    accepts, once the emulator has credentials or API keys."""
    auth = auth_of(request)
    if auth.data_open:
        return
    key = _bearer_key(request.headers.get("authorization"))
    if key is not None:
        _check_api_key(key, auth.api_keys)
        return
    if auth.credentials is None:
        raise ApiError(401, MISSING_AUTHORIZATION, "Authorization: Bearer <api key> is missing")
    if AUTH_HEADER.lower() in request.headers:
        _check_agentrun4(request, auth, auth.credentials)
        return
    await require_control_auth(request)


def _check_agentrun4(request: Request, auth: AuthConfig, credentials: Mapping[str, str]) -> None:
    url = f"{request.url.scheme}://{request.headers.get('host', '')}{raw_target(request)}"
    if not verify_agentrun4(
        request.method,
        url,
        request.headers,
        credentials,
        auth.data_region,
        max_skew_s=auth.data_max_skew_s,
    ):
        raise ApiError(403, SIGNATURE_MISMATCH, "the request signature does not match")


def _bearer_key(value: str | None) -> str | None:
    if value is None or not value.lower().startswith(_BEARER):
        return None
    return value[len(_BEARER) :].strip() or None


def _check_api_key(key: str, api_keys: frozenset[str]) -> None:
    # Compare with every key in constant time, so timing does not tell how much matched.
    matched = [hmac.compare_digest(key.encode(), k.encode()) for k in api_keys]
    if not any(matched):
        raise ApiError(401, INVALID_API_KEY, "API key mismatch")

"""Bearer API keys: every route but `/health` needs one. A request's owner is its key's id.
A key found is remembered for `KEY_REMEMBER_S` (core/api_keys.py): a key revoked by another
process stops working here within that time."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.context import gateway
from gateway.errors import OpenAIError

KEY_REMEMBER_S = 5.0
_NO_KEY = ("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
           "(make one with `mpq gateway key create`).")


def _shown(secret: str) -> str:
    return f"{secret[:7]}...{secret[-4:]}" if len(secret) > 16 else "***"


async def owner(request: Request) -> str:
    """The id of the request's API key; 401 in OpenAI's shape without a valid one. (The
    `Gateway` is not a sub-dependency: each costs FastAPI time on every request.)"""
    gw = await gateway(request)
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise OpenAIError(401, _NO_KEY, code="invalid_api_key")
    key_id = await gw.api_keys.owner(secret)
    if key_id is None:
        raise OpenAIError(401, f"Incorrect API key provided: {_shown(secret)}.",
                          code="invalid_api_key")
    return key_id


Owner = Annotated[str, Depends(owner)]

"""Accessors for what `create_app` keeps in `app.state`, usable as FastAPI dependencies.

`app.state.store` (`ProxyStore`), `app.state.stats` (`Stats`, see `stats.py`) and
`app.state.auth` (`AuthConfig`, see `auth.py`). The request id is set per request by
`RequestContextMiddleware`.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from emulator.state import ProxyStore

REQUEST_ID_HEADER = "x-acs-request-id"
REQUEST_ID_STATE_KEY = "request_id"


def store_of(request: Request) -> ProxyStore:
    store: ProxyStore = request.app.state.store
    return store


def request_id_of(request: Request) -> str:
    """This request's id (the `x-acs-request-id` header and the body's `requestId`)."""
    request_id = getattr(request.state, REQUEST_ID_STATE_KEY, None)
    if request_id is None:  # only without the middleware, e.g. a bare router in a test
        request_id = str(uuid.uuid4())
        setattr(request.state, REQUEST_ID_STATE_KEY, request_id)
    return str(request_id)


StoreDep = Annotated[ProxyStore, Depends(store_of)]
RequestIdDep = Annotated[str, Depends(request_id_of)]

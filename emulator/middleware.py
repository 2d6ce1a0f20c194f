"""Per-request context: a request id on every response, and the response counted in `Stats`.

Plain ASGI rather than `BaseHTTPMiddleware`, so streamed answers (and streams the data plane
cuts on purpose) pass through untouched.
"""

from __future__ import annotations

import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulator.deps import REQUEST_ID_HEADER, REQUEST_ID_STATE_KEY
from emulator.stats import UNMATCHED_ROUTE, Stats

ADMIN_PREFIX = "/_emulator"


def route_key(scope: Scope) -> str:
    """`METHOD /template` of the matched route. Unmatched paths share one key, so a fuzzer's
    random paths cannot grow the counters without bound."""
    template = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
    return f"{scope.get('method', '?')} {template}"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, stats: Stats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope.setdefault("state", {})[REQUEST_ID_STATE_KEY] = request_id
        counted = not str(scope.get("path", "")).startswith(ADMIN_PREFIX)

        async def send_with_context(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, request_id)
                if counted:
                    self.stats.count(route_key(scope), int(message["status"]))
            await send(message)

        if not counted:
            await self.app(scope, receive, send_with_context)
            return
        self.stats.enter()
        try:
            await self.app(scope, receive, send_with_context)
        finally:
            self.stats.leave()

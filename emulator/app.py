"""The emulator's FastAPI app: control plane, data plane and `/_emulator` administration.

`app.state` holds `store` (`ProxyStore`), `stats` (`Stats`) and `auth` (`AuthConfig`); see
`deps.py`. `/openapi.json` describes every route with its request and error models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI

from emulator import admin_routes, control_routes, data_routes
from emulator.api_errors import install_error_handlers
from emulator.auth import AuthConfig
from emulator.middleware import RequestContextMiddleware
from emulator.settings import EmulatorSettings
from emulator.state import ProxyStore
from emulator.stats import Stats
from modelproxy.signing.acs3 import API_VERSION

TITLE = "ModelProxy emulator"
DESCRIPTION = (
    "A local stand-in for Alibaba Cloud AgentRun's ModelProxy API (control plane "
    f"{API_VERSION} and the OpenAI-compatible data plane), plus `/_emulator` administration."
)
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
# Larger bodies are refused with 413 before they are read whole (the data plane's own
# limit, in data_routes, is larger: prompts are long).
MAX_BODY_BYTES = 1024 * 1024


class EmulatorApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, minus the 422 it adds to every route: validation errors are
        answered 400 with `ErrorBody`, so the document says so (a fuzzer checks it)."""
        if self.openapi_schema is None:
            self.openapi_schema = _with_400_for_validation(super().openapi())
        return self.openapi_schema


def _with_400_for_validation(schema: dict[str, Any]) -> dict[str, Any]:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {
                    "description": "Invalid parameter",
                    "content": {"application/json": {"schema": _ERROR_REF}},
                }
    schemas = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


def create_app(
    settings: EmulatorSettings | None = None,
    credentials: Mapping[str, str] | None = None,
    api_keys: Iterable[str] | None = None,
    *,
    data_region: str | None = None,
) -> FastAPI:
    """A fresh emulator. `credentials` (access key id -> secret) turn on signature mode;
    `api_keys` are accepted as `Authorization: Bearer <key>` on the data plane."""
    app = EmulatorApp(
        title=TITLE, version=API_VERSION, description=DESCRIPTION, max_body_size=MAX_BODY_BYTES
    )
    stats = Stats()
    app.state.store = ProxyStore(settings=settings or EmulatorSettings())
    app.state.stats = stats
    app.state.auth = AuthConfig.build(credentials, api_keys, data_region)
    install_error_handlers(app)
    app.include_router(control_routes.router)
    app.include_router(data_routes.router)
    app.include_router(admin_routes.router)
    app.add_middleware(RequestContextMiddleware, stats=stats)
    return app

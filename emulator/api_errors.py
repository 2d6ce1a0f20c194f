"""Error answers of the emulator's control and admin planes.

One body shape, `{"code", "message", "requestId"}` (spec §4.4), for every error the app raises
itself: `ApiError`, validation (400, not FastAPI's 422: the real service answers 400), unknown
routes and methods, and unexpected exceptions. The `code` strings are ours; the real service's
are not documented.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from emulator.deps import REQUEST_ID_HEADER, request_id_of
from emulator.wire import ErrorBody, error_body

logger = logging.getLogger(__name__)

INVALID_PARAMETER = "InvalidParameter"
MISSING_AUTHORIZATION = "MissingAuthorization"
SIGNATURE_MISMATCH = "SignatureDoesNotMatch"
INVALID_API_KEY = "InvalidApiKey"
RESOURCE_NOT_EXIST = "ResourceNotExist"
RESOURCE_ALREADY_EXIST = "ResourceAlreadyExist"
OPERATION_CONFLICT = "OperationConflict"
NOT_FOUND = "NotFound"
METHOD_NOT_ALLOWED = "MethodNotAllowed"
INTERNAL_ERROR = "InternalError"

_HTTP_CODES = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 400: INVALID_PARAMETER}
_MAX_REPORTED_ERRORS = 5


class ApiError(Exception):
    """Raise in a handler or dependency to answer `status_code` with an `ErrorBody`."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def _response_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# For `responses=` on routers, so the OpenAPI document lists every status a route can answer.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _response_doc("Invalid parameter"),
    401: _response_doc("Missing authorization (signature mode)"),
    403: _response_doc("Signature does not match (signature mode)"),
    404: _response_doc("No such model proxy"),
    409: _response_doc("The proxy is in a transitional status"),
    500: _response_doc("The proxy already exists (as the real service answers), or a fault"),
}


def error_response(
    request: Request,
    status_code: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    request_id = request_id_of(request)
    return JSONResponse(
        error_body(code, message, request_id),
        status_code=status_code,
        headers={**(headers or {}), REQUEST_ID_HEADER: request_id},
    )


def validation_message(errors: Sequence[Any]) -> str:
    """One line naming each bad field by its wire name, e.g. `Invalid parameter cpu: ...`."""
    parts = [_describe(err) for err in errors[:_MAX_REPORTED_ERRORS]]
    if len(errors) > _MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more")
    return "; ".join(parts) or "Invalid request"


def _describe(err: Any) -> str:
    if not isinstance(err, Mapping):
        return f"Invalid parameter: {err}"
    if err.get("type") == "json_invalid":
        return "Invalid parameter body: not valid JSON"
    loc = [str(p) if not isinstance(p, int) else p for p in err.get("loc", ())]
    # The first element says where the field was (body, query, path); the rest is its path.
    where = _field_path(loc[1:]) or (str(loc[0]) if loc else "request")
    return f"Invalid parameter {where}: {err.get('msg', 'invalid value')}"


def _field_path(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


async def _on_api_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiError):
        raise exc
    return error_response(request, exc.status_code, exc.code, exc.message, exc.headers)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):
        raise exc
    return error_response(request, 400, INVALID_PARAMETER, validation_message(exc.errors()))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    code = _HTTP_CODES.get(exc.status_code, f"Http{exc.status_code}")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the first matching route's methods only; one route per method here.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return error_response(request, exc.status_code, code, str(exc.detail), headers)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    logger.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, INTERNAL_ERROR, "internal error of the emulator")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)

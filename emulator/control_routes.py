"""The control plane: the five ModelProxy operations (spec §4.2) over `ProxyStore`.

Every success is `{"code": "SUCCESS", "requestId", "data"}`; errors are `ErrorBody`. Handlers
are `async def` without an `await` between reading and writing the store, so on the server's
one event loop each request's check-then-change is atomic. All checks come before any change:
a refused request leaves the state as it was.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from emulator.api_errors import (
    ERROR_RESPONSES,
    OPERATION_CONFLICT,
    RESOURCE_ALREADY_EXIST,
    RESOURCE_NOT_EXIST,
    ApiError,
)
from emulator.auth import require_control_auth
from emulator.deps import RequestIdDep, StoreDep
from emulator.state import (
    FAIL_DELETE_MARKER,
    FAIL_UPDATE_MARKER,
    ProxyRecord,
    ProxyStore,
)
from emulator.wire import (
    SUCCESS,
    TRANSITIONAL,
    CreateModelProxyInput,
    DeleteModelProxyResult,
    ListModelProxiesResult,
    ModelProxyResult,
    ProxyMode,
    Status,
    UpdateModelProxyInput,
    derive_proxy_mode,
)
from modelproxy.signing.acs3 import API_VERSION

BASE_PATH = f"/{API_VERSION}/agents/model-proxies"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
GONE = "GONE"  # ProxyStore's pseudo-status: the record is removed at the deadline

router = APIRouter(
    prefix=BASE_PATH,
    tags=["control"],
    dependencies=[Depends(require_control_auth)],
    responses=ERROR_RESPONSES,
)


NameParam = Annotated[str, Path(alias="modelProxyName")]


def envelope(request_id: str, data: Any) -> dict[str, Any]:
    return {"code": SUCCESS, "requestId": request_id, "data": data}


def snapshot(record: ProxyRecord) -> dict[str, Any]:
    """A copy, so later transitions never change an answer being serialized."""
    return copy.deepcopy(record.wire)


def require_proxy(store: ProxyStore, name: str) -> ProxyRecord:
    record = store.get(name)
    if record is None:
        raise ApiError(404, RESOURCE_NOT_EXIST, f"model proxy {name} does not exist")
    return record


def refuse_transitional(record: ProxyRecord, operation: str) -> None:
    if record.status in TRANSITIONAL:
        raise ApiError(
            409,
            OPERATION_CONFLICT,
            f"cannot {operation} model proxy {record.name} while it is {record.status}",
        )


def _fails(record: ProxyRecord, marker: str) -> bool:
    return marker in str(record.wire.get("description") or "")


def create_wire(body: CreateModelProxyInput, request: Request) -> dict[str, Any]:
    """The declared fields given (unknown keys were dropped on reading), plus the server's."""
    wire = body.to_wire()
    name = body.model_proxy_name
    wire.setdefault("proxyMode", derive_proxy_mode(body.proxy_config).value)
    wire["functionName"] = f"modelproxy-{name}"
    wire["endpoint"] = f"{str(request.base_url).rstrip('/')}/models/{name}"
    return wire


def update_patch(body: UpdateModelProxyInput) -> dict[str, Any]:
    """The supplied, non-null wire fields; `proxyConfig` replaces the stored one whole."""
    return body.to_wire()


@router.post(
    "",
    response_model=ModelProxyResult,
    response_model_exclude_none=True,
    operation_id="CreateModelProxy",
)
async def create_model_proxy(
    body: CreateModelProxyInput, request: Request, store: StoreDep, request_id: RequestIdDep
) -> dict[str, Any]:
    name = body.model_proxy_name
    if store.get(name) is not None:
        # HTTP 500 is what the real service answers for a duplicate (spec §8).
        raise ApiError(500, RESOURCE_ALREADY_EXIST, f"model proxy {name} already exists")
    record = store.add(create_wire(body, request))
    return envelope(request_id, snapshot(record))


@router.get(
    "/{modelProxyName}",
    response_model=ModelProxyResult,
    response_model_exclude_none=True,
    operation_id="GetModelProxy",
)
async def get_model_proxy(
    name: NameParam, store: StoreDep, request_id: RequestIdDep
) -> dict[str, Any]:
    return envelope(request_id, snapshot(require_proxy(store, name)))


@router.put(
    "/{modelProxyName}",
    response_model=ModelProxyResult,
    response_model_exclude_none=True,
    operation_id="UpdateModelProxy",
)
async def update_model_proxy(
    name: NameParam, body: UpdateModelProxyInput, store: StoreDep, request_id: RequestIdDep
) -> dict[str, Any]:
    record = require_proxy(store, name)
    refuse_transitional(record, "update")
    record.wire.update(update_patch(body))
    failing = _fails(record, FAIL_UPDATE_MARKER)
    store.schedule(
        record,
        Status.UPDATING.value,
        Status.UPDATE_FAILED.value if failing else Status.READY.value,
        store.settings.update_delay_s,
        "injected update failure" if failing else "",
    )
    return envelope(request_id, snapshot(record))


@router.delete(
    "/{modelProxyName}",
    response_model=DeleteModelProxyResult,
    response_model_exclude_none=True,
    operation_id="DeleteModelProxy",
)
async def delete_model_proxy(
    name: NameParam, store: StoreDep, request_id: RequestIdDep
) -> dict[str, Any]:
    record = require_proxy(store, name)
    refuse_transitional(record, "delete")
    failing = _fails(record, FAIL_DELETE_MARKER)
    store.schedule(
        record,
        Status.DELETING.value,
        Status.DELETE_FAILED.value if failing else GONE,
        store.settings.delete_delay_s,
        "injected delete failure" if failing else "",
    )
    return envelope(request_id, snapshot(record))


def matches(
    wire: dict[str, Any],
    proxy_mode: str | None,
    status: str | None,
    workspace_ids: frozenset[str] | None,
) -> bool:
    """The list filters; `workspace_ids` None means any workspace."""
    if proxy_mode is not None and wire.get("proxyMode") != proxy_mode:
        return False
    if status is not None and wire.get("status") != status:
        return False
    return workspace_ids is None or wire.get("workspaceId") in workspace_ids


def workspace_filter(workspace_id: str | None, workspace_ids: str | None) -> frozenset[str] | None:
    """Allowed workspaces: `workspaceId` and the comma-separated `workspaceIds` both apply."""
    allowed: frozenset[str] | None = None
    if workspace_ids is not None:
        allowed = frozenset(w.strip() for w in workspace_ids.split(",") if w.strip())
    if workspace_id is not None:
        single = frozenset({workspace_id})
        allowed = single if allowed is None else single & allowed
    return allowed


@router.get(
    "",
    response_model=ListModelProxiesResult,
    response_model_exclude_none=True,
    operation_id="ListModelProxies",
)
async def list_model_proxies(
    *,
    store: StoreDep,
    request_id: RequestIdDep,
    page_number: Annotated[int, Query(alias="pageNumber", ge=1)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    proxy_mode: Annotated[ProxyMode | None, Query(alias="proxyMode")] = None,
    status: Annotated[Status | None, Query(alias="status")] = None,
    workspace_id: Annotated[str | None, Query(alias="workspaceId")] = None,
    workspace_ids: Annotated[str | None, Query(alias="workspaceIds")] = None,
) -> dict[str, Any]:
    allowed = workspace_filter(workspace_id, workspace_ids)
    mode = proxy_mode.value if proxy_mode is not None else None
    wanted = status.value if status is not None else None
    found = [r for r in store.all() if matches(r.wire, mode, wanted, allowed)]
    start = (page_number - 1) * page_size
    page = {
        "items": [snapshot(r) for r in found[start : start + page_size]],
        "pageNumber": page_number,
        "pageSize": page_size,
        "total": len(found),
    }
    return envelope(request_id, page)

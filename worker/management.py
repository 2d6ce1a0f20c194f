"""Management jobs: create, update, delete, get, list, refresh and wait on proxies.

Each records its outcome (the proxy's wire object, or a list of them) in the job record.
Create is idempotent (an existing proxy with the same spec is success) and delete of a
missing proxy is success, so a retried or redelivered job converges instead of failing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from core.contract import JobKind, JobRecord
from modelproxy import (
    ModelProxy,
    ModelProxyCreateInput,
    ModelProxyUpdateInput,
    ResourceAlreadyExistError,
    ResourceNotExistError,
)
from modelproxy.errors import ConfigError
from worker.runtime import Runtime

DEFAULT_WAIT_TIMEOUT_S = 300.0
DEFAULT_WAIT_INTERVAL_S = 1.0

Handler = Callable[[Runtime, dict[str, Any]], Awaitable[dict[str, Any]]]


class SpecMismatch(ResourceAlreadyExistError):
    """The name exists with another spec: not ours to overwrite."""


async def run_management(rt: Runtime, job: JobRecord) -> dict[str, Any]:
    handler = HANDLERS[JobKind(job.kind)]
    result = await handler(rt, job.request)
    name = job.request.get("name") or job.proxy
    if name and job.kind != JobKind.MGMT_GET:
        await rt.cache.invalidate(name)
    return result


def _name(request: dict[str, Any]) -> str:
    name = request.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("management job needs a proxy `name`")
    return name


async def _create(rt: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    spec = ModelProxyCreateInput.model_validate(request.get("input") or {})
    try:
        return (await ModelProxy.create_async(spec, config=rt.config)).to_wire()
    except ResourceAlreadyExistError:
        existing = await ModelProxy.get_by_name_async(spec.model_proxy_name, config=rt.config)
    wanted = spec.to_wire()
    have = existing.to_wire()
    differing = sorted(k for k, v in wanted.items() if have.get(k) != v)
    if differing:
        raise SpecMismatch(
            f"proxy {spec.model_proxy_name} exists with other {', '.join(differing)}",
            status_code=409,
        )
    return have


async def _update(rt: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    changes = ModelProxyUpdateInput.model_validate(request.get("input") or {})
    proxy = await ModelProxy.update_by_name_async(_name(request), changes, config=rt.config)
    return proxy.to_wire()


async def _delete(rt: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    name = _name(request)
    try:
        return (await ModelProxy.delete_by_name_async(name, config=rt.config)).to_wire()
    except ResourceNotExistError:
        return {"modelProxyName": name, "status": "DELETED"}


async def _get(rt: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    return (await ModelProxy.get_by_name_async(_name(request), config=rt.config)).to_wire()


async def _list(rt: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    proxies = await ModelProxy.list_all_async(
        proxy_mode=request.get("proxy_mode"), status=request.get("status"), config=rt.config
    )
    return {"items": [p.to_wire() for p in proxies], "total": len(proxies)}


async def _refresh(rt: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    return dataclasses.asdict(await rt.cache.refresh_all())


async def _wait(rt: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    proxy = await ModelProxy.get_by_name_async(_name(request), config=rt.config)
    await proxy.wait_until_ready_or_failed_async(
        interval_seconds=float(request.get("interval_s", DEFAULT_WAIT_INTERVAL_S)),
        timeout_seconds=float(request.get("timeout_s", DEFAULT_WAIT_TIMEOUT_S)),
    )
    return proxy.to_wire()


HANDLERS: dict[JobKind, Handler] = {
    JobKind.MGMT_CREATE: _create,
    JobKind.MGMT_UPDATE: _update,
    JobKind.MGMT_DELETE: _delete,
    JobKind.MGMT_GET: _get,
    JobKind.MGMT_LIST: _list,
    JobKind.MGMT_REFRESH: _refresh,
    JobKind.MGMT_WAIT: _wait,
}

"""OpenAI's Files API: upload (purpose `batch`, streamed into the file store), list,
retrieve, content and delete. A key sees only its own files: another key's file answers 404
on every route, as one that does not exist."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from gateway.auth import Owner
from gateway.context import Gateway, gateway
from gateway.errors import not_found
from gateway.file_store import StoredFile
from gateway.file_upload import UploadLimits, upload_file
from gateway.listing import list_object

router = APIRouter()
GatewayDep = Annotated[Gateway, Depends(gateway)]
MAX_LIST_LIMIT = 10_000


@router.post("/files")
async def create_file(request: Request, owner: Owner, gw: GatewayDep) -> dict[str, Any]:
    limits = UploadLimits(max_bytes=gw.settings.gateway_max_file_bytes,
                          max_lines=gw.settings.gateway_max_file_lines)
    stored = await upload_file(request.stream(), request.headers, gw.files, owner, limits)
    return stored.to_openai()


@router.get("/files")
async def list_files(owner: Owner, gw: GatewayDep, *, purpose: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = MAX_LIST_LIMIT,
                     order: Literal["asc", "desc"] = "desc",
                     after: str | None = None) -> dict[str, Any]:
    page = await gw.files.page(owner, limit=limit, after=after, purpose=purpose,
                               newest_first=order == "desc")
    if page is None:
        raise not_found("file", after or "", param="after")
    files, has_more = page
    return list_object([stored.to_openai() for stored in files], has_more)


@router.get("/files/{file_id}")
async def retrieve_file(file_id: str, owner: Owner, gw: GatewayDep) -> dict[str, Any]:
    return (await _owned(gw, owner, file_id)).to_openai()


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, owner: Owner, gw: GatewayDep) -> StreamingResponse:
    stored = await _owned(gw, owner, file_id)
    return StreamingResponse(gw.files.read(stored.id), media_type="application/octet-stream",
                             headers={"Content-Length": str(stored.size)})


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, owner: Owner, gw: GatewayDep) -> dict[str, Any]:
    if not await gw.files.delete(owner, file_id):
        raise not_found("file", file_id)
    return {"id": file_id, "object": "file", "deleted": True}


async def _owned(gw: Gateway, owner: str, file_id: str) -> StoredFile:
    stored = await gw.files.get(owner, file_id)
    if stored is None:
        raise not_found("file", file_id)
    return stored

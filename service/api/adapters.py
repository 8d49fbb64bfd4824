from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from service import adapter_versions
from service.api.deps import CollectionDep, ContextDep
from service.api.params import AdapterSelector
from service.errors import Invalid, NotFound, TooLarge
from service.schemas import AdapterDetail, AdapterOut
from service.vocabulary import ZERO_SHOT, parse_version, version_space

router = APIRouter(prefix="/collections/{collection_id}/adapters", tags=["adapters"])


def version_of(selector: str) -> int:
    version = parse_version(selector)
    if version is None:
        raise Invalid("bad_adapter", f"{selector!r} is not an adapter version")
    return version


@router.get("", response_model=list[AdapterOut])
def list_adapters(collection_id: CollectionDep, ctx: ContextDep) -> list[AdapterOut]:
    """The collection's adapter versions, with their test metrics; at most one is active."""
    return [AdapterOut.model_validate(row) for row in adapter_versions.list_versions(ctx, collection_id)]


@router.get("/{version}", response_model=AdapterDetail)
def get_adapter(collection_id: CollectionDep, version: AdapterSelector, ctx: ContextDep) -> AdapterDetail:
    """One version with its full tuning report."""
    return AdapterDetail.model_validate(adapter_versions.load_version(ctx, collection_id, version_of(version)))


@router.post("/{version}/activate", response_model=list[AdapterOut])
def activate_adapter(collection_id: CollectionDep, version: AdapterSelector, ctx: ContextDep) -> list[AdapterOut]:
    """Make a version the active one; `none` goes back to zero-shot (a roll back)."""
    target = None if version == ZERO_SHOT else version_of(version)
    adapter_versions.activate(ctx, collection_id, target, note="activated by request" if target else None)
    return list_adapters(collection_id, ctx)


@router.delete("/{version}", status_code=204)
async def delete_adapter(collection_id: CollectionDep, version: AdapterSelector, ctx: ContextDep,
                         force: Annotated[bool, Query(description="Delete it even if it is active (searches fall back to none)")] = False) -> Response:
    """Delete an inactive version (an active one only with force=true)."""
    await run_in_threadpool(adapter_versions.delete, ctx, collection_id, version_of(version), force)
    return Response(status_code=204)


@router.get("/{version}/file")
def adapter_file(collection_id: CollectionDep, version: AdapterSelector, ctx: ContextDep) -> FileResponse:
    """Download a version's safetensors file."""
    row = adapter_versions.load_version(ctx, collection_id, version_of(version))
    if not ctx.adapters.path(collection_id, row.version).exists():  # deleted since the row was read
        raise NotFound("adapter_not_found",
                       f"adapter {version_space(row.version)} of collection {collection_id} was deleted")
    return FileResponse(ctx.adapters.path(collection_id, row.version), media_type="application/octet-stream",
                        filename=f"collection{collection_id}-{version_space(row.version)}.safetensors")


@router.post("", status_code=201, response_model=AdapterOut)
async def upload_adapter(
    collection_id: CollectionDep,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description="An adapter artifact (.safetensors)")],
    activate: Annotated[bool, Form(description="Make the new version the active one")] = False,
) -> AdapterOut:
    """Upload an adapter file (safetensors, made for this backbone); it becomes a new version, active if asked."""
    limit = ctx.settings.max_adapter_bytes
    blob = await file.read(limit + 1)
    if len(blob) > limit:
        raise TooLarge("file_too_large", f"adapter file over {limit} bytes")
    row = await run_in_threadpool(adapter_versions.register_upload, ctx, collection_id, blob, file.filename, activate)
    return AdapterOut.model_validate(row)

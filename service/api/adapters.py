from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select

from service import adapter_versions
from service import collections as ops
from service.adapter_upload import check_adapter_upload
from service.api.deps import ContextDep
from service.api.params import AdapterSelector, CollectionId
from service.errors import ApiError
from service.models import AdapterVersion
from service.schemas import AdapterDetail, AdapterOut

router = APIRouter(prefix="/collections/{collection_id}/adapters", tags=["adapters"])


def adapter_out(row: AdapterVersion, detail: bool = False) -> AdapterOut:
    fields = dict(
        version=row.version, name=f"v{row.version}", active=row.active, method=row.method,
        has_visual=row.has_visual, param_count=row.param_count, size_bytes=row.size_bytes,
        file_sha256=row.file_sha256, metrics=row.metrics or {}, note=row.note, job_id=row.job_id,
        created_at=row.created_at, file_url=f"/collections/{row.collection_id}/adapters/{row.version}/file",
    )
    return AdapterDetail(**fields, report=row.report or {}) if detail else AdapterOut(**fields)


def version_of(selector: str) -> int:
    version = adapter_versions.parse_version(selector)
    if version is None:
        raise ApiError(422, "bad_adapter", f"{selector!r} is not an adapter version")
    return version


@router.get("", response_model=list[AdapterOut])
def list_adapters(collection_id: CollectionId, ctx: ContextDep) -> list[AdapterOut]:
    with ctx.session() as session:
        ops.get_collection(session, collection_id)
        rows = session.scalars(select(AdapterVersion).where(AdapterVersion.collection_id == collection_id)
                               .order_by(AdapterVersion.version)).all()
        return [adapter_out(r) for r in rows]


@router.get("/{version}", response_model=AdapterDetail)
def get_adapter(collection_id: CollectionId, version: AdapterSelector, ctx: ContextDep) -> AdapterDetail:
    with ctx.session() as session:
        ops.get_collection(session, collection_id)
        return adapter_out(adapter_versions.get_version(session, collection_id, version_of(version)), detail=True)


@router.post("/{version}/activate", response_model=list[AdapterOut])
def activate_adapter(collection_id: CollectionId, version: AdapterSelector, ctx: ContextDep) -> list[AdapterOut]:
    """Make a version the active one; `none` goes back to zero-shot (a roll back)."""
    with ctx.session() as session:
        ops.get_collection(session, collection_id)
    target = None if version == "none" else version_of(version)
    adapter_versions.activate(ctx, collection_id, target, note="activated by request" if target else None)
    return list_adapters(collection_id, ctx)


@router.delete("/{version}", status_code=204)
async def delete_adapter(collection_id: CollectionId, version: AdapterSelector, ctx: ContextDep,
                         force: Annotated[bool, Query()] = False) -> Response:
    await run_in_threadpool(ops.require_collection, ctx, collection_id)
    await run_in_threadpool(adapter_versions.delete, ctx, collection_id, version_of(version), force)
    return Response(status_code=204)


@router.get("/{version}/file")
def adapter_file(collection_id: CollectionId, version: AdapterSelector, ctx: ContextDep) -> FileResponse:
    with ctx.session() as session:
        row = adapter_versions.get_version(session, collection_id, version_of(version))
    if not ctx.adapters.path(collection_id, row.version).exists():  # deleted since the row was read
        raise ApiError(404, "adapter_not_found", f"adapter v{row.version} of collection {collection_id} was deleted")
    return FileResponse(ctx.adapters.path(collection_id, row.version), media_type="application/octet-stream",
                        filename=f"collection{collection_id}-v{row.version}.safetensors")


@router.post("", status_code=201, response_model=AdapterOut)
async def upload_adapter(
    collection_id: CollectionId,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description="An adapter artifact (.safetensors)")],
    activate: Annotated[bool, Form()] = False,
) -> AdapterOut:
    await run_in_threadpool(ops.require_collection, ctx, collection_id)
    blob = await file.read(ctx.settings.max_adapter_bytes + 1)
    if len(blob) > ctx.settings.max_adapter_bytes:
        raise ApiError(413, "file_too_large", f"adapter file over {ctx.settings.max_adapter_bytes} bytes")

    def store():
        prompted = check_adapter_upload(ctx, blob)
        method = ("dual" if prompted.config.text_tokens and prompted.visual_layers
                  else "visual" if prompted.visual_layers else "text")
        row = adapter_versions.register(ctx, collection_id, prompted, blob, method=method, job_id=None,
                                        metrics={}, report={"source": "upload", "filename": file.filename})
        if activate:
            adapter_versions.activate(ctx, collection_id, row.version, note="uploaded and activated by request")
            row.active = True
        return row

    return adapter_out(await run_in_threadpool(store))

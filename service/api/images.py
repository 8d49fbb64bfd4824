from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import TypeAdapter, ValidationError

from service import collections as ops
from service import editing, import_jobs
from service.api.deps import CollectionDep, ContextDep
from service.api.params import ImageId, Offset, PageSize
from service.errors import Gone, Invalid, TooLarge
from service.imaging import thumbnail_jpeg
from service.ingest import IngestItem, IngestResult, ingest
from service.input_rules import check_filename
from service.schemas import (
    BulkEditResult,
    BulkImagePatch,
    ImageMetadata,
    ImageOut,
    ImagePage,
    ImagePatch,
    ImportRequest,
    IngestResponse,
    JobOut,
)

router = APIRouter(prefix="/collections/{collection_id}/images", tags=["images"])

_metadata_list = TypeAdapter(list[ImageMetadata])


def parse_metadata(raw: str | None, file_count: int) -> list[ImageMetadata]:
    if raw is None or raw.strip() == "":
        return [ImageMetadata() for _ in range(file_count)]
    try:
        entries = _metadata_list.validate_python(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise Invalid("bad_metadata", f"metadata is not valid JSON: {exc.msg}") from exc
    except RecursionError as exc:
        raise Invalid("bad_metadata", "metadata is nested too deeply") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Invalid("bad_metadata", f"metadata[{where}]: {first['msg']}") from exc
    if len(entries) != file_count:
        raise Invalid("metadata_mismatch",
                       f"metadata lists {len(entries)} entries but {file_count} files were sent")
    return entries


def ingest_response(result: IngestResult) -> IngestResponse:
    """200 when at least one file was taken; 422 with the same body when every file was rejected."""
    response = IngestResponse.model_validate(result, from_attributes=True)
    if response.rejected and not response.accepted:
        raise Invalid("all_rejected", "every file was rejected", **response.model_dump(mode="json"))
    return response


@router.post("", response_model=IngestResponse)
async def upload_images(
    collection_id: CollectionDep,
    ctx: ContextDep,
    files: Annotated[list[UploadFile], File(description="One or more image files")],
    metadata: Annotated[str | None, Form(description="JSON list aligned with files")] = None,
) -> IngestResponse:
    """Upload image files (multipart `files`), optionally with one metadata entry per file. Each file is accepted or rejected on its own; a duplicate (same bytes) updates the stored image's metadata."""
    settings = ctx.settings
    if len(files) > settings.max_files_per_upload:
        raise TooLarge("too_many_files", f"at most {settings.max_files_per_upload} files per upload")
    entries = parse_metadata(metadata, len(files))
    for upload in files:
        if (refusal := check_filename(upload.filename or "")) is not None:
            raise Invalid("bad_filename", refusal)
    items = []
    for upload, meta in zip(files, entries, strict=True):
        # Read one byte past the limit: enough to know it is too big without holding all of it.
        data = await upload.read(settings.max_upload_bytes + 1)
        items.append(IngestItem(
            filename=upload.filename or "", data=data, captions=meta.all_captions, category=meta.category,
            attributes=meta.attributes, meta=meta.meta,
        ))
    result = await run_in_threadpool(ingest, ctx, collection_id, items)
    return ingest_response(result)


@router.post("/import", status_code=202, response_model=JobOut)
async def import_images(collection_id: CollectionDep, body: ImportRequest, ctx: ContextDep) -> JobOut:
    """Queue an import job (202): the images a manifest lists, or every image in a directory tree, under the server's import root. The request and every path are checked now (a bad one is a 4xx and nothing is queued); the files are read and ingested in the background, in batches: follow the job at `GET /jobs/{id}` or its events. A restart resumes it; files already stored (same bytes) are not stored again."""
    return JobOut.model_validate(await run_in_threadpool(import_jobs.enqueue_import, ctx, collection_id, body))


@router.get("", response_model=ImagePage)
def list_images(
    collection_id: CollectionDep,
    ctx: ContextDep,
    offset: Offset = 0,
    limit: PageSize = 100,
) -> ImagePage:
    """A page of the collection's images, oldest first."""
    total, records = ops.list_images(ctx, collection_id, offset, limit)
    return ImagePage(total=total, offset=offset, limit=limit, items=[ImageOut.model_validate(r) for r in records])


@router.patch("", response_model=BulkEditResult)
async def edit_images(collection_id: CollectionDep, body: BulkImagePatch, ctx: ContextDep) -> BulkEditResult:
    """Apply one change to every image the filter matches (the same filter as search's)."""
    ids = await run_in_threadpool(editing.edit_images, ctx, collection_id, body.filter, body.change)
    return BulkEditResult(updated=len(ids), ids=ids)


@router.patch("/{image_id}", response_model=ImageOut)
async def edit_image(collection_id: CollectionDep, image_id: ImageId, body: ImagePatch, ctx: ContextDep) -> ImageOut:
    """Change captions, category, attributes or meta; only the fields sent change."""
    return ImageOut.model_validate(await run_in_threadpool(editing.edit_image, ctx, collection_id, image_id, body))


@router.get("/{image_id}", response_model=ImageOut)
def get_image(collection_id: CollectionDep, image_id: ImageId, ctx: ContextDep) -> ImageOut:
    """One image's record."""
    return ImageOut.model_validate(ops.load_image(ctx, collection_id, image_id))


@router.get("/{image_id}/file")
def image_file(collection_id: CollectionDep, image_id: ImageId, ctx: ContextDep) -> FileResponse:
    """The stored image file, as uploaded."""
    record, path = ops.stored_file(ctx, collection_id, image_id)
    return FileResponse(path, media_type=record.content_type, filename=record.filename or None)


@router.get("/{image_id}/thumbnail")
def image_thumbnail(
    collection_id: CollectionDep, image_id: ImageId, ctx: ContextDep,
    size: Annotated[int, Query(ge=16, le=1024, description="Longest side in pixels")] = 256,
) -> Response:
    """A small JPEG thumbnail of the image."""
    record = ops.load_image(ctx, collection_id, image_id)
    try:
        data = thumbnail_jpeg(ctx.store.read(collection_id, record.sha256), size)
    except FileNotFoundError as exc:
        raise Gone("file_missing", f"the file of image {image_id} is missing from storage") from exc
    return Response(content=data, media_type="image/jpeg")


@router.delete("/{image_id}", status_code=204)
async def delete_image(collection_id: CollectionDep, image_id: ImageId, ctx: ContextDep) -> Response:
    """Delete an image: its file, its vectors in every index, and its row."""
    await run_in_threadpool(ops.delete_image, ctx, collection_id, image_id)
    return Response(status_code=204)

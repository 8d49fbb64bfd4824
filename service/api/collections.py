from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from service import collections as ops
from service.api.deps import ContextDep
from service.api.params import CollectionId, CollectionName
from service.auth import PrincipalDep
from service.context import ServiceContext
from service.models import Collection
from service.schemas import CollectionCreate, CollectionOut, IndexOut

router = APIRouter(prefix="/collections", tags=["collections"])


def collection_out(ctx: ServiceContext, collection: Collection, image_count: int) -> CollectionOut:
    """A collection with what lives beside its row: its image count, index states and backbone."""
    ctx.follow_other_writers(collection.id)
    statuses = ctx.indexes.status(collection.id, ctx.served_spaces(collection.id))
    return CollectionOut(
        id=collection.id, name=collection.name, description=collection.description,
        created_at=collection.created_at, image_count=image_count,
        indexes=[IndexOut(space=s.space, kind=s.kind, size=s.size) for s in statuses],
        backbone=ctx.backbone.identity.to_dict(),
    )


@router.post("", status_code=201, response_model=CollectionOut)
def create_collection(body: CollectionCreate, ctx: ContextDep) -> CollectionOut:
    """Create an empty collection; its name must be unique (409 otherwise)."""
    collection = ops.create_collection(ctx, body.name, body.description)
    return collection_out(ctx, collection, 0)


@router.get("", response_model=list[CollectionOut])
def list_collections(ctx: ContextDep, principal: PrincipalDep) -> list[CollectionOut]:
    """The collections the caller's key may see (all of them for an unrestricted key or an open server)."""
    return [collection_out(ctx, c, count) for c, count in ops.list_collections(ctx) if principal.sees(c.id)]


@router.get("/by-name/{name:path}", response_model=CollectionOut)
def get_collection_by_name(name: CollectionName, ctx: ContextDep, principal: PrincipalDep) -> CollectionOut:
    """The collection of that exact name (404 when absent or outside what the caller's key may see)."""
    return collection_out(ctx, *ops.load_collection_by_name(ctx, name, principal.sees))


@router.get("/{collection_id}", response_model=CollectionOut)
def get_collection(collection_id: CollectionId, ctx: ContextDep) -> CollectionOut:
    """One collection by id."""
    return collection_out(ctx, *ops.load_collection(ctx, collection_id))


@router.delete("/{collection_id}", status_code=204)
async def delete_collection(collection_id: CollectionId, ctx: ContextDep) -> Response:
    """Delete a collection with its images, indexes, adapters and jobs (running jobs are cancelled)."""
    await run_in_threadpool(ops.delete_collection, ctx, collection_id)
    return Response(status_code=204)

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from service import collections as ops
from service.api.deps import ContextDep
from service.api.params import CollectionId
from service.auth import PrincipalDep
from service.context import ServiceContext
from service.models import Collection
from service.schemas import CollectionCreate, CollectionOut, IndexOut

router = APIRouter(prefix="/collections", tags=["collections"])


def collection_out(ctx: ServiceContext, collection: Collection, image_count: int) -> CollectionOut:
    statuses = ctx.indexes.status(collection.id, ctx.served_spaces(collection.id))
    return CollectionOut(
        id=collection.id, name=collection.name, description=collection.description,
        created_at=collection.created_at, image_count=image_count,
        indexes=[IndexOut(space=s.space, kind=s.kind, size=s.size) for s in statuses],
        backbone=ctx.backbone.identity.to_dict(),
    )


@router.post("", status_code=201, response_model=CollectionOut)
def create_collection(body: CollectionCreate, ctx: ContextDep) -> CollectionOut:
    collection = ops.create_collection(ctx, body.name, body.description)
    return collection_out(ctx, collection, 0)


@router.get("", response_model=list[CollectionOut])
def list_collections(ctx: ContextDep, principal: PrincipalDep) -> list[CollectionOut]:
    with ctx.session() as session:
        collections = [c for c in session.scalars(select(Collection).order_by(Collection.id)) if principal.sees(c.id)]
        counts = {c.id: ops.image_count(session, c.id) for c in collections}
    return [collection_out(ctx, c, counts[c.id]) for c in collections]


@router.get("/{collection_id}", response_model=CollectionOut)
def get_collection(collection_id: CollectionId, ctx: ContextDep) -> CollectionOut:
    with ctx.session() as session:
        collection = ops.get_collection(session, collection_id)
        count = ops.image_count(session, collection_id)
    return collection_out(ctx, collection, count)


@router.delete("/{collection_id}", status_code=204)
async def delete_collection(collection_id: CollectionId, ctx: ContextDep) -> Response:
    await run_in_threadpool(ops.delete_collection, ctx, collection_id)
    return Response(status_code=204)

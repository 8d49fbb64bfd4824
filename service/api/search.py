from __future__ import annotations

from fastapi import APIRouter

from service import adapter_versions
from service import collections as ops
from service import search as searching
from service.api.deps import ContextDep
from service.api.params import CollectionId
from service.errors import ApiError
from service.schemas import SearchHit, SearchRequest, SearchResponse

router = APIRouter(tags=["search"])


@router.post("/collections/{collection_id}/search", response_model=SearchResponse)
def search(collection_id: CollectionId, body: SearchRequest, ctx: ContextDep) -> SearchResponse:
    # A sync handler: FastAPI runs it in its thread pool, so encoding never blocks the event loop.
    if not 1 <= body.k <= ctx.settings.max_k:
        raise ApiError(422, "bad_k", f"k must be between 1 and {ctx.settings.max_k}")
    with ctx.session() as session:
        ops.get_collection(session, collection_id)
    batch = isinstance(body.query, list)
    queries = searching.validate_queries(ctx, body.query if batch else [body.query])
    who = adapter_versions.resolve(ctx, collection_id, body.adapter)
    hits = searching.search(ctx, collection_id, queries, body.k, who)
    results = [[SearchHit(**vars(h)) for h in row] for row in hits]
    return SearchResponse(adapter=who.name, results=results if batch else results[0])

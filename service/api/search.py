from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from service import adapter_versions, feedback, search_terms
from service import search as searching
from service.api.deps import CollectionDep, ContextDep
from service.context import ServiceContext
from service.errors import Invalid
from service.schemas import SearchHit, SearchOptions, SearchRequest, SearchResponse

router = APIRouter(tags=["search"])


def as_json(answer: SearchResponse) -> Response:
    """The answer as JSON as it is: FastAPI would validate the model it was just built from once more,
    a large share of a search's time under load (the route's ``response_model`` still documents it)."""
    return Response(answer.model_dump_json(), media_type="application/json")


def check_k(k: int, max_k: int) -> None:
    if not 1 <= k <= max_k:
        raise Invalid("bad_k", f"k must be between 1 and {max_k}")


@router.post("/collections/{collection_id}/search", response_model=SearchResponse)
def search(collection_id: CollectionDep, body: SearchRequest, ctx: ContextDep) -> Response:
    """Texts, a stored image (`image_id`) or weighted `terms`: exactly one of them."""
    # A sync handler: FastAPI runs it in its thread pool, so encoding never blocks the event loop.
    check_k(body.k, ctx.settings.max_k)
    who = adapter_versions.resolve(ctx, collection_id, body.adapter)
    query = search_terms.query_vectors(ctx, collection_id, who, query=body.query, image_id=body.image_id,
                                       terms=body.terms)
    hits = searching.search(ctx, collection_id, query.vectors, body.k, who, body.filter, body.min_score, body.sort)
    results = [[SearchHit(**vars(h)) for h in row] for row in hits]
    if isinstance(body.query, list):
        asked = [feedback.search_query(query=text) for text in body.query]
    else:
        asked = [feedback.search_query(body.query, body.image_id, body.terms)]
    ids = feedback.record_searches(ctx, collection_id, body.adapter, who.name, asked,
                                   [[h.image_id for h in row] for row in hits])
    if query.batch:
        return as_json(SearchResponse(adapter=who.name, results=results, search_ids=ids))
    return as_json(SearchResponse(adapter=who.name, results=results[0], search_id=ids[0]))


def parse_options(raw: str | None) -> SearchOptions:
    if raw is None or raw.strip() == "":
        return SearchOptions()
    try:
        return SearchOptions.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Invalid("bad_options", f"options{'.' + where if where else ''}: {first['msg']}") from exc
    except (RecursionError, json.JSONDecodeError) as exc:
        raise Invalid("bad_options", "options is not usable JSON") from exc


@router.post("/collections/{collection_id}/search/image", response_model=SearchResponse)
async def search_by_image(
    collection_id: CollectionDep,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description="The query image (not stored)")],
    weight: Annotated[float, Form(ge=-10, le=10, description="The image's weight beside any `terms`")] = 1.0,
    options: Annotated[str | None, Form(description="JSON: k, adapter, terms, filter, min_score, sort")] = None,
) -> Response:
    """Images like an uploaded one, optionally combined with weighted `terms`; one result list."""
    opts = parse_options(options)
    check_k(opts.k, ctx.settings.max_k)
    data = await file.read(ctx.settings.max_upload_bytes + 1)
    return await run_in_threadpool(answer_image_search, ctx, collection_id, data, weight, opts)


def answer_image_search(ctx: ServiceContext, collection_id: int, data: bytes, weight: float,
                        opts: SearchOptions) -> Response:
    who = adapter_versions.resolve(ctx, collection_id, opts.adapter)
    vector = search_terms.uploaded_image_query(ctx, collection_id, who, data, weight, opts.terms or [])
    hits = searching.search(ctx, collection_id, vector, opts.k, who, opts.filter, opts.min_score, opts.sort)
    [search_id] = feedback.record_searches(ctx, collection_id, opts.adapter, who.name,
                                           [feedback.search_query(terms=opts.terms, uploaded=True)],
                                           [[h.image_id for h in hits[0]]])
    return as_json(SearchResponse(adapter=who.name, results=[SearchHit(**vars(h)) for h in hits[0]],
                                  search_id=search_id))

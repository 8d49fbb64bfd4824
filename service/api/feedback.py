from __future__ import annotations

from fastapi import APIRouter, Response

from service import feedback as ops
from service.api.deps import CollectionDep, ContextDep
from service.api.params import FeedbackId, Offset, PageSize
from service.schemas import FeedbackOut, FeedbackPage, FeedbackRequest

router = APIRouter(prefix="/collections/{collection_id}/feedback", tags=["feedback"])


@router.post("", response_model=FeedbackOut, status_code=201)
def give_feedback(collection_id: CollectionDep, body: FeedbackRequest, ctx: ContextDep) -> FeedbackOut:
    """Mark an image as a right (`relevant: true`) or wrong answer to a search (`search_id`) or a `query`.

    The next tuning job trains on the relevant marks of text queries (never for an image in its own
    val or test split); its report counts the marks used and skipped.
    """
    return FeedbackOut.model_validate(ops.give_feedback(ctx, collection_id, body))


@router.get("", response_model=FeedbackPage)
def list_feedback(
    collection_id: CollectionDep,
    ctx: ContextDep,
    offset: Offset = 0,
    limit: PageSize = 100,
) -> FeedbackPage:
    """The collection's marks, newest first."""
    total, rows = ops.list_feedback(ctx, collection_id, offset, limit)
    return FeedbackPage(total=total, offset=offset, limit=limit, items=[FeedbackOut.model_validate(r) for r in rows])


@router.delete("/{feedback_id}", status_code=204)
def delete_feedback(collection_id: CollectionDep, feedback_id: FeedbackId, ctx: ContextDep) -> Response:
    """Take a mark back (204). The next tuning job trains as if it had never been made; an earlier mark on the
    same query and image, if there is one, counts again. A mark of another collection is a 404."""
    ops.delete_feedback(ctx, collection_id, feedback_id)
    return Response(status_code=204)

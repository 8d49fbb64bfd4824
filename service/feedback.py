"""Learning from use: the searches served, the user's marks on their results, and what a job trains on.

Every search stores its query, the adapter selector and the ids it returned (``searches``, written
by ``service.search_log``), so that a mark can name a result list by ``search_id``. Only the newest
``SEARCHES_KEPT`` per collection are kept, and a mark naming an older one is a 404 (send the query
itself instead). Marks (``feedback``) are kept until their image (or their query image) is
deleted (``collections.delete_image``, in the same unit of work) or taken back (``delete_feedback``).

What a tuning job takes from the marks (``training_marks``): the latest mark per (query text,
image) decides. A relevant one adds the query text as a caption of that image for training only; a
not-relevant one names the image as a negative of that query text (``adapters.negatives``: the text
must score its own images above it). Neither ever uses an image in the job's val or test split (those
keep only their own captions and are never trained against, so the held-out comparison stays
honest). A negative trains only when its query text trains some image (a relevant mark, or an
image's own caption): otherwise there is nothing to rank it below, and the job counts it as skipped.

Marks on image queries or combined queries are counted and skipped: the recipe's objective is
text-to-image, so there is no text to pair with; an image-to-image objective would shape the visual
prompts for a task the job's held-out comparison (text queries) does not measure, so its effect
could not be checked before activation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.marks import MarkedQuery
from service.collections import get_image
from service.context import ServiceContext
from service.errors import Invalid, NotFound, not_found
from service.input_rules import visible_text
from service.models import FeedbackRecord, SearchRecord
from service.progress import FeedbackUse
from service.schemas import FeedbackRequest, SearchTerm
from service.search_log import SEARCHES_KEPT, ServedSearches
from service.search_terms import clean_text
from service.unit_of_work import CollectionWriter


def search_query(query: str | None = None, image_id: int | None = None,
                 terms: list[SearchTerm] | None = None, uploaded: bool = False) -> dict:
    """How a search's query is stored: {"text"}, {"image_id"}, {"terms"} or {"uploaded_image", "terms"}."""
    if query is not None:
        return {"text": visible_text(query)}
    if image_id is not None:
        return {"image_id": image_id}
    stored_terms = [t.model_dump(exclude_none=True) for t in terms or []]
    return {"uploaded_image": True, "terms": stored_terms} if uploaded else {"terms": stored_terms}


def record_searches(ctx: ServiceContext, collection_id: int, adapter: str, served_by: str,
                    queries: list[dict], results: list[list[int]]) -> list[int]:
    """Store one row per result list (``service.search_log``: concurrent searches share a commit); their ids."""
    return ctx.search_log.record(ServedSearches(collection_id, adapter, served_by, queries, results))


def mark_query(ctx: ServiceContext, collection_id: int, body: FeedbackRequest,
               session: Session) -> tuple[dict, int | None]:
    """The stored query of a mark, from its search or from the body."""
    if (body.search_id is None) == (body.query is None):
        raise Invalid("bad_feedback", "send exactly one of search_id and query")
    if body.search_id is not None:
        search = session.scalar(select(SearchRecord).where(SearchRecord.id == body.search_id,
                                                           SearchRecord.collection_id == collection_id))
        if search is None:
            raise NotFound("search_not_found", f"search {body.search_id} not found in collection {collection_id} "
                                               f"(only the newest {SEARCHES_KEPT} are kept: send the query instead)")
        return dict(search.query), body.search_id
    assert body.query is not None
    if (body.query.text is None) == (body.query.image_id is None):
        raise Invalid("bad_feedback", "query has exactly one of text and image_id")
    if body.query.text is not None:
        return {"text": clean_text(ctx, body.query.text)}, None
    get_image(session, collection_id, body.query.image_id or 0)
    return {"image_id": body.query.image_id}, None


def give_feedback(ctx: ServiceContext, collection_id: int, body: FeedbackRequest) -> FeedbackRecord:
    with CollectionWriter(ctx, collection_id) as writer:
        writer.require_collection(collection_id)
        query, search_id = mark_query(ctx, collection_id, body, writer.session)
        get_image(writer.session, collection_id, body.image_id)
        row = FeedbackRecord(collection_id=collection_id, image_id=body.image_id, search_id=search_id, query=query,
                             query_text=query.get("text"), query_image_id=query.get("image_id"),
                             relevant=body.relevant)
        writer.session.add(row)
        writer.commit()
        return row


def delete_feedback(ctx: ServiceContext, collection_id: int, feedback_id: int) -> None:
    """Take a mark back: the next job trains as if it had never been made (an earlier mark on the same
    query and image, if any, counts again)."""
    with CollectionWriter(ctx, collection_id) as writer:
        writer.require_collection(collection_id)
        row = writer.session.scalar(select(FeedbackRecord).where(FeedbackRecord.id == feedback_id,
                                                                 FeedbackRecord.collection_id == collection_id))
        if row is None:
            raise not_found("mark", feedback_id)
        writer.session.delete(row)
        writer.commit()


def list_feedback(ctx: ServiceContext, collection_id: int, offset: int, limit: int) -> tuple[int, list[FeedbackRecord]]:
    """(total, one page of marks, newest first)."""
    with ctx.session() as session:
        mine = FeedbackRecord.collection_id == collection_id
        total = session.scalar(select(func.count(FeedbackRecord.id)).where(mine)) or 0
        rows = session.scalars(select(FeedbackRecord).where(mine).order_by(FeedbackRecord.id.desc())
                               .offset(offset).limit(limit)).all()
    return total, list(rows)


@dataclass
class TrainingMarks:
    captions: dict[int, list[str]] = field(default_factory=dict)  # image id -> extra training captions
    negatives: dict[str, list[int]] = field(default_factory=dict)  # query text -> image ids ranked below it
    use: FeedbackUse = field(default_factory=FeedbackUse)


def _latest_text_marks(ctx: ServiceContext, collection_id: int, use: FeedbackUse) -> dict[tuple[str, int], bool]:
    """The latest mark per (query text, image); marks without a query text are counted in ``use`` and dropped."""
    with ctx.session() as session:
        rows = session.scalars(select(FeedbackRecord).where(FeedbackRecord.collection_id == collection_id)
                               .order_by(FeedbackRecord.id)).all()
    latest: dict[tuple[str, int], bool] = {}
    for row in rows:
        if row.query_text is None:
            if row.relevant:
                use.relevant_skipped_no_text += 1
            else:
                use.not_relevant_skipped_no_text += 1
            continue
        latest[(row.query_text, row.image_id)] = row.relevant  # a later mark overrides an earlier one
    return latest


def training_marks(ctx: ServiceContext, collection_id: int, split: dict[str, list[int]]) -> TrainingMarks:
    held_out = set(split.get("val", [])) | set(split.get("test", []))
    out = TrainingMarks()
    for (text, image_id), relevant in _latest_text_marks(ctx, collection_id, out.use).items():
        if image_id in held_out:
            if relevant:
                out.use.relevant_skipped_held_out += 1
            else:
                out.use.not_relevant_skipped_held_out += 1
        elif relevant:
            out.captions.setdefault(image_id, []).append(text)
            out.use.relevant_used += 1
        else:
            out.negatives.setdefault(text, []).append(image_id)
    return out


def marked_queries(ctx: ServiceContext, collection_id: int) -> tuple[list[MarkedQuery], FeedbackUse]:
    """Every query text with its latest marks (image ids), in the order each text was first marked."""
    use = FeedbackUse()
    queries: dict[str, MarkedQuery] = {}
    for (text, image_id), relevant in _latest_text_marks(ctx, collection_id, use).items():
        query = queries.setdefault(text, MarkedQuery(text))
        (query.relevant if relevant else query.not_relevant).append(image_id)
    return list(queries.values()), use

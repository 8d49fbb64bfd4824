"""Query vectors against a collection's index in one space (``search_terms`` makes the vectors).

A filter restricts the index search to the ids the database says match (``service.filters``), so k
results come back however few images match; a minimum score then drops the weaker ones, and the
hits are ordered by score or by date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from service import filters
from service.adapter_versions import Resolved
from service.context import ServiceContext
from service.models import ImageRecord
from service.schemas import ImageFilter
from service.vocabulary import SearchSort


@dataclass
class Hit:
    image_id: int
    score: float
    captions: list[str]
    category: str | None
    filename: str
    captured_at: datetime | None
    uploaded_at: datetime
    url: str
    thumbnail_url: str


def search(ctx: ServiceContext, collection_id: int, vectors: np.ndarray, k: int, who: Resolved,
           flt: ImageFilter | None = None, min_score: float | None = None,
           sort: SearchSort = SearchSort.SCORE) -> list[list[Hit]]:
    among = None
    if flt is not None and not filters.is_empty(flt):
        with ctx.session() as session:
            among = filters.matching_ids(session, collection_id, flt)
    ctx.follow_other_writers(collection_id)
    index = ctx.indexes.get(collection_id, who.space)  # held: a concurrent swap or delete cannot pull it away
    scores, ids = index.search(vectors, k, among)
    wanted = {int(i) for i in ids.ravel() if i >= 0}
    with ctx.session() as session:
        records = {
            r.id: r for r in session.scalars(
                select(ImageRecord).options(selectinload(ImageRecord.captions)).where(ImageRecord.id.in_(wanted))
            )
        } if wanted else {}
    out = []
    for row_scores, row_ids in zip(scores, ids, strict=True):
        hits = []
        for score, image_id in zip(row_scores, row_ids, strict=True):
            record = records.get(int(image_id))
            if record is None:  # -1 padding, or an image deleted between search and lookup
                continue
            if min_score is not None and score < min_score:
                continue
            base = f"/collections/{collection_id}/images/{record.id}"
            hits.append(Hit(
                image_id=record.id, score=float(score), captions=record.caption_texts, category=record.category,
                filename=record.filename, captured_at=record.captured_at, uploaded_at=record.created_at,
                url=f"{base}/file", thumbnail_url=f"{base}/thumbnail",
            ))
        if sort == SearchSort.DATE:
            # Newest first: the capture date where the photo has one, else the upload date.
            hits.sort(key=lambda h: h.captured_at or h.uploaded_at, reverse=True)
        out.append(hits)
    return out

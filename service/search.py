"""Query vectors against a collection's index in one space (``search_terms`` makes the vectors)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from service.adapter_versions import Resolved
from service.context import ServiceContext
from service.models import ImageRecord


@dataclass
class Hit:
    image_id: int
    score: float
    captions: list[str]
    category: str | None
    url: str


def search(ctx: ServiceContext, collection_id: int, vectors: np.ndarray, k: int, who: Resolved) -> list[list[Hit]]:
    index = ctx.indexes.get(collection_id, who.space)  # held: a concurrent swap or delete cannot pull it away
    scores, ids = index.search(vectors, k)
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
            hits.append(Hit(
                image_id=record.id, score=float(score), captions=record.caption_texts, category=record.category,
                url=f"/collections/{collection_id}/images/{record.id}/file",
            ))
        out.append(hits)
    return out

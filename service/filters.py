"""Which images of a collection a filter lets through: the ids a search is restricted to, and a bulk edit's targets.

The database says which images match; the index search is then restricted to those ids (FAISS
``IDSelectorBatch``), so k results still come back however few images match. Category is matched in
SQL; attributes, ``meta`` values and dates in Python over the collection's rows (JSON columns are
queried differently on each database, and the dates are compared timezone-aware here).
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import Invalid
from service.models import ImageRecord
from service.schemas import ImageFilter


def aware(moment: datetime | None) -> datetime | None:
    """A bound without a zone is UTC, as every stored time is."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def within(moment: datetime | None, start: datetime | None, end: datetime | None) -> bool:
    if start is None and end is None:
        return True
    if moment is None:  # an image without the date is outside every range
        return False
    return (start is None or moment >= start) and (end is None or moment <= end)


def is_empty(flt: ImageFilter) -> bool:
    return flt == ImageFilter()


def check(flt: ImageFilter) -> None:
    for name, start, end in (("uploaded", flt.uploaded_from, flt.uploaded_to),
                             ("captured", flt.captured_from, flt.captured_to)):
        if start is not None and end is not None and aware(start) > aware(end):  # type: ignore[operator]
            raise Invalid("bad_filter", f"{name}_from is after {name}_to")


def matching_ids(session: Session, collection_id: int, flt: ImageFilter) -> np.ndarray:
    """The ids of the collection's images that pass the filter, ascending."""
    check(flt)
    query = select(ImageRecord.id, ImageRecord.attributes, ImageRecord.meta, ImageRecord.created_at,
                   ImageRecord.captured_at).where(ImageRecord.collection_id == collection_id)
    if flt.category is not None:
        query = query.where(ImageRecord.category == flt.category)
    wanted_attributes = set(flt.attributes)
    uploaded = aware(flt.uploaded_from), aware(flt.uploaded_to)
    captured = aware(flt.captured_from), aware(flt.captured_to)
    ids = []
    for image_id, attributes, meta, created_at, captured_at in session.execute(query.order_by(ImageRecord.id)):
        if not wanted_attributes <= set(attributes or []):
            continue
        meta = meta or {}
        if any(key not in meta or meta[key] != value for key, value in flt.meta.items()):
            continue
        if not within(created_at, *uploaded) or not within(captured_at, *captured):
            continue
        ids.append(image_id)
    return np.asarray(ids, dtype=np.int64)

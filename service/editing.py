"""Changing what an image says about itself: captions, category, attributes, meta; one image or every one a filter matches.

An edit is a unit of work (``service.unit_of_work``) on rows only: no file and no vector depends on
these fields, so the indexes stay as they are. Tuning jobs read captions and categories from the rows
when they run, so the next job trains on the edited values.

What a change means: ``caption`` / ``captions`` replace the captions (``caption`` is a one-item
``captions``); ``category`` and ``attributes`` replace theirs (``category: null`` clears it); ``meta``
is merged key by key, and a key set to null is removed. A field not sent stays as it is.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from service import filters
from service.collections import get_image
from service.context import ServiceContext
from service.errors import Invalid
from service.imaging import ImageRejected
from service.ingest import clean_captions
from service.input_rules import bounded_json
from service.models import Caption, ImageRecord
from service.schemas import ImageFilter, ImagePatch
from service.unit_of_work import CollectionWriter

CHUNK = 500  # ids per IN (...) clause


def new_captions(change: ImagePatch) -> list[str] | None:
    """The captions a change sets, cleaned; None when it leaves them alone."""
    if not {"caption", "captions"} & change.model_fields_set:
        return None
    texts = ([change.caption] if change.caption else []) + list(change.captions or [])
    try:
        return clean_captions(texts)
    except ImageRejected as exc:
        raise Invalid("bad_captions", str(exc)) from exc


def merged_meta(current: dict | None, change: dict) -> dict:
    merged = dict(current or {})
    for key, value in change.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    try:
        return bounded_json(merged)
    except ValueError as exc:
        raise Invalid("bad_meta", f"meta after the change: {exc}") from exc


def apply(record: ImageRecord, change: ImagePatch, captions: list[str] | None) -> None:
    given = change.model_fields_set
    if captions is not None:
        record.captions = [Caption(position=i, text=text) for i, text in enumerate(captions)]
    if "category" in given:
        record.category = change.category
    if "attributes" in given:
        record.attributes = list(change.attributes or [])
    if "meta" in given:
        record.meta = merged_meta(record.meta, change.meta or {})


def edit_image(ctx: ServiceContext, collection_id: int, image_id: int, change: ImagePatch) -> ImageRecord:
    captions = new_captions(change)
    with CollectionWriter(ctx, collection_id) as writer:
        record = get_image(writer.session, collection_id, image_id)
        apply(record, change, captions)
        writer.commit()
    with ctx.session() as session:
        return get_image(session, collection_id, image_id)


def edit_images(ctx: ServiceContext, collection_id: int, flt: ImageFilter, change: ImagePatch) -> list[int]:
    """Apply one change to every image the filter matches; the ids changed, ascending."""
    if filters.is_empty(flt):
        raise Invalid("empty_filter", "a bulk edit needs a filter (it would change every image)")
    captions = new_captions(change)
    with CollectionWriter(ctx, collection_id) as writer:
        writer.require_collection(collection_id)
        ids = [int(i) for i in filters.matching_ids(writer.session, collection_id, flt)]
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            for record in writer.session.scalars(
                    select(ImageRecord).options(selectinload(ImageRecord.captions)).where(ImageRecord.id.in_(chunk))):
                apply(record, change, captions)
        writer.commit()
    return ids

"""Collections and their images: lookups and deletions that keep files, rows and indexes in step."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from service.context import ServiceContext
from service.errors import Conflict, Gone, not_found
from service.models import Collection, FeedbackRecord, ImageRecord
from service.unit_of_work import CollectionWriter


def get_collection(session: Session, collection_id: int) -> Collection:
    collection = session.get(Collection, collection_id)
    if collection is None:
        raise not_found("collection", collection_id)
    return collection


def load_collection(ctx: ServiceContext, collection_id: int) -> tuple[Collection, int]:
    """The collection and its image count."""
    with ctx.session() as session:
        return get_collection(session, collection_id), image_count(session, collection_id)


def load_collection_by_name(ctx: ServiceContext, name: str, visible: Callable[[int], bool]) -> tuple[Collection, int]:
    """The collection of that exact name and its image count; one the caller may not see is as absent."""
    with ctx.session() as session:
        found = session.scalar(select(Collection).where(Collection.name == name))
        if found is None or not visible(found.id):
            raise not_found("collection", repr(name))
        return found, image_count(session, found.id)


def find_collection(session: Session, id_or_name: str) -> Collection:
    """By numeric id or by name (the CLI accepts either)."""
    if id_or_name.isdigit():
        found = session.get(Collection, int(id_or_name))
        if found is not None:
            return found
    found = session.scalar(select(Collection).where(Collection.name == id_or_name))
    if found is None:
        raise not_found("collection", id_or_name)
    return found


def create_collection(ctx: ServiceContext, name: str, description: str | None) -> Collection:
    with ctx.session() as session:
        if session.scalar(select(Collection.id).where(Collection.name == name)) is not None:
            raise Conflict("duplicate_name", f"a collection named {name!r} already exists")
        collection = Collection(name=name, description=description)
        session.add(collection)
        try:
            session.commit()
        except IntegrityError as exc:  # a concurrent create won the race
            session.rollback()
            raise Conflict("duplicate_name", f"a collection named {name!r} already exists") from exc
        return collection


def list_collections(ctx: ServiceContext) -> list[tuple[Collection, int]]:
    """Every collection with its image count, oldest first."""
    with ctx.session() as session:
        collections = list(session.scalars(select(Collection).order_by(Collection.id)))
        return [(c, image_count(session, c.id)) for c in collections]


def totals(ctx: ServiceContext) -> tuple[int, int]:
    """(collections, images) in the whole service."""
    with ctx.session() as session:
        collections = session.scalar(select(func.count(Collection.id))) or 0
        images = session.scalar(select(func.count(ImageRecord.id))) or 0
    return collections, images


def list_images(ctx: ServiceContext, collection_id: int, offset: int, limit: int) -> tuple[int, list[ImageRecord]]:
    """(total, one page of images in id order, captions loaded)."""
    with ctx.session() as session:
        total = image_count(session, collection_id)
        records = session.scalars(
            select(ImageRecord).options(selectinload(ImageRecord.captions))
            .where(ImageRecord.collection_id == collection_id)
            .order_by(ImageRecord.id).offset(offset).limit(limit)
        ).all()
    return total, list(records)


def load_image(ctx: ServiceContext, collection_id: int, image_id: int) -> ImageRecord:
    with ctx.session() as session:
        return get_image(session, collection_id, image_id)


def stored_file(ctx: ServiceContext, collection_id: int, image_id: int) -> tuple[ImageRecord, Path]:
    """An image's row and the path of its file (Gone if the file was lost from storage)."""
    record = load_image(ctx, collection_id, image_id)
    path = ctx.store.path(collection_id, record.sha256)
    if not path.exists():
        raise Gone("file_missing", f"the file of image {image_id} is missing from storage")
    return record, path


def image_count(session: Session, collection_id: int) -> int:
    return session.scalar(select(func.count(ImageRecord.id)).where(ImageRecord.collection_id == collection_id)) or 0


def get_image(session: Session, collection_id: int, image_id: int) -> ImageRecord:
    record = session.scalar(
        select(ImageRecord).options(selectinload(ImageRecord.captions))
        .where(ImageRecord.id == image_id, ImageRecord.collection_id == collection_id)
    )
    if record is None:
        raise not_found("image", image_id)
    return record


def delete_collection(ctx: ServiceContext, collection_id: int) -> None:
    if ctx.jobs is not None:
        ctx.jobs.cancel_collection(collection_id)
    with CollectionWriter(ctx, collection_id) as writer:
        writer.session.delete(get_collection(writer.session, collection_id))
        writer.after_commit(lambda: ctx.indexes.drop(collection_id))
        writer.after_commit(lambda: ctx.adapters.forget(collection_id))
        writer.after_commit(lambda: ctx.store.delete_collection(collection_id))
        writer.commit()


def delete_image(ctx: ServiceContext, collection_id: int, image_id: int) -> None:
    with CollectionWriter(ctx, collection_id) as writer:
        record = get_image(writer.session, collection_id, image_id)
        sha = record.sha256
        # Its marks go with it, and so do the marks whose query was this image ("more like this").
        writer.session.execute(delete(FeedbackRecord).where(or_(FeedbackRecord.image_id == image_id,
                                                                FeedbackRecord.query_image_id == image_id)))
        writer.session.delete(record)
        removed = np.array([image_id], dtype=np.int64)
        for space in ctx.served_spaces(collection_id):
            writer.after_commit(partial(ctx.indexes.remove, collection_id, space, removed))
        writer.after_commit(lambda: ctx.store.delete(collection_id, sha))
        writer.commit()

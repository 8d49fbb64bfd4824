"""Adding images to a collection: validate, de-duplicate, encode, store file + rows + vectors.

Every item is decoded and checked first (rejections are per item). The rest is one unit of work
(``service.unit_of_work``): new images are encoded for every served space while their files are
written (staged, removed if the unit fails); rows, captions and embeddings are committed in one
transaction; then the indexes get the vectors (rebuilt from the committed vectors if that fails).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from service.context import ServiceContext, vector_bytes
from service.imaging import DecodedImage, ImageRejected, decode_image
from service.models import Caption, Embedding, ImageRecord
from service.unit_of_work import CollectionWriter

log = logging.getLogger(__name__)

MAX_CAPTIONS = 64
MAX_CAPTION_CHARS = 2000
FILE_WRITERS = 4


@dataclass
class IngestItem:
    filename: str
    data: bytes
    captions: list[str] = field(default_factory=list)
    category: str | None = None
    attributes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    error: str | None = None  # set by a reader that already knows the item is unusable


@dataclass
class Accepted:
    index: int  # position in the request
    id: int
    filename: str
    sha256: str
    duplicate: bool  # the same bytes were already stored (or came twice): no new image


@dataclass
class Rejected:
    index: int
    filename: str
    reason: str


@dataclass
class IngestResult:
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def clean_captions(captions: list[str]) -> list[str]:
    out: list[str] = []
    for text in captions:
        text = " ".join(str(text).split())
        if not text:
            continue
        if len(text) > MAX_CAPTION_CHARS:
            raise ImageRejected(f"caption longer than {MAX_CAPTION_CHARS} characters")
        if text not in out:
            out.append(text)
    if len(out) > MAX_CAPTIONS:
        raise ImageRejected(f"more than {MAX_CAPTIONS} captions")
    return out


def update_metadata(target: ImageRecord, item: IngestItem) -> None:
    """A duplicate upload's metadata: captions and attributes not there yet are added, a category sent
    replaces the stored one, meta keys sent replace theirs (the others stay)."""
    have = set(target.caption_texts)
    for text in item.captions:
        if text not in have:
            target.captions.append(Caption(position=len(target.captions), text=text))
            have.add(text)
    if item.category is not None:
        target.category = item.category
    if item.attributes:
        target.attributes = list(dict.fromkeys([*(target.attributes or []), *item.attributes]))
    if item.meta:
        target.meta = {**(target.meta or {}), **item.meta}


def ingest(ctx: ServiceContext, collection_id: int, items: list[IngestItem],
           before_commit: Callable[[Session, IngestResult], None] | None = None) -> IngestResult:
    """Store the usable items. ``before_commit`` writes its own rows in the same transaction, seeing the
    result (an import job records what became of its files, so a restart neither repeats nor skips
    any); it is not called when no item was usable, as nothing is written then."""
    settings = ctx.settings
    result = IngestResult()
    valid: list[tuple[int, IngestItem, DecodedImage]] = []
    for position, item in enumerate(items):
        try:
            if item.error:
                raise ImageRejected(item.error)
            item.captions = clean_captions(item.captions)
            decoded = decode_image(item.data, settings.max_upload_bytes, settings.max_image_pixels)
        except ImageRejected as exc:
            result.rejected.append(Rejected(index=position, filename=item.filename, reason=str(exc)))
            continue
        valid.append((position, item, decoded))
    if not valid:
        result.rejected.sort(key=lambda r: r.index)
        return result

    with CollectionWriter(ctx, collection_id) as writer:
        session = writer.session
        writer.require_collection(collection_id)  # it may have been deleted while this upload was read
        existing = {
            rec.sha256: rec
            for rec in session.scalars(
                select(ImageRecord)
                .options(selectinload(ImageRecord.captions))
                .where(ImageRecord.collection_id == collection_id,
                       ImageRecord.sha256.in_({d.sha256 for _, _, d in valid}))
            )
        }
        new: dict[str, tuple[int, IngestItem, DecodedImage]] = {}
        duplicates: list[tuple[int, IngestItem, DecodedImage]] = []
        for entry in valid:
            sha = entry[2].sha256
            if sha in existing or sha in new:
                duplicates.append(entry)
            else:
                new[sha] = entry

        spaces = ctx.served_spaces(collection_id)
        pending = list(new.values())
        to_write = [(d.sha256, item.data) for _, item, d in pending
                    if not ctx.store.path(collection_id, d.sha256).exists()]
        for sha, _ in to_write:
            writer.stage(partial(ctx.store.delete, collection_id, sha))
        # Durable file writes wait on the disk (fsync), encoding on the CPU: overlap the two. Leaving
        # the pool waits for every write, so a failed unit never removes a file still being written.
        with ThreadPoolExecutor(max_workers=FILE_WRITERS, thread_name_prefix="ingest-write") as pool:
            writes = [pool.submit(ctx.store.put, collection_id, sha, data) for sha, data in to_write]
            vectors = {
                space: ctx.encoder(collection_id, space).encode_images([d.image for _, _, d in pending])
                for space in spaces
            } if pending else {}
            for write in writes:
                write.result()
        records = []
        for row, (_, item, decoded) in enumerate(pending):
            record = ImageRecord(
                collection_id=collection_id, sha256=decoded.sha256, filename=item.filename[:500],
                content_type=decoded.content_type, width=decoded.width, height=decoded.height,
                size_bytes=decoded.size_bytes, captured_at=decoded.captured_at, category=item.category, attributes=item.attributes,
                meta=item.meta,
                captions=[Caption(position=i, text=t) for i, t in enumerate(item.captions)],
            )
            record.embeddings = [
                Embedding(collection_id=collection_id, space=space, vector=vector_bytes(vectors[space][row]))
                for space in spaces
            ]
            session.add(record)
            records.append(record)
        # The same image again: keep one copy and update what the new metadata says (update_metadata).
        merged_into: dict[str, ImageRecord] = {**existing, **{r.sha256: r for r in records}}
        for _, item, decoded in duplicates:
            update_metadata(merged_into[decoded.sha256], item)
        session.flush()  # gives the new rows their ids
        ids = np.array([r.id for r in records], dtype=np.int64)
        if len(ids):
            for space in spaces:
                # If adding fails, the committed vectors rebuild the index.
                writer.after_commit(partial(ctx.indexes.add, collection_id, space, ids, vectors[space]),
                                    repair=partial(ctx.indexes.rebuild, collection_id, space))
        duplicate_positions = {position for position, _, _ in duplicates}
        for position, item, decoded in valid:
            record = merged_into[decoded.sha256]
            result.accepted.append(Accepted(index=position, id=record.id, filename=item.filename,
                                            sha256=decoded.sha256, duplicate=position in duplicate_positions))
        result.accepted.sort(key=lambda a: a.index)
        result.rejected.sort(key=lambda r: r.index)
        if before_commit is not None:
            before_commit(session, result)
        writer.commit()
    return result


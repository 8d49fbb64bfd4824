"""The adapter versions of a collection: register (from a job or an upload), activate, delete, resolve.

A version with visual prompts has its own image index ("v<N>"): every image of the collection is
re-encoded with its prompts, and the vectors are committed together with the version's row, so a
version is either whole or absent. Activation is one transaction that flips the active flag; a
search reads which version is active once, then uses only objects it holds, so a swap (or a delete)
never breaks a search already running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete as sql_delete
from sqlalchemy import select, update

from adapters.prompted import PromptedCLIP
from adapters.train import TrainingCancelled
from service.adapter_upload import check_adapter_upload
from service.context import ServiceContext, vector_bytes
from service.encoders import Encoder
from service.errors import Conflict, Invalid, NotFound, not_found
from service.models import AdapterVersion, Collection, Embedding, ImageRecord
from service.unit_of_work import CollectionWriter
from service.vocabulary import ACTIVE, ZERO_SHOT, Method, parse_version, version_space

log = logging.getLogger(__name__)

@dataclass
class Resolved:
    name: str  # what the search response reports: "none" or "v<N>"
    space: str  # the image index that answers
    encoder: Encoder  # encodes the query text
    version: int | None = None


def get_version(session, collection_id: int, version: int) -> AdapterVersion:
    row = session.scalar(select(AdapterVersion).where(
        AdapterVersion.collection_id == collection_id, AdapterVersion.version == version))
    if row is None:
        raise NotFound("adapter_not_found",
                       f"adapter {version_space(version)} not found for collection {collection_id}")
    return row


def list_versions(ctx: ServiceContext, collection_id: int) -> list[AdapterVersion]:
    with ctx.session() as session:
        return list(session.scalars(select(AdapterVersion).where(AdapterVersion.collection_id == collection_id)
                                    .order_by(AdapterVersion.version)))


def load_version(ctx: ServiceContext, collection_id: int, version: int) -> AdapterVersion:
    with ctx.session() as session:
        return get_version(session, collection_id, version)


def resolve(ctx: ServiceContext, collection_id: int, selector: str) -> Resolved:
    """'active' | 'none' | '<N>' | 'v<N>' -> who answers a search."""
    if selector == ZERO_SHOT:
        return Resolved(ZERO_SHOT, ZERO_SHOT, ctx.zero_shot)
    with ctx.session() as session:
        if selector == ACTIVE:
            row = session.scalar(select(AdapterVersion).where(
                AdapterVersion.collection_id == collection_id, AdapterVersion.active.is_(True)))
            if row is None:
                return Resolved(ZERO_SHOT, ZERO_SHOT, ctx.zero_shot)
        else:
            version = parse_version(selector)
            if version is None:
                raise Invalid("bad_adapter", f"adapter must be '{ACTIVE}', '{ZERO_SHOT}' or a version, not {selector!r}")
            row = get_version(session, collection_id, version)
    try:
        encoder = ctx.adapters.encoder(collection_id, row.version, row.space)
    except FileNotFoundError as exc:  # deleted between the row read above and the file read
        raise NotFound("adapter_not_found",
                       f"adapter {version_space(row.version)} of collection {collection_id} was deleted") from exc
    return Resolved(version_space(row.version), row.space, encoder, row.version)


def next_version(session, collection_id: int) -> int:
    """Issue the collection's next version number (in the caller's transaction; never reused)."""
    session.execute(update(Collection).where(Collection.id == collection_id)
                    .values(adapter_versions_issued=Collection.adapter_versions_issued + 1))
    issued = session.scalar(select(Collection.adapter_versions_issued).where(Collection.id == collection_id))
    if issued is None:
        raise not_found("collection", collection_id)
    return issued


def encode_images(ctx: ServiceContext, collection_id: int, prompted: PromptedCLIP,
                  image_ids: list[int] | None = None, should_cancel=None) -> tuple[np.ndarray, np.ndarray]:
    """Images of the collection (all, or ``image_ids``) through the adapter's image side: (ids, vectors)."""
    encoder = ctx.adapters.encoder_for(prompted, "pending")
    query = select(ImageRecord.id, ImageRecord.sha256).where(ImageRecord.collection_id == collection_id)
    if image_ids is not None:
        query = query.where(ImageRecord.id.in_(image_ids))
    with ctx.session() as session:
        rows = session.execute(query.order_by(ImageRecord.id)).all()
    ids: list[int] = []
    chunks: list[np.ndarray] = []
    step = ctx.settings.batch_size * 4
    for start in range(0, len(rows), step):
        if should_cancel is not None and should_cancel():
            raise TrainingCancelled("cancelled while indexing")
        batch = []
        for image_id, sha in rows[start : start + step]:
            try:
                batch.append((image_id, ctx.store.open_rgb(collection_id, sha)))
            except FileNotFoundError:  # deleted meanwhile: simply not in the new index
                continue
        if batch:
            chunks.append(encoder.encode_images([image for _, image in batch]))
            ids.extend(image_id for image_id, _ in batch)
    dim = ctx.backbone.identity.embed_dim
    return np.array(ids, dtype=np.int64), (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32))


def register(ctx: ServiceContext, collection_id: int, prompted: PromptedCLIP, blob: bytes, *, method: str,
             job_id: int | None, metrics: dict, report: dict, should_cancel=None) -> AdapterVersion:
    """Store a new, inactive version: file, row and (for visual prompts) vectors; then its index."""
    has_visual = bool(prompted.visual_layers)
    if has_visual:
        ids, vectors = encode_images(ctx, collection_id, prompted, should_cancel=should_cancel)
    with CollectionWriter(ctx, collection_id) as writer:
        session = writer.session
        version = next_version(session, collection_id)
        row = AdapterVersion(
            collection_id=collection_id, version=version, job_id=job_id, method=method,
            has_visual=has_visual, file_sha256="", size_bytes=len(blob),
            param_count=prompted.num_parameters(), metrics=metrics, report=report, active=False,
        )
        if has_visual:
            # Images that arrived while we were encoding are picked up below, under the lock.
            current = set(session.scalars(select(ImageRecord.id)
                                          .where(ImageRecord.collection_id == collection_id)))
            keep = np.array([int(i) in current for i in ids], dtype=bool)
            ids, vectors = ids[keep], vectors[keep]
            missing = sorted(current - {int(i) for i in ids})
            if missing:
                late_ids, late_vectors = encode_images(ctx, collection_id, prompted, missing)
                ids, vectors = np.concatenate([ids, late_ids]), np.concatenate([vectors, late_vectors])
            session.add_all(Embedding(image_id=int(i), collection_id=collection_id, space=row.space,
                                      vector=vector_bytes(v)) for i, v in zip(ids, vectors, strict=True))
            writer.after_commit(lambda: ctx.indexes.rebuild(collection_id, row.space))
        if should_cancel is not None and should_cancel():
            # The last moment a cancel can still win: after this commit the version exists.
            raise TrainingCancelled("cancelled before the version was stored")
        writer.stage(lambda: ctx.adapters.delete(collection_id, version))
        row.file_sha256 = ctx.adapters.write(collection_id, version, blob)
        session.add(row)
        writer.commit()
    return row


def activate(ctx: ServiceContext, collection_id: int, version: int | None, note: str | None = None) -> None:
    """Make ``version`` the active one (None: back to zero-shot) in a single transaction."""
    with CollectionWriter(ctx, collection_id) as writer:
        row = None if version is None else get_version(writer.session, collection_id, version)
        writer.session.execute(update(AdapterVersion).where(AdapterVersion.collection_id == collection_id)
                               .values(active=False))
        if row is not None:
            row.active = True
            if note is not None:
                row.note = note
        writer.commit()
        if row is None:
            log.info("collection %s: activated adapter %s (note: %s)", collection_id, ZERO_SHOT, note or "none")
        else:
            log.info("collection %s: activated adapter %s (note: %s)", collection_id, version_space(row.version),
                     row.note or "none")


def delete(ctx: ServiceContext, collection_id: int, version: int, force: bool) -> None:
    with CollectionWriter(ctx, collection_id) as writer:
        row = get_version(writer.session, collection_id, version)
        if row.active and not force:
            raise Conflict("adapter_active", f"adapter {version_space(version)} is active; activate another "
                                             f"(or '{ZERO_SHOT}') first, or pass force=true")
        space = row.space
        writer.session.execute(sql_delete(Embedding).where(
            Embedding.collection_id == collection_id, Embedding.space == version_space(version)))
        writer.session.delete(row)
        # Searches that already resolved this version hold its encoder and index objects and finish.
        writer.after_commit(lambda: ctx.adapters.delete(collection_id, version))
        if space != ZERO_SHOT:
            writer.after_commit(lambda: ctx.indexes.drop(collection_id, space))
        writer.commit()


def register_upload(ctx: ServiceContext, collection_id: int, blob: bytes, filename: str | None,
                    activate_now: bool) -> AdapterVersion:
    """An uploaded artifact becomes a new version (its method read from the prompts it carries)."""
    prompted = check_adapter_upload(ctx, blob)
    method = Method.of(has_text=bool(prompted.config.text_tokens), has_visual=bool(prompted.visual_layers))
    row = register(ctx, collection_id, prompted, blob, method=method, job_id=None,
                   metrics={}, report={"source": "upload", "filename": filename})
    if activate_now:
        activate(ctx, collection_id, row.version, note="uploaded and activated by request")
        row.active = True
    return row

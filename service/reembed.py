"""Moving a data directory to another backbone: re-encode every stored image in one transaction.

Adapters are tied to the old backbone and cannot be carried over: their rows, files and image
spaces are dropped (start new tuning jobs afterwards). The backbone identity changes in the same commit, so a crash leaves the old state whole.
"""

from __future__ import annotations

from functools import partial

from sqlalchemy import delete, select
from tqdm import tqdm

from service.config import Settings
from service.context import ServiceContext, vector_bytes
from service.models import AdapterVersion, BackboneState, Collection, Embedding, ImageRecord
from service.unit_of_work import CollectionWriter
from service.vocabulary import ZERO_SHOT


def reembed_all(settings: Settings) -> int:
    ctx = ServiceContext(settings, check_identity=False)
    count = 0
    with ctx.session() as session:
        collection_ids = list(session.scalars(select(Collection.id)))
    with CollectionWriter(ctx, *collection_ids) as writer:
        session = writer.session
        dropped = session.execute(select(AdapterVersion.collection_id, AdapterVersion.version)).all()
        session.execute(delete(AdapterVersion))  # their prompts live in the old backbone's space
        session.execute(delete(Embedding))
        records = list(session.scalars(select(ImageRecord).order_by(ImageRecord.id)))
        chunk = settings.batch_size * 4
        for start in tqdm(range(0, len(records), chunk), desc="re-encoding", unit="batch"):
            batch = records[start : start + chunk]
            images = [ctx.store.open_rgb(r.collection_id, r.sha256) for r in batch]
            vectors = ctx.zero_shot.encode_images(images)
            for record, vector in zip(batch, vectors, strict=True):
                session.add(Embedding(image_id=record.id, collection_id=record.collection_id, space=ZERO_SHOT,
                                      vector=vector_bytes(vector)))
            count += len(batch)
        state = session.get(BackboneState, 1)
        if state is None:
            session.add(BackboneState(id=1, identity=ctx.backbone.identity.to_dict()))
        else:
            state.identity = ctx.backbone.identity.to_dict()
        # Index files are a cache of the stored vectors: removed before the commit, so that a crash on
        # either side of it never serves the old backbone's vectors (the next start rebuilds them).
        for cid in collection_ids:
            ctx.indexes.drop(cid)
            ctx.store.delete_collection_indexes(cid)
        # Adapter files go after the commit: a crash before it keeps the old state whole.
        for cid, version in dropped:
            writer.after_commit(partial(ctx.adapters.delete, cid, version))
        for cid in collection_ids:
            writer.after_commit(partial(ctx.indexes.rebuild, cid, ZERO_SHOT))
        writer.commit()
    ctx.close()
    return count

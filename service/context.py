"""Everything one running service holds: settings, backbone, database, files, indexes.

Built once (by the app's lifespan or a CLI command), shared by all requests. Start-up also repairs
what a crash may have left: temp files, files without rows, indexes that disagree with the rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters.backbone import Backbone, BackboneIdentity, load_backbone
from adapters.mixed_text import MixedTextEncoder, NotMixable
from service.adapter_store import AdapterStore
from service.batching import TextBatcher
from service.config import Settings
from service.db import make_engine, make_session_factory, migrate
from service.encoders import Encoder, ZeroShotEncoder
from service.errors import NotFound
from service.index import IndexRegistry
from service.models import AdapterVersion, BackboneState, Collection, Embedding, ImageRecord
from service.search_log import SearchLog
from service.storage import ImageStore
from service.vocabulary import ZERO_SHOT, space_version, version_space

if TYPE_CHECKING:
    from service.jobs import JobDispatcher

log = logging.getLogger(__name__)


class BackboneMismatch(RuntimeError):
    """The data directory was built with another backbone; mixing vector spaces is refused."""


def load_configured_backbone(settings: Settings) -> Backbone:
    return load_backbone(settings.backbone_model, settings.backbone_pretrained, settings.device, settings.precision)


def check_backbone_identity(session: Session, identity: BackboneIdentity) -> None:
    """Record the backbone on first start; refuse a different one afterwards.

    Replicas starting at once on a new database may all find no row and try to record it: one wins,
    and the others compare against the winner's row instead of failing on the duplicate key.
    """
    state = session.get(BackboneState, 1)
    if state is None:
        session.add(BackboneState(id=1, identity=identity.to_dict()))
        try:
            session.commit()
            return
        except IntegrityError:
            session.rollback()
            state = session.get(BackboneState, 1)
            assert state is not None  # the duplicate key says another replica recorded it
    stored = BackboneIdentity.from_dict(state.identity)
    differing = stored.mismatch(identity)
    if differing:
        raise BackboneMismatch(
            f"this data directory holds embeddings of backbone {stored.describe()}, but the service was "
            f"started with {identity.describe()} (differs in: {', '.join(differing)}). Start it with the "
            f"original backbone, or run `prompt-adapters reembed` to re-encode every image with the new one."
        )


def text_mixer(backbone: Backbone) -> MixedTextEncoder | None:
    """One text pass for queries of many adapters, where the text tower takes spliced prompts."""
    try:
        return MixedTextEncoder.for_backbone(backbone)
    except NotMixable:
        log.info("text queries of different adapters are encoded one adapter at a time: %s", backbone.source_note)
        return None


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


class ServiceContext:
    def __init__(self, settings: Settings, backbone: Backbone | None = None, *, check_identity: bool = True):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.backbone = backbone or load_configured_backbone(settings)
        log.info("backbone: %s on %s (%s)", self.backbone.source_note, self.backbone.device, self.backbone.precision)
        self.engine = make_engine(settings.resolved_database_url)
        migrate(self.engine)
        self.sessions = make_session_factory(self.engine)
        if check_identity:
            with self.sessions() as session:
                check_backbone_identity(session, self.backbone.identity)
        self.store = ImageStore(settings.collections_dir)
        self.indexes = IndexRegistry(
            settings.collections_dir,
            self.backbone.identity.embed_dim,
            self.load_embeddings,
            settings.ann_threshold,
            settings.ann_nprobe,
            settings.index_save_delay_s,
        )
        self.zero_shot = ZeroShotEncoder(self.backbone, settings.batch_size)
        self.adapters = AdapterStore(settings.collections_dir, self.backbone, settings.batch_size,
                                     settings.adapter_cache_size, settings.adapter_cache_bytes)
        self.text_batcher = TextBatcher(text_mixer(self.backbone))
        self.search_log = SearchLog(self.sessions)
        self.jobs: JobDispatcher | None = None  # a server has one; the CLI and a worker do not
        self._collection_locks: dict[int, threading.RLock] = defaultdict(threading.RLock)
        self._locks_guard = threading.Lock()
        # Scaled out: per collection, the index generation the in-memory indexes were synced at, and when.
        self._synced: dict[int, tuple[int, float]] = {}
        self._sync_locks: dict[int, threading.Lock] = defaultdict(threading.Lock)

    # --- sessions and locks -------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    @contextmanager
    def collection_lock(self, collection_id: int) -> Iterator[None]:
        """Serialises writers of one collection (ingest, delete, index swaps); readers do not wait."""
        with self._locks_guard:
            lock = self._collection_locks[collection_id]
        with lock:
            yield

    # --- spaces -------------------------------------------------------------------------------

    def served_spaces(self, collection_id: int) -> list[str]:
        """Spaces whose index must stay complete as images come and go: zero-shot and every
        adapter with visual prompts (a text-only adapter answers from the zero-shot index)."""
        with self.session() as session:
            versions = session.scalars(
                select(AdapterVersion.version)
                .where(AdapterVersion.collection_id == collection_id, AdapterVersion.has_visual.is_(True))
                .order_by(AdapterVersion.version)
            ).all()
        return [ZERO_SHOT, *(version_space(v) for v in versions)]

    def encoder(self, collection_id: int, space: str) -> Encoder:
        """The image encoder of a space (ingest uses it to keep every served index complete)."""
        if space == ZERO_SHOT:
            return self.zero_shot
        return self.adapters.encoder(collection_id, space_version(space), space)

    def embedding_ids(self, collection_id: int, space: str) -> np.ndarray:
        with self.session() as session:
            ids = session.scalars(select(Embedding.image_id).where(
                Embedding.collection_id == collection_id, Embedding.space == space)).all()
        return np.array(sorted(ids), dtype=np.int64)

    def load_vectors(self, collection_id: int, space: str, image_ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``image_ids`` in that order."""
        wanted = [int(i) for i in image_ids]
        with self.session() as session:
            rows = dict(session.execute(select(Embedding.image_id, Embedding.vector).where(
                Embedding.collection_id == collection_id, Embedding.space == space,
                Embedding.image_id.in_(wanted))).tuples().all())
        dim = self.backbone.identity.embed_dim
        return np.frombuffer(b"".join(rows[i] for i in wanted), dtype=np.float32).reshape(len(wanted), dim)

    def follow_other_writers(self, collection_id: int) -> None:
        """Scaled out: catch up with what other processes committed to this collection.

        Every unit of work raises the collection's ``index_generation``; when it differs from the one
        this process last synced at, its loaded indexes are brought to the stored ids (only the new
        vectors are read) and indexes of deleted versions are let go. The number is read at most every
        ``replica_sync_s`` seconds, which bounds how long another process's write goes unseen here.
        Read before the ids: a write landing in between raises it again, so it is caught next time.
        """
        if not self.settings.scale_out:
            return
        with self._locks_guard:
            sync_lock = self._sync_locks[collection_id]
        with sync_lock:
            seen = self._synced.get(collection_id)
            now = time.monotonic()
            if seen is not None and now - seen[1] < self.settings.replica_sync_s:
                return
            with self.session() as session:
                generation = session.scalar(select(Collection.index_generation)
                                            .where(Collection.id == collection_id))
            if generation is None:  # deleted by another process
                self.indexes.forget(collection_id)
                self.adapters.forget(collection_id)
                self._synced.pop(collection_id, None)
                return
            if seen is None or seen[0] != generation:
                served = self.served_spaces(collection_id)
                for space in self.indexes.loaded_spaces(collection_id):
                    if space not in served:  # a deleted version: never served again
                        self.indexes.drop(collection_id, space)
                        continue
                    added, removed = self.indexes.sync(
                        collection_id, space, self.embedding_ids(collection_id, space),
                        partial(self.load_vectors, collection_id, space))
                    if added or removed:
                        log.info("collection %s space %s: caught up with other processes (%d added, %d removed)",
                                 collection_id, space, added, removed)
            self._synced[collection_id] = (generation, now)

    def load_embeddings(self, collection_id: int, space: str) -> tuple[np.ndarray, np.ndarray]:
        dim = self.backbone.identity.embed_dim
        with self.session() as session:
            if space != ZERO_SHOT and session.scalar(select(AdapterVersion.id).where(
                    AdapterVersion.collection_id == collection_id, AdapterVersion.version == space_version(space),
                    AdapterVersion.has_visual.is_(True))) is None:
                # A search that resolved this version just before it was deleted: no index is rebuilt
                # (and written) for a space that no longer exists.
                raise NotFound("adapter_not_found", f"adapter {space} of collection {collection_id} was deleted")
            rows = session.execute(
                select(Embedding.image_id, Embedding.vector)
                .where(Embedding.collection_id == collection_id, Embedding.space == space)
                .order_by(Embedding.image_id)
            ).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vectors

    # --- start-up repair ----------------------------------------------------------------------

    def recover(self) -> None:
        """Bring files and indexes back in line with the database after an unclean stop.

        Scaled out, other processes may be writing into the shared data directory right now: their
        temp files and staged files (not yet committed) look exactly like a crash's leftovers, so only
        the indexes are checked then.
        """
        if self.settings.scale_out:
            with self.session() as session:
                collection_ids = list(session.scalars(select(Collection.id)))
            for cid in collection_ids:
                for space in self.served_spaces(cid):
                    self.indexes.get(cid, space)
            return
        removed_tmp = self.store.remove_temp_files()
        with self.session() as session:
            known = {c.id for c in session.scalars(select(Collection))}
            hashes_by_collection: dict[int, set[str]] = defaultdict(set)
            for cid, sha in session.execute(select(ImageRecord.collection_id, ImageRecord.sha256)):
                hashes_by_collection[cid].add(sha)
            versions_by_collection: dict[int, set[int]] = defaultdict(set)
            for cid, version in session.execute(select(AdapterVersion.collection_id, AdapterVersion.version)):
                versions_by_collection[cid].add(version)
        orphan_files = 0
        for cid in self.store.collection_ids_on_disk():
            if cid not in known:
                self.store.delete_collection(cid)  # a delete interrupted after its commit
                continue
            for sha in self.store.stored_hashes(cid) - hashes_by_collection[cid]:
                self.store.delete(cid, sha)  # an ingest interrupted before its commit
                orphan_files += 1
            for version in self.adapters.stored_versions(cid) - versions_by_collection[cid]:
                self.adapters.delete(cid, version)  # a tuning job interrupted before its commit
                self.indexes.drop(cid, version_space(version))
                orphan_files += 1
        for cid in known:
            for space in self.served_spaces(cid):
                self.indexes.get(cid, space)  # loads, or rebuilds from stored vectors if inconsistent
        if removed_tmp or orphan_files:
            log.warning("recovery removed %d temp files and %d orphan image files", removed_tmp, orphan_files)

    def close(self) -> None:
        self.indexes.close()
        self.engine.dispose()

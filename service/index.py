"""FAISS indexes: one per (collection, space), inner product over L2-normalised vectors, ids = image ids.

The database holds every embedding; an index file is a cache of it. Each file has a sidecar with
the count and a digest of its ids, so an index that disagrees with the database (a crash between
the commit and the save) is noticed at load and brought up to date from the stored vectors; a
missing or unreadable file is rebuilt from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from service.storage import atomic_write

log = logging.getLogger(__name__)

EmbeddingLoader = Callable[[int, str], tuple[np.ndarray, np.ndarray]]  # (collection, space) -> ids, vectors


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()


def ivf_list_count(n: int) -> int:
    # FAISS's guideline: about 4*sqrt(n) lists, and at least ~39 training points per list.
    return int(max(1, min(4 * math.sqrt(n), n // 39)))


class VectorIndex:
    """A FAISS index plus the knowledge of which ids it holds."""

    def __init__(self, index: faiss.Index, ids: np.ndarray):
        self.index = index
        self._ids = set(int(i) for i in ids)
        self.lock = threading.RLock()

    @property
    def kind(self) -> str:
        return "ivf" if isinstance(faiss.downcast_index(self._inner()), faiss.IndexIVF) else "flat"

    def _inner(self) -> faiss.Index:
        if isinstance(self.index, faiss.IndexIDMap2):
            return faiss.downcast_index(self.index.index)
        return self.index

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ids(self) -> np.ndarray:
        return np.fromiter(self._ids, dtype=np.int64, count=len(self._ids))

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray, ann_threshold: int, nprobe: int) -> VectorIndex:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(ids) >= ann_threshold:
            nlist = ivf_list_count(len(ids))
            quantizer = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.train(vectors)
            ivf.nprobe = min(nprobe, nlist)
            index: faiss.Index = ivf
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(ids):
            index.add_with_ids(vectors, ids)
        return cls(index, ids)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        with self.lock:
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            fresh = np.array([i not in self._ids for i in ids], dtype=bool)
            if not fresh.all():
                self.remove(ids[~fresh])  # an update replaces the old vector
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            self._ids.update(int(i) for i in ids)

    def remove(self, ids: np.ndarray) -> None:
        with self.lock:
            ids = np.asarray(ids, dtype=np.int64)
            if len(ids):
                self.index.remove_ids(faiss.IDSelectorBatch(ids))
                self._ids.difference_update(int(i) for i in ids)

    def search(self, queries: np.ndarray, k: int, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids, shape (len(queries), min(k, size)); best first; only ids in ``among`` when given."""
        with self.lock:
            k = min(k, self.size if among is None else len(among))
            if k == 0:
                empty = np.zeros((len(queries), 0))
                return empty.astype(np.float32), empty.astype(np.int64)
            params: faiss.SearchParameters | None = None
            if among is not None:
                selector = faiss.IDSelectorBatch(np.ascontiguousarray(among, dtype=np.int64))  # kept alive here
                inner = self._inner()
                if isinstance(inner, faiss.IndexIVF):
                    ivf_params = faiss.SearchParametersIVF()
                    # Every list is probed: the few matching vectors may sit in lists a plain probe skips.
                    ivf_params.nprobe = inner.nlist
                    ivf_params.sel = selector
                    params = ivf_params
                else:
                    params = faiss.SearchParameters()
                    params.sel = selector
            scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
        # An IVF probe can find fewer than k neighbours; FAISS pads with id -1.
        return scores, ids

    def save(self, path: Path) -> None:
        with self.lock:
            data = faiss.serialize_index(self.index).tobytes()
            meta = {"count": self.size, "ids_sha256": ids_digest(self.ids), "kind": self.kind, "dim": self.dim}
        atomic_write(path, data)
        atomic_write(path.with_suffix(".json"), json.dumps(meta).encode())

    @classmethod
    def load(cls, path: Path, nprobe: int) -> VectorIndex | None:
        """The stored index with the ids it really holds, or None when the file is missing or unreadable."""
        if not path.exists():
            return None
        try:
            index = faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
        except (OSError, ValueError, RuntimeError):
            return None
        loaded = cls(index, stored_ids(index))
        inner = loaded._inner()
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = min(nprobe, inner.nlist)
        return loaded

    def matches(self, path: Path, expected_ids: np.ndarray) -> bool:
        """Whether this index and its sidecar hold exactly ``expected_ids``."""
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return False
        digest = ids_digest(expected_ids)
        return (meta.get("count") == self.size == len(expected_ids) and meta.get("ids_sha256") == digest
                and ids_digest(self.ids) == digest)


def stored_ids(index: faiss.Index) -> np.ndarray:
    """The ids an index file really holds (an IDMap's map, or an IVF's inverted lists)."""
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    assert lists is not None  # an IVF index always has its inverted lists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(ivf.nlist) if lists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


@dataclass
class IndexStatus:
    space: str
    kind: str
    size: int


class IndexRegistry:
    """All indexes of the process, loaded or rebuilt on first use.

    A change (add, remove) marks an index dirty; a background thread writes dirty indexes at most
    every ``save_delay_s`` seconds, and ``close`` writes the rest. Writing after every upload would
    rewrite the whole file each time (gigabytes for a million vectors); the database holds every
    vector, so a crash between two writes only costs a repair at the next start (the sidecar check).
    """

    def __init__(self, root: Path, dim: int, loader: EmbeddingLoader, ann_threshold: int, nprobe: int,
                 save_delay_s: float = 0.0):
        self.root = root
        self.dim = dim
        self.loader = loader
        self.ann_threshold = ann_threshold
        self.nprobe = nprobe
        self.save_delay_s = save_delay_s
        self._indexes: dict[tuple[int, str], VectorIndex] = {}
        self._dirty: set[tuple[int, str]] = set()
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._saver: threading.Thread | None = None
        if save_delay_s > 0:
            self._saver = threading.Thread(target=self._save_periodically, name="index-saver", daemon=True)
            self._saver.start()

    def path(self, collection_id: int, space: str) -> Path:
        return self.root / str(collection_id) / "indexes" / f"{space}.faiss"

    def get(self, collection_id: int, space: str) -> VectorIndex:
        key = (collection_id, space)
        with self._lock:
            if key not in self._indexes:
                self._indexes[key] = self._load_or_rebuild(collection_id, space)
            return self._indexes[key]

    def _load_or_rebuild(self, collection_id: int, space: str) -> VectorIndex:
        ids, vectors = self.loader(collection_id, space)
        path = self.path(collection_id, space)
        loaded = VectorIndex.load(path, self.nprobe)
        if loaded is not None and loaded.dim == self.dim:
            if loaded.matches(path, ids):
                return loaded
            # A file written before the last changes (a crash within the save delay): bring it up to
            # date from the stored vectors instead of retraining a large IVF from scratch.
            have = loaded.ids
            extra = np.setdiff1d(have, ids)
            missing = np.isin(ids, have, invert=True)
            loaded.remove(extra)
            if missing.any():
                loaded.add(ids[missing], vectors[missing])
            log.info("repaired index for collection %s space %s: %d added, %d removed",
                     collection_id, space, int(missing.sum()), len(extra))
            loaded.save(path)
            return loaded
        log.info("rebuilding index for collection %s space %s from %d stored vectors", collection_id, space, len(ids))
        return self.rebuild(collection_id, space, ids, vectors)

    def rebuild(self, collection_id: int, space: str, ids: np.ndarray | None = None,
                vectors: np.ndarray | None = None) -> VectorIndex:
        if ids is None or vectors is None:
            ids, vectors = self.loader(collection_id, space)
        index = VectorIndex.build(self.dim, ids, vectors, self.ann_threshold, self.nprobe)
        index.save(self.path(collection_id, space))
        with self._lock:
            self._indexes[(collection_id, space)] = index  # an atomic swap for concurrent searches
        return index

    def add(self, collection_id: int, space: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        index = self.get(collection_id, space)
        with index.lock:
            if index.kind == "flat" and index.size + len(ids) >= self.ann_threshold:
                # Crossing the threshold: switch to an approximate index built from every stored vector.
                self.rebuild(collection_id, space)
                return
            index.add(ids, vectors)
        self._changed(collection_id, space)

    def remove(self, collection_id: int, space: str, ids: np.ndarray) -> None:
        index = self.get(collection_id, space)
        with index.lock:
            index.remove(ids)
        self._changed(collection_id, space)

    def _changed(self, collection_id: int, space: str) -> None:
        if self._saver is None:
            self._save(collection_id, space)
        else:
            with self._lock:
                self._dirty.add((collection_id, space))

    def _save(self, collection_id: int, space: str) -> None:
        with self._lock:
            index = self._indexes.get((collection_id, space))
        if index is None:
            return
        path = self.path(collection_id, space)
        index.save(path)
        with self._lock:
            current = self._indexes.get((collection_id, space))
            if current is None:  # dropped while being written: what was written goes too
                for stale in (path, path.with_suffix(".json")):
                    stale.unlink(missing_ok=True)
        if current is not None and current is not index:
            self._changed(collection_id, space)  # swapped by a rebuild: its file may now hold the older one

    def flush(self) -> None:
        """Write every index changed since its last write."""
        for _ in range(3):  # a save that raced a swap marks its index dirty again
            with self._lock:
                dirty, self._dirty = self._dirty, set()
            if not dirty:
                return
            for collection_id, space in sorted(dirty):
                try:
                    self._save(collection_id, space)
                except Exception:  # the next start-up repairs it from the stored vectors
                    log.exception("could not write index %s/%s", collection_id, space)

    def _save_periodically(self) -> None:
        while not self._closing.wait(self.save_delay_s):
            self.flush()

    def close(self) -> None:
        self._closing.set()
        if self._saver is not None:
            self._saver.join(timeout=60)
        self.flush()

    def search(self, collection_id: int, space: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.get(collection_id, space).search(queries, k)

    def status(self, collection_id: int, spaces: list[str]) -> list[IndexStatus]:
        out = []
        for space in spaces:
            index = self.get(collection_id, space)
            out.append(IndexStatus(space=space, kind=index.kind, size=index.size))
        return out

    def loaded_spaces(self, collection_id: int) -> list[str]:
        with self._lock:
            return sorted(space for cid, space in self._indexes if cid == collection_id)

    def sync(self, collection_id: int, space: str, ids: np.ndarray,
             load_vectors: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int]:
        """Make a loaded index hold exactly ``ids`` (the rows, after other processes' writes):
        (added, removed). Only the missing vectors are read; an index not loaded is left to ``get``."""
        with self._lock:
            index = self._indexes.get((collection_id, space))
        if index is None:
            return 0, 0
        with index.lock:
            have = index.ids
            extra = np.setdiff1d(have, ids)
            missing = np.asarray(ids, dtype=np.int64)[np.isin(ids, have, invert=True)]
            index.remove(extra)
            if len(missing):
                index.add(missing, load_vectors(missing))
        # Not marked dirty: the process that wrote the rows writes its own copy of the file.
        return len(missing), len(extra)

    def forget_all(self) -> None:
        """Let go of every index in memory (a worker between jobs); call ``flush`` first."""
        with self._lock:
            self._indexes.clear()
            self._dirty.clear()

    def forget(self, collection_id: int) -> None:
        """Let go of a collection's indexes in memory (another process deleted it and its files)."""
        with self._lock:
            for key in [k for k in self._indexes if k[0] == collection_id]:
                del self._indexes[key]
            self._dirty = {k for k in self._dirty if k[0] != collection_id}

    def drop(self, collection_id: int, space: str | None = None) -> None:
        """Forget indexes of a collection (all spaces, or one) and delete their files."""
        with self._lock:
            for key in [k for k in self._indexes if k[0] == collection_id and (space is None or k[1] == space)]:
                del self._indexes[key]
            self._dirty = {k for k in self._dirty if not (k[0] == collection_id and (space is None or k[1] == space))}
        if space is not None:
            for path in (self.path(collection_id, space), self.path(collection_id, space).with_suffix(".json")):
                path.unlink(missing_ok=True)

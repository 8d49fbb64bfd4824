"""Adapter files of each collection, and a bounded cache of loaded adapters ready to encode.

Adapters are kilobytes: loading one is cheap, but a busy collection should not reload it on every
query, so loaded adapters live in an LRU keyed by (collection, version), bounded both in count and
in the bytes of their tensors (``adapter_cache_size``, ``adapter_cache_bytes``). A load reads a
file outside the cache's lock: searches of cached adapters (and loads of other adapters) never wait
for it, and concurrent first searches of one adapter load it once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapters.artifact import load_adapter
from adapters.backbone import Backbone
from adapters.features import preprocess_images
from adapters.prompted import PromptedCLIP
from service.storage import atomic_write
from service.vocabulary import is_version_space, space_version, version_space


class AdapterEncoder:
    """Backbone + one adapter's prompts, as an Encoder of the service."""

    def __init__(self, prompted: PromptedCLIP, backbone: Backbone, space: str, batch_size: int):
        self.prompted = prompted.eval()
        self.backbone = backbone
        self.space = space
        self.batch_size = batch_size
        self.nbytes = sum(t.numel() * t.element_size() for t in prompted.prompt_state_dict().values())

    @property
    def text_adapter(self) -> PromptedCLIP:
        """What a mixed-adapter text batch needs of this encoder (``service.batching``)."""
        return self.prompted

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = preprocess_images(self.backbone, images[start : start + self.batch_size]).to(self.backbone.device)
            out.append(self.prompted.encode_image(pixels, normalize=True).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.backbone.identity.embed_dim), np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = [self.prompted.encode_text(list(texts[s : s + 256]), normalize=True).float().cpu()
               for s in range(0, len(texts), 256)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.backbone.identity.embed_dim), np.float32)


class AdapterStore:
    def __init__(self, root: Path, backbone: Backbone, batch_size: int, cache_size: int,
                 cache_bytes: int = 256 * 2**20):
        self.root = root
        self.backbone = backbone
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, int], AdapterEncoder] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()  # the cache's bookkeeping only, never held during a load
        self._loading: dict[tuple[int, int], threading.Lock] = {}

    def path(self, collection_id: int, version: int) -> Path:
        return self.root / str(collection_id) / "adapters" / f"{version_space(version)}.safetensors"

    def write(self, collection_id: int, version: int, blob: bytes) -> str:
        atomic_write(self.path(collection_id, version), blob)
        return hashlib.sha256(blob).hexdigest()

    def encoder(self, collection_id: int, version: int, space: str) -> AdapterEncoder:
        key = (collection_id, version)
        with self._lock:
            cached = self._hit(key)
            if cached is not None:
                return cached
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # only the searches of this one adapter wait here
            try:
                with self._lock:
                    cached = self._hit(key)
                if cached is not None:
                    return cached
                prompted = load_adapter(self.path(collection_id, version), self.backbone)
                encoder = AdapterEncoder(prompted, self.backbone, space, self.batch_size)
                with self._lock:
                    self._cache[key] = encoder
                    self._cached_bytes += encoder.nbytes
                    self._evict()
                return encoder
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    def _hit(self, key: tuple[int, int]) -> AdapterEncoder | None:
        encoder = self._cache.get(key)
        if encoder is not None:
            self._cache.move_to_end(key)
        return encoder

    def _evict(self) -> None:
        """Least recently used first, down to both bounds (the newest stays even if alone over them)."""
        while len(self._cache) > 1 and (len(self._cache) > self.cache_size or self._cached_bytes > self.cache_bytes):
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.nbytes

    @property
    def cached(self) -> tuple[int, int]:
        """(adapters, bytes of their tensors) held in the cache now."""
        with self._lock:
            return len(self._cache), self._cached_bytes

    def encoder_for(self, prompted: PromptedCLIP, space: str) -> AdapterEncoder:
        """An encoder for prompts not yet stored (a job's fresh result)."""
        return AdapterEncoder(prompted, self.backbone, space, self.batch_size)

    def forget(self, collection_id: int, version: int | None = None) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == collection_id and version in (None, k[1])]:
                self._cached_bytes -= self._cache.pop(key).nbytes

    def delete(self, collection_id: int, version: int) -> None:
        self.forget(collection_id, version)
        self.path(collection_id, version).unlink(missing_ok=True)

    def stored_versions(self, collection_id: int) -> set[int]:
        folder = self.root / str(collection_id) / "adapters"
        if not folder.exists():
            return set()
        return {space_version(p.stem) for p in folder.glob("v*.safetensors") if is_version_space(p.stem)}

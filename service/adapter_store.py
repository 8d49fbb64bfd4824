"""Adapter files of each collection, and a bounded cache of loaded adapters ready to encode.

Adapters are kilobytes: loading one is cheap, but a busy collection should not reload it on every
query, so loaded adapters live in an LRU keyed by (collection, version).
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
    def __init__(self, root: Path, backbone: Backbone, batch_size: int, cache_size: int):
        self.root = root
        self.backbone = backbone
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int], AdapterEncoder] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, collection_id: int, version: int) -> Path:
        return self.root / str(collection_id) / "adapters" / f"{version_space(version)}.safetensors"

    def write(self, collection_id: int, version: int, blob: bytes) -> str:
        atomic_write(self.path(collection_id, version), blob)
        return hashlib.sha256(blob).hexdigest()

    def encoder(self, collection_id: int, version: int, space: str) -> AdapterEncoder:
        key = (collection_id, version)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        prompted = load_adapter(self.path(collection_id, version), self.backbone)
        encoder = AdapterEncoder(prompted, self.backbone, space, self.batch_size)
        with self._lock:
            self._cache[key] = encoder
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return encoder

    def encoder_for(self, prompted: PromptedCLIP, space: str) -> AdapterEncoder:
        """An encoder for prompts not yet stored (a job's fresh result)."""
        return AdapterEncoder(prompted, self.backbone, space, self.batch_size)

    def forget(self, collection_id: int, version: int | None = None) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == collection_id and version in (None, k[1])]:
                del self._cache[key]

    def delete(self, collection_id: int, version: int) -> None:
        self.forget(collection_id, version)
        self.path(collection_id, version).unlink(missing_ok=True)

    def stored_versions(self, collection_id: int) -> set[int]:
        folder = self.root / str(collection_id) / "adapters"
        if not folder.exists():
            return set()
        return {space_version(p.stem) for p in folder.glob("v*.safetensors") if is_version_space(p.stem)}

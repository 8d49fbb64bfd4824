"""Helpers the tests share: deterministic images and upload calls."""

from __future__ import annotations

import io
import json

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image


def png_bytes(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "PNG") -> bytes:
    """A distinct, deterministic image per seed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def upload(client: TestClient, collection_id: int, blobs: list[tuple[str, bytes]], metadata=None):
    files = [("files", (name, data, "application/octet-stream")) for name, data in blobs]
    data = {"metadata": json.dumps(metadata)} if metadata is not None else None
    return client.post(f"/collections/{collection_id}/images", files=files, data=data)

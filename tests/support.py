"""Helpers the tests share: the test backbone's name, deterministic images and adapters, upload calls."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.config import Settings

TEST_BACKBONE = "tiny-vit-test"  # the project's tiny model config (random init, offline)
COLOURS = ["red", "green", "blue", "yellow"]


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


SEARCH_CAPTIONS = ["a red square", "a dog on grass", "blue sky over the sea", "a small cat", "two green apples",
                   "a city at night", "a bowl of soup", "a yellow car"]


def upload_captioned(client: TestClient, collection_id: int, first_seed: int) -> tuple[list[int], list[bytes]]:
    """One image per SEARCH_CAPTIONS entry (seeds first_seed, first_seed + 1, ...): their ids and bytes."""
    blobs = [(f"{i}.png", png_bytes(first_seed + i)) for i in range(len(SEARCH_CAPTIONS))]
    response = upload(client, collection_id, blobs, [{"captions": [c]} for c in SEARCH_CAPTIONS])
    assert response.status_code == 200
    return [a["id"] for a in response.json()["accepted"]], [b for _, b in blobs]


def fill(client: TestClient, n: int = 24, name: str = "c") -> int:
    """A new collection of ``n`` distinct images, each with a caption naming its colour category."""
    cid = client.post("/collections", json={"name": name}).json()["id"]
    meta = [{"captions": [f"a {COLOURS[i % 4]} thing number {i}"], "category": COLOURS[i % 4]} for i in range(n)]
    response = upload(client, cid, [(f"{i}.png", png_bytes(i)) for i in range(n)], meta)
    assert response.status_code == 200, response.text
    return cid


def seed_database(settings: Settings, migrated_database: Path) -> None:
    """Give a data dir without a database a copy of the ``migrated_database`` fixture's file.

    Only where the settings use the default SQLite file in the data dir; any other URL is left alone.
    """
    target = settings.data_dir / "service.db"
    if settings.database_url is None and not target.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_database, target)


def adapter_blob(backbone) -> bytes:
    """An untrained adapter artifact with text and visual prompts, valid for ``backbone``."""
    from adapters.artifact import serialize_adapter
    from adapters.prompted import PromptConfig, PromptedCLIP

    return serialize_adapter(PromptedCLIP.from_backbone(backbone, PromptConfig(text_tokens=2, visual_tokens=2)))


@contextmanager
def fresh_postgres_database(server_url: str):
    """Create a throw-away database on a PostgreSQL server, yield its URL, drop it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"pas_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

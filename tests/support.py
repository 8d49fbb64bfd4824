"""Helpers the tests share: the test backbone's name, deterministic images and adapters, upload calls."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
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


def import_and_wait(client: TestClient, collection_id: int, body: dict, timeout: float = 60) -> dict:
    """Queue an import job (202) and poll it until it ends: the final job."""
    response = client.post(f"/collections/{collection_id}/images/import", json=body)
    assert response.status_code == 202, response.text
    job, deadline = response.json(), time.monotonic() + timeout
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"import job {job['id']} still {job['state']}"
        time.sleep(0.05)
        job = client.get(f"/jobs/{job['id']}").json()
    return job


def ids_by_filename(client: TestClient, collection_id: int) -> dict[str, int]:
    """File name (an import's path) -> image id, from the collection's listing."""
    items = client.get(f"/collections/{collection_id}/images?limit=1000").json()["items"]
    return {item["filename"]: item["id"] for item in items}


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


def as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; the distribution's `postgres` user does it then.
    if os.geteuid() == 0:
        return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(command)]
    return command


@contextmanager
def throwaway_postgres_server():
    """A PostgreSQL server of its own (initdb + pg_ctl, Unix socket only) for a test module: its URL.

    Skips the test when the server binaries are missing (`.ci/run` installs them).
    """
    import pytest

    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    # Not under pytest's tmp dir: that one is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="pas-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", 55000 + os.getpid() % 1000
    subprocess.run(as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]), check=True,
                   capture_output=True)
    subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                                f"'-k {root} -p {port} -c listen_addresses='", "start"]), check=True,
                   capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


CRASHED = 70  # the exit code of a child that died where its test asked


def crash_at(phase: str, nth: int = 1) -> None:
    """Make this process die (os._exit: no rollback, no clean-up) the ``nth`` time a unit of work
    reaches ``phase``."""
    from service import unit_of_work

    seen: list[str] = []

    def reached(name: str) -> None:
        seen.append(name)
        if name == phase and seen.count(phase) == nth:
            os._exit(CRASHED)

    unit_of_work.phase_reached = reached


def exit_code_of_child(work: Callable[[], int]) -> int:
    """Fork; the child runs ``work`` (its result is the exit code; an exception exits 1) and leaves by
    os._exit, so nothing is rolled back or cleaned up. Returns the child's exit code."""
    import torch

    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            torch.set_num_threads(1)  # no OpenMP pool inherited across the fork
            code = work()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

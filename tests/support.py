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
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.config import Settings

if TYPE_CHECKING:
    import torch

TEST_BACKBONE = "tiny-vit-test"  # the project's tiny model config (random init, offline)
# Where the suite's models live: the CPU, or "cuda" to run it on a GPU machine (in half precision there,
# as the service runs by default). CI has no GPU; bench/gpu_check.sh is the run that sets it.
TEST_DEVICE = os.environ.get("PAS_TEST_DEVICE", "cpu")
COLOURS = ["red", "green", "blue", "yellow"]
# A backbone in half precision (fp16 weights, as load_backbone gives on a GPU) rounds every activation to 11
# significant bits: a unit embedding, or a score, then differs from a float32 reference, or from the same
# numbers summed in another order (another batch, another kernel), by up to about 1e-3. Comparisons keep
# their own, tighter bound in float32 (on the CPU, in CI) and loosen to this one only in half precision.
HALF_PRECISION_TOLERANCE = 2e-3


def half_precision(model: Any) -> bool:
    """Whether ``model`` (a Backbone, a torch module or a dtype) computes in less than float32."""
    import torch

    dtype = model if isinstance(model, torch.dtype) else getattr(model, "dtype", None)
    if not isinstance(dtype, torch.dtype):  # a module: its weights' dtype
        dtype = next(model.parameters()).dtype
    return dtype in (torch.float16, torch.bfloat16)


def tolerance(model: Any, fp32: float) -> float:
    """The bound for comparing ``model``'s outputs: ``fp32`` where it computes in float32, never less than
    HALF_PRECISION_TOLERANCE in half precision (fp16 rounding; see there)."""
    return max(fp32, HALF_PRECISION_TOLERANCE) if half_precision(model) else fp32


def noise_like(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of ``tensor``'s shape, drawn on the CPU from ``generator`` (the same numbers
    whatever the device) and placed like ``tensor`` (its device and dtype)."""
    import torch

    return torch.randn(tensor.shape, generator=generator).to(tensor)


def perturb(module: torch.nn.Module, generator: torch.Generator, scale: float = 1.0) -> None:
    """Move every parameter of ``module`` off its initial value by ``scale`` times noise_like noise."""
    import torch

    with torch.no_grad():
        for param in module.parameters():
            param.add_(noise_like(param, generator) * scale)


def assert_same_ranking(got_ids: Sequence[int], got_scores: Sequence[float], ids: Sequence[int],
                        scores: Sequence[float], backbone: Any, atol: float, note: object = "") -> None:
    """Hits (ids and scores, best first) against the expected ones, for a search run on ``backbone``.

    In float32: exactly the expected ids in the expected order, scores within ``atol``. In half precision
    two images whose scores differ by less than its rounding may swap (at the cut of a top k too): the
    scores rank by rank within tolerance(backbone, atol), and every image in both lists scored alike.
    ``note`` goes into the failure's message.
    """
    if not half_precision(backbone):
        assert list(got_ids) == list(ids), note
        np.testing.assert_allclose(got_scores, scores, atol=atol, err_msg=str(note))
        return
    atol = tolerance(backbone, atol)
    assert len(got_ids) == len(ids), note
    np.testing.assert_allclose(got_scores, scores, atol=atol, err_msg=str(note))
    expected = dict(zip(ids, scores, strict=True))
    both = [(score, expected[image_id]) for image_id, score in zip(got_ids, got_scores, strict=True)
            if image_id in expected]
    np.testing.assert_allclose([g for g, _ in both], [e for _, e in both], atol=atol, err_msg=str(note))


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
    os._exit, so nothing is rolled back or cleaned up. Returns the child's exit code.

    Skips the test where the suite's models live on a GPU: CUDA does not survive a fork, and the crash
    these tests simulate is about the data directory, not the device."""
    import pytest
    import torch

    if TEST_DEVICE != "cpu":
        pytest.skip(f"forks a process that holds CUDA (PAS_TEST_DEVICE={TEST_DEVICE}); a forked child cannot use it")
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

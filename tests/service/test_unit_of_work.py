"""Crash safety of the unit of work, for every write path, in one place.

Each write path runs in a forked child that dies (os._exit: no rollback, no clean-up, no flush) at a
phase of the unit of work: after its files are staged but before the commit, or after the commit but
before the index and file changes. The service is then started again on that data directory (real
SQLite, real FAISS, start-up recovery) and must agree with itself: files match rows, indexes match
rows. The rows must equal the state before the write (died before the commit) or after the same write
run to its end (died after it).
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service import adapter_versions, collections, editing, feedback, unit_of_work
from service.config import Settings
from service.context import ServiceContext
from service.ingest import IngestItem, ingest
from service.models import AdapterVersion, BackboneState, Caption, Collection, Embedding, FeedbackRecord, ImageRecord
from service.reembed import reembed_all
from service.schemas import FeedbackQuery, FeedbackRequest, ImageFilter, ImagePatch
from tests.support import CRASHED, TEST_BACKBONE, adapter_blob, crash_at, exit_code_of_child, png_bytes, upload

PHASES = ["staged", "committed"]
COLLECTION, IMAGE, VERSION = 1, 1, 1  # as the prepared data directory numbers them


def write_paths(ctx: ServiceContext, blob: bytes):
    """Each of the ten write paths, as a thunk."""
    return {
        "ingest": lambda: ingest(ctx, COLLECTION, [IngestItem("new.png", png_bytes(500), captions=["new"])]),
        "delete_image": lambda: collections.delete_image(ctx, COLLECTION, IMAGE),
        "delete_collection": lambda: collections.delete_collection(ctx, COLLECTION),
        "register_adapter": lambda: adapter_versions.register_upload(ctx, COLLECTION, blob, "a.safetensors", False),
        "activate": lambda: adapter_versions.activate(ctx, COLLECTION, VERSION),
        "delete_adapter": lambda: adapter_versions.delete(ctx, COLLECTION, VERSION, force=True),
        "reembed": lambda: reembed_all(ctx.settings),
        "edit_image": lambda: editing.edit_image(ctx, COLLECTION, IMAGE, ImagePatch(caption="edited", category="e")),
        "edit_images": lambda: editing.edit_images(ctx, COLLECTION, ImageFilter(uploaded_from=datetime(2000, 1, 1)),
                                                   ImagePatch(captions=["bulk"], meta={"k": 1})),
        "feedback": lambda: feedback.give_feedback(ctx, COLLECTION, FeedbackRequest(
            query=FeedbackQuery(text="marked"), image_id=IMAGE, relevant=True)),
    }


PATHS = ["ingest", "delete_image", "delete_collection", "register_adapter", "activate", "delete_adapter", "reembed",
         "edit_image", "edit_images", "feedback"]


def crash_in_child(data_dir: Path, path: str, phase: str, backbone) -> int:
    """Fork; the child runs the write path and dies at ``phase``. Returns the child's exit code."""

    def work() -> int:
        crash_at(phase)
        ctx = ServiceContext(Settings(data_dir=data_dir, backbone_model=TEST_BACKBONE), backbone)
        write_paths(ctx, adapter_blob(backbone))[path]()
        return 0  # the phase was never reached

    return exit_code_of_child(work)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, start_app):
    """A data directory with one collection of captioned images and an inactive visual adapter v1."""
    data_dir = tmp_path_factory.mktemp("template") / "data"
    with start_app(data_dir) as client:
        cid = client.post("/collections", json={"name": "c"}).json()["id"]
        response = upload(client, cid, [(f"{i}.png", png_bytes(i)) for i in range(6)],
                          [{"captions": [f"caption {i}"]} for i in range(6)])
        assert response.status_code == 200
        # A mark on the image delete_image removes: it must go in the same unit of work.
        assert client.post(f"/collections/{cid}/feedback", json={"query": {"text": "kept"}, "image_id": IMAGE,
                                                                 "relevant": True}).status_code == 201
        blob = adapter_blob(client.app.state.context.backbone)
        response = client.post(f"/collections/{cid}/adapters", files={"file": ("a.safetensors", blob)})
        assert response.status_code == 201
    return data_dir


def rows(ctx) -> dict:
    with ctx.session() as session:
        return {
            "collections": sorted(session.scalars(select(Collection.id))),
            "images": sorted(session.execute(select(ImageRecord.id, ImageRecord.collection_id,
                                                    ImageRecord.sha256)).all()),
            "adapters": sorted(session.execute(select(AdapterVersion.collection_id, AdapterVersion.version,
                                                      AdapterVersion.active)).all()),
            "embeddings": sorted(session.execute(select(Embedding.space, func.count())
                                                 .group_by(Embedding.space)).all()),
            "backbone": session.scalar(select(BackboneState.identity)),
            "labels": sorted((i, c or "", json.dumps(m, sort_keys=True)) for i, c, m in session.execute(
                select(ImageRecord.id, ImageRecord.category, ImageRecord.meta))),
            "captions": sorted(session.execute(select(Caption.image_id, Caption.position, Caption.text)).all()),
            "feedback": sorted(session.execute(select(FeedbackRecord.image_id, FeedbackRecord.query_text,
                                                      FeedbackRecord.relevant)).all()),
        }


def assert_consistent(ctx, data_dir: Path) -> None:
    state = rows(ctx)
    on_disk = ctx.store.collection_ids_on_disk()
    assert on_disk <= set(state["collections"])
    assert not list(data_dir.glob("**/.tmp-*"))
    for cid in state["collections"]:
        shas = {sha for _, owner, sha in state["images"] if owner == cid}
        ids = sorted(image_id for image_id, owner, _ in state["images"] if owner == cid)
        versions = {version for owner, version, _ in state["adapters"] if owner == cid}
        assert ctx.store.stored_hashes(cid) == shas
        assert ctx.adapters.stored_versions(cid) == versions
        for space in ctx.served_spaces(cid):
            assert sorted(ctx.indexes.get(cid, space).ids.tolist()) == ids, space


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash is simulated in a forked child")
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("path", PATHS)
def test_a_crash_at_any_phase_leaves_a_consistent_state(prepared, tmp_path, start_app, tiny_backbone, path,
                                                         phase):
    crashed_dir, clean_dir = tmp_path / "crashed", tmp_path / "clean"
    shutil.copytree(prepared, crashed_dir)
    shutil.copytree(prepared, clean_dir)

    assert crash_in_child(crashed_dir, path, phase, tiny_backbone) == CRASHED

    # The expected rows: the untouched copy, or the same write run to its end on it.
    with start_app(clean_dir) as client:
        ctx = client.app.state.context
        if phase == "committed":
            write_paths(ctx, adapter_blob(ctx.backbone))[path]()
        expected = rows(ctx)

    with start_app(crashed_dir) as client:
        ctx = client.app.state.context
        assert rows(ctx) == expected
        assert_consistent(ctx, crashed_dir)


def test_a_failure_before_the_commit_removes_staged_files_and_rolls_back(client, collection, monkeypatch):
    """The in-process half: an exception (not a crash) before the commit undoes everything at once."""
    ctx = client.app.state.context
    cid = collection["id"]

    def fail(reached: str) -> None:
        if reached == "staged":
            raise RuntimeError("disk full")

    monkeypatch.setattr(unit_of_work, "phase_reached", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest(ctx, cid, [IngestItem("a.png", png_bytes(1), captions=["a"])])
    monkeypatch.undo()
    assert ctx.store.stored_hashes(cid) == set()
    assert client.get(f"/collections/{cid}/images").json()["total"] == 0
    assert ctx.indexes.get(cid, "none").size == 0
    # The lock was released: the next write goes through.
    assert len(ingest(ctx, cid, [IngestItem("a.png", png_bytes(1), captions=["a"])]).accepted) == 1

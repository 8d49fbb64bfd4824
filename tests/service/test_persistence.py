import logging

import pytest

from adapters.backbone import load_backbone
from service.context import BackboneMismatch
from tests.support import adapter_blob, fill, png_bytes, upload

QUERIES = ["a red square", "a dog", "the sea"]


def results(client, cid):
    body = client.post(f"/collections/{cid}/search", json={"query": QUERIES, "k": 5}).json()
    return [[(h["image_id"], round(h["score"], 6)) for h in row] for row in body["results"]]


def test_restart_gives_identical_results(make_client, tmp_path):
    first = make_client()
    cid = fill(first, n=12)
    before = results(first, cid)
    listing = first.get(f"/collections/{cid}/images").json()
    make_client.stop(first)

    second = make_client()
    assert results(second, cid) == before
    assert second.get(f"/collections/{cid}/images").json() == listing


@pytest.mark.parametrize("damage", ["delete", "stale"])
def test_damaged_index_is_rebuilt_from_stored_vectors(make_client, tmp_path, damage, caplog):
    first = make_client()
    cid = fill(first, n=12)
    before = results(first, cid)
    index_file = tmp_path / "data" / "collections" / str(cid) / "indexes" / "none.faiss"
    if damage == "stale":
        stale = index_file.read_bytes()  # an index saved before the last image arrived
        upload(first, cid, [("late.png", png_bytes(999))])
        before = results(first, cid)
        make_client.stop(first)
        index_file.write_bytes(stale)
    else:
        make_client.stop(first)
        index_file.unlink()

    # Rebuilding must not need the backbone to encode any image again.
    with caplog.at_level(logging.INFO, logger="service.index"):
        second = make_client()
    ctx = second.app.state.context
    assert results(second, cid) == before
    assert ctx.indexes.get(cid, "none").size == (13 if damage == "stale" else 12)
    # A stale file is brought up to date in place; only a missing one is built again from scratch.
    messages = [r.getMessage() for r in caplog.records]
    expected = "repaired index" if damage == "stale" else "rebuilding index"
    assert any(m.startswith(expected) and f"collection {cid} space none" in m for m in messages), messages


def test_orphan_files_and_temp_files_are_swept_at_start(make_client, tmp_path):
    first = make_client()
    cid = fill(first, n=2)
    make_client.stop(first)
    images_dir = tmp_path / "data" / "collections" / str(cid) / "images"
    orphan = images_dir / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    temp = images_dir / ".tmp-123"
    temp.write_bytes(b"half")
    ghost_collection = tmp_path / "data" / "collections" / "77"
    ghost_collection.mkdir()

    second = make_client()
    assert not orphan.exists()
    assert not temp.exists()
    assert not ghost_collection.exists()
    assert second.get(f"/collections/{cid}").json()["image_count"] == 2


@pytest.mark.slow
def test_other_backbone_on_same_data_dir_is_refused(make_client, tmp_path):
    first = make_client()
    fill(first, n=2)
    make_client.stop(first)
    other = load_backbone("miniworld-vit")  # random init: another vector space
    with pytest.raises(BackboneMismatch, match="reembed"):
        make_client(backbone=other)


@pytest.mark.slow
def test_reembed_moves_data_dir_to_new_backbone(make_client, tmp_path, database_url):
    from service.config import Settings
    from service.reembed import reembed_all

    first = make_client()
    cid = fill(first, n=3)
    make_client.stop(first)
    count = reembed_all(Settings(data_dir=tmp_path / "data", backbone_model="miniworld-vit",
                                 database_url=database_url))
    assert count == 3
    second = make_client(backbone=load_backbone("miniworld-vit"))
    assert second.get("/healthz").json()["backbone"]["embed_dim"] == 128
    assert len(second.post(f"/collections/{cid}/search", json={"query": "x", "k": 3}).json()["results"]) == 3


@pytest.mark.slow
def test_reembed_drops_the_old_backbones_adapters(make_client, tmp_path, database_url):
    from service.config import Settings
    from service.reembed import reembed_all

    first = make_client()
    cid = fill(first, n=3)
    blob = adapter_blob(first.app.state.context.backbone)
    uploaded = first.post(f"/collections/{cid}/adapters", files={"file": ("a.safetensors", blob)},
                          data={"activate": "true"})
    assert uploaded.status_code == 201, uploaded.text
    make_client.stop(first)
    reembed_all(Settings(data_dir=tmp_path / "data", backbone_model="miniworld-vit", database_url=database_url))
    assert not list((tmp_path / "data").rglob("*.safetensors"))
    assert not list((tmp_path / "data").rglob("v1.*"))

    second = make_client(backbone=load_backbone("miniworld-vit"))
    assert second.get(f"/collections/{cid}/adapters").json() == []
    found = second.post(f"/collections/{cid}/search", json={"query": "x", "k": 3}).json()
    assert found["adapter"] == "none"
    assert len(found["results"]) == 3
    added = upload(second, cid, [("new.png", png_bytes(99))])
    assert added.status_code == 200
    assert len(added.json()["accepted"]) == 1


def test_index_files_are_written_behind_uploads_and_at_shutdown(make_client, tmp_path, caplog):
    """An upload changes the index in memory at once; its file is rewritten later, not per upload."""
    import json
    import logging

    first = make_client(index_save_delay_s=3600)
    cid = fill(first, n=3)
    sidecar = tmp_path / "data" / "collections" / str(cid) / "indexes" / "none.json"
    written_before = json.loads(sidecar.read_text())["count"]
    assert upload(first, cid, [("late.png", png_bytes(500))]).status_code == 200
    assert first.get(f"/collections/{cid}").json()["indexes"][0]["size"] == 4  # searches see it now
    assert json.loads(sidecar.read_text())["count"] == written_before  # the file waits
    before = results(first, cid)
    make_client.stop(first)
    assert json.loads(sidecar.read_text())["count"] == 4  # written at shutdown

    with caplog.at_level(logging.INFO, logger="service.index"):
        second = make_client()
        assert results(second, cid) == before
    assert not [r for r in caplog.records if "rebuilding index" in r.getMessage()]  # loaded as written

import io
import struct
import zlib

import pytest
from PIL import Image
from sqlalchemy import func, select

from service.models import Caption, Embedding, ImageRecord
from tests.support import png_bytes, upload


def count_rows(client, table):
    with client.app.state.context.session() as session:
        return session.scalar(select(func.count()).select_from(table))


def stored_files(tmp_path):
    return sorted(p for p in (tmp_path / "data" / "collections").rglob("images/*/*") if p.is_file())


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A tiny PNG whose header claims a huge canvas (the decompression-bomb shape)."""
    raw = png_bytes(0, size=(8, 8))
    ihdr_at = raw.index(b"IHDR")
    fields = struct.pack(">II", width, height) + raw[ihdr_at + 12 : ihdr_at + 17]
    chunk = b"IHDR" + fields
    patched = raw[: ihdr_at] + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[ihdr_at + 21 :]
    return patched


def test_upload_with_metadata_and_duplicates(client, collection, tmp_path):
    cid = collection["id"]
    meta = [
        {"captions": ["a red apple", "fruit on a table"], "category": "fruit", "attributes": ["red"]},
        {"captions": ["a bicycle"], "meta": {"source": "phone"}},
        {"captions": ["the apple again, new caption"]},
    ]
    response = upload(client, cid, [("a.png", png_bytes(1)), ("b.jpg", png_bytes(2, fmt="JPEG")),
                                    ("a-copy.png", png_bytes(1))], meta)
    assert response.status_code == 200, response.text
    accepted = response.json()["accepted"]
    assert [a["duplicate"] for a in accepted] == [False, False, True]
    assert accepted[0]["id"] == accepted[2]["id"]
    assert len(stored_files(tmp_path)) == 2

    image = client.get(f"/collections/{cid}/images/{accepted[0]['id']}").json()
    assert image["captions"] == ["a red apple", "fruit on a table", "the apple again, new caption"]
    assert image["category"] == "fruit"
    assert image["attributes"] == ["red"]
    assert client.get(f"/collections/{cid}/images/{accepted[1]['id']}").json()["meta"] == {"source": "phone"}

    again = upload(client, cid, [("x.png", png_bytes(1))]).json()
    assert again["accepted"][0]["duplicate"]
    assert again["accepted"][0]["id"] == accepted[0]["id"]
    assert count_rows(client, ImageRecord) == 2
    assert count_rows(client, Embedding) == 2
    assert client.get(f"/collections/{cid}").json()["indexes"][0]["size"] == 2


def test_bad_files_are_rejected_per_item(make_client, tmp_path):
    client = make_client(max_upload_bytes=20_000, max_image_pixels=1_000_000)
    cid = client.post("/collections", json={"name": "c"}).json()["id"]
    good = png_bytes(5)
    truncated = good[: len(good) // 2]
    flat = io.BytesIO()
    Image.new("RGB", (1100, 1000), "navy").save(flat, format="GIF")
    many_pixels = flat.getvalue()  # 1.1 MP: over max_image_pixels, yet a small file
    huge = png_bytes(6, size=(120, 120))  # random pixels: incompressible, > 20 kB
    assert len(huge) > 20_000
    blobs = [("ok.png", good), ("text.png", b"hello, I am not an image"), ("empty.png", b""),
             ("truncated.png", truncated), ("bomb.png", bomb_png()), ("big.png", huge),
             ("many.gif", many_pixels)]
    response = upload(client, cid, blobs)
    assert response.status_code == 200
    body = response.json()
    assert [a["filename"] for a in body["accepted"]] == ["ok.png"]
    reasons = {r["filename"]: r["reason"] for r in body["rejected"]}
    assert "not a decodable image" in reasons["text.png"]
    assert reasons["empty.png"] == "empty file"
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    assert "over the limit" in reasons["bomb.png"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert "over the limit of 20000" in reasons["big.png"]
    assert "1100x1000 pixels, over the limit of 1000000" in reasons["many.gif"]
    assert count_rows(client, ImageRecord) == 1
    assert len(stored_files(tmp_path)) == 1


@pytest.mark.parametrize("metadata, code", [
    ('[{"captions": ["one"]}]', "metadata_mismatch"),
    ("not json", "bad_metadata"),
    ('[{"captions": "not a list"}, {}]', "bad_metadata"),
    ('[{"unknown": 1}, {}]', "bad_metadata"),
])
def test_bad_metadata_refuses_whole_upload(client, collection, tmp_path, metadata, code):
    files = [("files", ("a.png", png_bytes(1), "image/png")), ("files", ("b.png", png_bytes(2), "image/png"))]
    response = client.post(f"/collections/{collection['id']}/images", files=files, data={"metadata": metadata})
    assert response.status_code == 422
    assert response.json()["code"] == code
    assert count_rows(client, ImageRecord) == 0
    assert stored_files(tmp_path) == []


def test_upload_without_files_is_422(client, collection):
    response = client.post(f"/collections/{collection['id']}/images", data={"metadata": "[]"})
    assert response.status_code == 422


def test_too_many_files_and_body_too_large(make_client):
    client = make_client(max_files_per_upload=2, max_upload_bytes=1000, max_request_bytes=2_000_000)
    cid = client.post("/collections", json={"name": "c"}).json()["id"]
    too_many = upload(client, cid, [(f"{i}.png", b"x") for i in range(3)])
    assert too_many.status_code == 413
    assert too_many.json()["code"] == "too_many_files"
    big = upload(client, cid, [("a.png", b"\0" * 3_500_000)])
    assert big.status_code == 413
    assert big.json()["code"] == "body_too_large"


def test_failure_while_committing_leaves_no_orphan_file(client, collection, tmp_path, monkeypatch):
    from sqlalchemy.orm import Session

    def broken_commit(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Session, "commit", broken_commit)
    with pytest.raises(RuntimeError):
        upload(client, collection["id"], [("a.png", png_bytes(1)), ("b.png", png_bytes(2))])
    monkeypatch.undo()
    assert stored_files(tmp_path) == []
    assert count_rows(client, ImageRecord) == 0
    assert count_rows(client, Caption) == 0
    assert client.get(f"/collections/{collection['id']}").json()["indexes"][0]["size"] == 0


def test_failure_while_indexing_is_repaired_from_stored_vectors(client, collection, monkeypatch):
    from service.index import VectorIndex

    def broken_add(self, ids, vectors):
        raise RuntimeError("faiss exploded")

    monkeypatch.setattr(VectorIndex, "add", broken_add)
    response = upload(client, collection["id"], [("a.png", png_bytes(1)), ("b.png", png_bytes(2))])
    monkeypatch.undo()
    assert response.status_code == 200
    assert client.get(f"/collections/{collection['id']}").json()["indexes"][0]["size"] == 2
    hits = client.post(f"/collections/{collection['id']}/search", json={"query": "anything", "k": 5}).json()
    assert sorted(h["image_id"] for h in hits["results"]) == sorted(a["id"] for a in response.json()["accepted"])

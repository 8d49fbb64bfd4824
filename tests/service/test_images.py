import io
import json

from PIL import Image
from sqlalchemy import func, select

from service.models import Embedding, ImageRecord
from tests.support import ids_by_filename, import_and_wait, png_bytes, upload


def test_list_get_file_thumbnail(client, collection):
    cid = collection["id"]
    blobs = [(f"{i}.png", png_bytes(i, size=(300, 200))) for i in range(5)]
    accepted = upload(client, cid, blobs).json()["accepted"]
    page = client.get(f"/collections/{cid}/images", params={"offset": 1, "limit": 2}).json()
    assert page["total"] == 5
    assert [i["id"] for i in page["items"]] == [a["id"] for a in accepted[1:3]]

    image = client.get(f"/collections/{cid}/images/{accepted[0]['id']}").json()
    assert (image["width"], image["height"], image["content_type"]) == (300, 200, "image/png")
    original = client.get(image["url"])
    assert original.content == blobs[0][1]
    assert original.headers["content-type"] == "image/png"

    thumb = client.get(image["thumbnail_url"], params={"size": 64})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64


def test_bad_paging_and_unknown_image(client, collection):
    cid = collection["id"]
    assert client.get(f"/collections/{cid}/images", params={"limit": 0}).status_code == 422
    assert client.get(f"/collections/{cid}/images", params={"offset": -1}).status_code == 422
    for path in ("", "/file", "/thumbnail"):
        response = client.get(f"/collections/{cid}/images/424242{path}")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    assert client.delete(f"/collections/{cid}/images/424242").status_code == 404


def test_image_of_another_collection_is_404(client, collection):
    other = client.post("/collections", json={"name": "other"}).json()["id"]
    image_id = upload(client, other, [("a.png", png_bytes(1))]).json()["accepted"][0]["id"]
    assert client.get(f"/collections/{collection['id']}/images/{image_id}").status_code == 404


def test_delete_image_removes_file_rows_and_vectors(client, collection, tmp_path):
    cid = collection["id"]
    accepted = upload(client, cid, [("a.png", png_bytes(1)), ("b.png", png_bytes(2))],
                      [{"captions": ["first"]}, {"captions": ["second"]}]).json()["accepted"]
    gone = accepted[0]
    assert client.delete(f"/collections/{cid}/images/{gone['id']}").status_code == 204
    assert not list((tmp_path / "data").rglob(gone["sha256"]))
    with client.app.state.context.session() as session:
        assert session.scalar(select(func.count()).select_from(ImageRecord)) == 1
        assert session.scalar(select(func.count()).select_from(Embedding)) == 1
    hits = client.post(f"/collections/{cid}/search", json={"query": "first", "k": 10}).json()["results"]
    assert [h["image_id"] for h in hits] == [accepted[1]["id"]]
    assert client.get(f"/collections/{cid}").json()["indexes"][0]["size"] == 1
    # Uploading the same bytes again stores them anew.
    again = upload(client, cid, [("a.png", png_bytes(1))]).json()["accepted"][0]
    assert not again["duplicate"]


def test_import_from_manifest(make_client, tmp_path):
    root = tmp_path / "imports"
    (root / "pics").mkdir(parents=True)
    for i in range(3):
        (root / "pics" / f"{i}.png").write_bytes(png_bytes(i))
    (root / "pics" / "broken.png").write_bytes(b"garbage")
    (root / "m.jsonl").write_text("\n".join(json.dumps(e) for e in [
        {"path": "pics/0.png", "captions": ["zero", "nil"], "category": "num"},
        {"path": "pics/1.png", "caption": "one"},
        {"path": "pics/broken.png"},
        {"path": "pics/missing.png"},
    ]))
    (root / "m.csv").write_text("path,captions,category\npics/2.png,two|deux,num\n")
    client = make_client(import_root=root)
    cid = client.post("/collections", json={"name": "c"}).json()["id"]

    job = import_and_wait(client, cid, {"manifest": "m.jsonl"})
    assert (job["state"], job["progress"]["added"]) == ("succeeded", 2)
    assert sorted(ids_by_filename(client, cid)) == ["pics/0.png", "pics/1.png"]
    assert {f["path"]: f["reason"] for f in job["progress"]["failures"]}["pics/missing.png"] == "file not found"
    job = import_and_wait(client, cid, {"manifest": str(root / "m.csv")})
    image = client.get(f"/collections/{cid}/images/{ids_by_filename(client, cid)['pics/2.png']}").json()
    assert image["captions"] == ["two", "deux"]
    assert image["category"] == "num"


def test_import_outside_root_is_refused(make_client, tmp_path):
    root = tmp_path / "imports"
    root.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(9))
    (root / "escape.jsonl").write_text(json.dumps({"path": "../secret.png"}) + "\n")
    (root / "abs.jsonl").write_text(json.dumps({"path": str(secret)}) + "\n")
    (root / "link.png").symlink_to(secret)
    (root / "link.jsonl").write_text(json.dumps({"path": "link.png"}) + "\n")
    (tmp_path / "outside.jsonl").write_text(json.dumps({"path": "x.png"}) + "\n")
    client = make_client(import_root=root)
    cid = client.post("/collections", json={"name": "c"}).json()["id"]
    for manifest in ("escape.jsonl", "abs.jsonl", "link.jsonl", "../outside.jsonl", str(tmp_path / "outside.jsonl")):
        response = client.post(f"/collections/{cid}/images/import", json={"manifest": manifest})
        assert response.status_code == 403, manifest
        assert response.json()["code"] == "outside_import_root"
    assert client.get(f"/collections/{cid}").json()["image_count"] == 0

    bad = client.post(f"/collections/{cid}/images/import", json={"manifest": "nope.jsonl"})
    assert bad.status_code == 404
    (root / "bad.jsonl").write_text("{not json\n")
    assert client.post(f"/collections/{cid}/images/import", json={"manifest": "bad.jsonl"}).status_code == 422
    (root / "m.txt").write_text("x")
    assert client.post(f"/collections/{cid}/images/import", json={"manifest": "m.txt"}).status_code == 422


def test_import_disabled_without_root(client, collection):
    response = client.post(f"/collections/{collection['id']}/images/import", json={"manifest": "/etc/passwd"})
    assert response.status_code == 403
    assert response.json()["code"] == "import_disabled"


def test_a_file_lost_from_storage_is_410(client, collection):
    cid = collection["id"]
    image = upload(client, cid, [("a.png", png_bytes(1))]).json()["accepted"][0]
    client.app.state.context.store.path(cid, image["sha256"]).unlink()
    response = client.get(f"/collections/{cid}/images/{image['id']}/file")
    assert response.status_code == 410
    assert response.json()["code"] == "file_missing"

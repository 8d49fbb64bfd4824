from tests.support import png_bytes, upload


def test_create_list_get(client):
    created = client.post("/collections", json={"name": "shop", "description": "products"})
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "shop"
    assert body["image_count"] == 0
    assert body["indexes"] == [{"space": "none", "kind": "flat", "size": 0}]
    assert body["backbone"]["model_name"] == "tiny-vit-test"
    assert body["created_at"].endswith("Z") or "+00:00" in body["created_at"]

    listed = client.get("/collections").json()
    assert [c["name"] for c in listed] == ["shop"]
    assert client.get(f"/collections/{body['id']}").json()["id"] == body["id"]


def test_duplicate_name_is_409(client, collection):
    response = client.post("/collections", json={"name": "holiday"})
    assert response.status_code == 409
    assert response.json()["code"] == "duplicate_name"


def test_bad_bodies_are_422(client):
    for body in ({"name": ""}, {"name": "   "}, {}, {"name": "x" * 201}, {"name": "a", "extra": 1}):
        response = client.post("/collections", json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"]


def test_unknown_collection_is_404(client):
    for method, path in (("get", "/collections/999"), ("delete", "/collections/999"),
                         ("get", "/collections/999/images"), ("post", "/collections/999/search")):
        kwargs = {"json": {"query": "x"}} if method == "post" else {}
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"


def test_delete_collection_leaves_nothing(client, collection, tmp_path):
    cid = collection["id"]
    assert upload(client, cid, [("a.png", png_bytes(1)), ("b.png", png_bytes(2))]).status_code == 200
    collection_dir = tmp_path / "data" / "collections" / str(cid)
    assert any(collection_dir.rglob("*.faiss"))

    assert client.delete(f"/collections/{cid}").status_code == 204
    assert not collection_dir.exists()
    assert client.get(f"/collections/{cid}").status_code == 404
    ctx = client.app.state.context
    from sqlalchemy import func, select

    from service.models import Caption, Embedding, ImageRecord

    with ctx.session() as session:
        for table in (ImageRecord, Embedding, Caption):
            assert session.scalar(select(func.count()).select_from(table)) == 0
    # The name is free again.
    assert client.post("/collections", json={"name": "holiday"}).status_code == 201

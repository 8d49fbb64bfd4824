"""Every bad input gets a clear 4xx JSON error over real HTTP and changes nothing; no 500s."""

from __future__ import annotations

import json

import httpx
import pytest

from service.input_rules import public_error
from tests.service.live_server import live_server
from tests.support import import_and_wait, png_bytes, upload

HUGE = "99999999999999999999999"


@pytest.fixture
def filled(client, collection):
    cid = collection["id"]
    image = upload(client, cid, [("a.png", png_bytes(1))], [{"captions": ["a thing"]}]).json()["accepted"][0]["id"]
    return client, cid, image


@pytest.fixture(scope="module")
def shared(module_client):
    """``filled`` once for the module's tests that only read: (client, collection id, image id)."""
    cid = module_client.post("/collections", json={"name": "shared"}).json()["id"]
    image = upload(module_client, cid, [("a.png", png_bytes(1))], [{"captions": ["a thing"]}]).json()["accepted"][0]["id"]
    return module_client, cid, image


def clean_4xx(response, *statuses):
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["detail"], str)
    assert body["code"]
    assert "Traceback" not in body["detail"]
    assert "/tmp" not in body["detail"]
    assert "Error(" not in body["detail"]
    return body


@pytest.mark.parametrize("path", [
    f"/collections/{HUGE}", f"/collections/{HUGE}/images", "/collections/{cid}/images/" + HUGE,
    "/collections/{cid}/images/" + HUGE + "/file", "/collections/{cid}/images/" + HUGE + "/thumbnail",
    f"/jobs/{HUGE}", f"/jobs/{HUGE}/events", f"/collections/{HUGE}/tuning-jobs", f"/collections/{HUGE}/adapters",
    "/collections/{cid}/adapters/v" + HUGE, "/collections/{cid}/adapters/" + HUGE + "/file",
    "/collections/{cid}/adapters/v²", "/collections/{cid}/adapters/²",
    "/collections/{cid}/images?offset=" + "1" + "0" * 23, "/collections/-1", "/collections/1.5",
])
def test_out_of_range_ids_and_selectors(shared, path):
    client, cid, _ = shared
    clean_4xx(client.get(path.format(cid=cid)), 404, 422)


def test_out_of_range_ids_on_writes(filled):
    client, cid, image = filled
    clean_4xx(client.delete(f"/collections/{HUGE}"), 404, 422)
    clean_4xx(client.delete(f"/collections/{cid}/images/{HUGE}"), 404, 422)
    clean_4xx(client.post(f"/jobs/{HUGE}/cancel"), 404, 422)
    clean_4xx(client.post(f"/collections/{cid}/adapters/v²/activate"), 422)
    clean_4xx(client.delete(f"/collections/{cid}/adapters/v{HUGE}"), 404, 422)
    clean_4xx(client.post(f"/collections/{HUGE}/search", json={"query": "x"}), 404, 422)
    for adapter in ("v²", "²", "v" + HUGE, "٣", "x" * 10_000):
        clean_4xx(client.post(f"/collections/{cid}/search", json={"query": "x", "adapter": adapter}), 404, 422)
    clean_4xx(client.post(f"/collections/{cid}/search", json={"query": "x", "k": int(HUGE)}), 422)
    clean_4xx(client.post(f"/collections/{cid}/tuning-jobs", json={"seed": int(HUGE)}), 422)
    assert client.get(f"/collections/{cid}/images/{image}").status_code == 200


def test_deep_and_large_metadata_is_refused(filled):
    client, cid, _ = filled
    deep = "[" * 100_000 + "]" * 100_000
    nested_meta = json.dumps([{"meta": json.loads("{\"a\":" * 50 + "1" + "}" * 50)}])
    long_caption = json.dumps([{"captions": ["x" * 100_000]}])
    for metadata in (deep, nested_meta, long_caption, '[{"meta": {"x": NaN}}]'):
        response = client.post(f"/collections/{cid}/images", files=[("files", ("b.png", png_bytes(2)))],
                               data={"metadata": metadata})
        clean_4xx(response, 422)
    assert client.get(f"/collections/{cid}").json()["image_count"] == 1


def test_control_characters_and_invisible_queries(filled):
    client, cid, _ = filled
    for name in ("bad\x00name", "esc\x1b[31m", "line\u2028sep"):
        clean_4xx(client.post("/collections", json={"name": name}), 422)
    for filename in (b"evil\x00.png", b"bell\x07.png"):  # raw bytes: HTTP clients would percent-encode them
        body = (b"--xx\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + filename + b"\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + png_bytes(3) + b"\r\n--xx--\r\n")
        response = client.post(f"/collections/{cid}/images", content=body,
                               headers={"Content-Type": "multipart/form-data; boundary=xx"})
        assert clean_4xx(response, 422)["code"] == "bad_filename"
    for query in ("\u200b", " \u200b\u200c\ufeff ", ["ok", "\u2060"]):
        body = clean_4xx(client.post(f"/collections/{cid}/search", json={"query": query}), 422)
        assert body["code"] == "empty_query"
    assert client.post(f"/collections/{cid}/search", json={"query": "a\u200bthing"}).status_code == 200
    assert [c["name"] for c in client.get("/collections").json()] == ["holiday"]
    assert client.get(f"/collections/{cid}").json()["image_count"] == 1


def test_unreadable_import_manifests(make_client, tmp_path):
    root = tmp_path / "imports"
    root.mkdir()
    (root / "binary.jsonl").write_bytes(b"\xff\xfe\x00 not utf-8")
    (root / "long.jsonl").write_text('{"path": "' + "y" * 300 + '.png"}\n')
    client = make_client(import_root=root)
    cid = client.post("/collections", json={"name": "c"}).json()["id"]
    for manifest in ("a" * 1000 + ".jsonl", "binary.jsonl", "x" * 5000):
        body = clean_4xx(client.post(f"/collections/{cid}/images/import", json={"manifest": manifest}), 422)
        assert str(root) not in body["detail"]
    # A path the OS refuses fails that file (files are read by the import job), with a clean reason.
    job = import_and_wait(client, cid, {"manifest": "long.jsonl"})
    assert job["state"] == "failed"
    assert str(root) not in job["error"]
    assert job["progress"]["failures"] == [{"path": "y" * 300 + ".png", "reason": "the file cannot be read"}]
    for manifest in ("\x00.jsonl", "../outside.jsonl", "/etc/passwd"):
        clean_4xx(client.post(f"/collections/{cid}/images/import", json={"manifest": manifest}), 403)
    assert client.get(f"/collections/{cid}").json()["image_count"] == 0


def test_description_with_control_characters_is_refused(client):
    clean_4xx(client.post("/collections", json={"name": "a", "description": "nul\x00"}), 422)
    assert client.post("/collections", json={"name": "b", "description": "two\nlines\tand a tab"}).status_code == 201


def test_missing_file_gives_410_for_file_and_thumbnail(filled, tmp_path):
    client, cid, image = filled
    sha = client.get(f"/collections/{cid}/images/{image}").json()["sha256"]
    client.app.state.context.store.path(cid, sha).unlink()
    for suffix in ("file", "thumbnail"):
        body = clean_4xx(client.get(f"/collections/{cid}/images/{image}/{suffix}"), 410)
        assert body["code"] == "file_missing"


def test_upload_with_every_file_rejected_is_422(filled):
    client, cid, _ = filled
    response = upload(client, cid, [("a.txt", b"not an image"), ("b.png", b"\x89PNG broken")])
    body = clean_4xx(response, 422)
    assert body["code"] == "all_rejected"
    assert body["accepted"] == []
    assert [r["filename"] for r in body["rejected"]] == ["a.txt", "b.png"]
    partly = upload(client, cid, [("a.txt", b"not an image"), ("c.png", png_bytes(7))])
    assert partly.status_code == 200
    assert len(partly.json()["accepted"]) == 1
    assert len(partly.json()["rejected"]) == 1


def test_unreadable_adapter_upload_names_no_internals(filled):
    client, cid, _ = filled
    response = client.post(f"/collections/{cid}/adapters", files={"file": ("a.safetensors", b"\x10\x00" * 40)})
    body = clean_4xx(response, 422)
    assert "Error" not in body["detail"]


def test_public_error_hides_paths_and_reprs():
    try:
        open("/srv/secret/data/collections/1/images/ab/abcdef")
    except FileNotFoundError as exc:
        message = public_error(exc)
    assert "/srv" not in message
    assert "abcdef" not in message
    assert message.startswith("internal error")
    assert "/srv" not in public_error(ValueError("cannot read /srv/secret/file.png"))
    assert public_error(ValueError("too few captioned images")) == "too few captioned images"


def test_a_500_closes_its_connection_so_the_next_request_succeeds(tiny_backbone, tmp_path, monkeypatch):
    """After a 500 the server drops the connection: it must say so, so clients reconnect instead of failing."""
    import service.api.collections as api

    with live_server(tiny_backbone, data_dir=tmp_path / "data") as (base, _):
        with httpx.Client(base_url=base, headers={"Host": "localhost"}) as http:
            cid = http.post("/collections", json={"name": "c"}).json()["id"]

            def broken(*args):
                raise RuntimeError("a fault injected by the test at /srv/secret")

            monkeypatch.setattr(api.ops, "image_count", broken)
            failures = 0
            for _ in range(20):
                failed = http.get(f"/collections/{cid}")
                assert failed.status_code == 500
                assert failed.headers["connection"] == "close"
                assert "/srv" not in failed.text
                assert "RuntimeError" not in failed.text
                try:
                    assert http.get("/healthz").status_code == 200  # the same client, next request
                except httpx.TransportError:
                    failures += 1
            assert failures == 0

"""Editing images after upload (one or by filter), one metadata vocabulary, duplicate uploads that update, over real HTTP."""

import json

import pytest

from tests.support import ids_by_filename, import_and_wait, png_bytes, upload


def image(client, cid, iid):
    response = client.get(f"/collections/{cid}/images/{iid}")
    assert response.status_code == 200
    return response.json()


FOUR_METADATA = [{"captions": ["old caption"], "category": "cat", "attributes": ["small"], "meta": {"album": "a", "n": 1}},
                 {"caption": "one caption"}, {}, {"category": "dog", "meta": {"album": "b"}}]


@pytest.fixture
def four(client, collection):
    cid = collection["id"]
    response = upload(client, cid, [(f"{i}.png", png_bytes(500 + i)) for i in range(4)], FOUR_METADATA)
    assert response.status_code == 200, response.text
    return cid, [a["id"] for a in response.json()["accepted"]]


@pytest.fixture(scope="module")
def shared_four(module_client):
    """``four`` once for the module's tests whose edits are all refused: (client, collection id, image ids)."""
    cid = module_client.post("/collections", json={"name": "shared"}).json()["id"]
    response = upload(module_client, cid, [(f"{i}.png", png_bytes(500 + i)) for i in range(4)], FOUR_METADATA)
    assert response.status_code == 200, response.text
    return module_client, cid, [a["id"] for a in response.json()["accepted"]]


def test_caption_is_one_item_captions_on_upload(client, four):
    cid, ids = four
    assert image(client, cid, ids[1])["captions"] == ["one caption"]


def test_patch_changes_only_what_is_sent(client, four):
    cid, ids = four
    response = client.patch(f"/collections/{cid}/images/{ids[0]}",
                            json={"captions": ["a new one", "and another"], "meta": {"n": None, "place": "home"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["captions"] == ["a new one", "and another"]
    assert body["category"] == "cat"
    assert body["attributes"] == ["small"]
    assert body["meta"] == {"album": "a", "place": "home"}
    assert image(client, cid, ids[0]) == body  # stored, not only answered
    body = client.patch(f"/collections/{cid}/images/{ids[0]}",
                        json={"category": None, "attributes": ["big", "red"], "caption": "just one"}).json()
    assert (body["category"], body["attributes"], body["captions"]) == (None, ["big", "red"], ["just one"])
    assert client.patch(f"/collections/{cid}/images/{ids[0]}", json={"captions": []}).json()["captions"] == []


def test_edited_category_is_what_search_filters_see(client, four):
    cid, ids = four
    client.patch(f"/collections/{cid}/images/{ids[2]}", json={"category": "bird"}).raise_for_status()
    hits = client.post(f"/collections/{cid}/search", json={"query": "x", "filter": {"category": "bird"}}).json()
    assert [h["image_id"] for h in hits["results"]] == [ids[2]]


@pytest.mark.parametrize("body, status, code", [
    ({"colour": "red"}, 422, "invalid_request"),
    ({"captions": ["x" * 2001]}, 422, "invalid_request"),
    ({"category": "bad\x00name"}, 422, "invalid_request"),
    ({"meta": {"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}}}, 422, "invalid_request"),
    ({"captions": ["  ", ""] + [f"c{i}" for i in range(64)]}, 422, "invalid_request"),
])
def test_bad_patches_change_nothing(shared_four, body, status, code):
    client, cid, ids = shared_four
    before = image(client, cid, ids[0])
    response = client.patch(f"/collections/{cid}/images/{ids[0]}", json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert image(client, cid, ids[0]) == before


def test_patch_of_an_absent_image_is_404(client, four):
    cid, ids = four
    response = client.patch(f"/collections/{cid}/images/99999", json={"category": "x"})
    assert response.status_code == 404
    other = client.post("/collections", json={"name": "other"}).json()["id"]
    assert client.patch(f"/collections/{other}/images/{ids[0]}", json={"category": "x"}).status_code == 404


def test_bulk_edit_by_filter(client, four):
    cid, ids = four
    response = client.patch(f"/collections/{cid}/images",
                            json={"filter": {"meta": {"album": "a"}}, "change": {"attributes": ["holiday"]}})
    assert response.status_code == 200, response.text
    assert response.json() == {"updated": 1, "ids": [ids[0]]}
    response = client.patch(f"/collections/{cid}/images",
                            json={"filter": {"uploaded_from": "2000-01-01"}, "change": {"meta": {"checked": True}}})
    assert response.json()["ids"] == sorted(ids)
    assert [image(client, cid, i)["meta"].get("checked") for i in ids] == [True] * 4
    assert image(client, cid, ids[3])["meta"] == {"album": "b", "checked": True}
    assert image(client, cid, ids[0])["attributes"] == ["holiday"]
    nothing = client.patch(f"/collections/{cid}/images", json={"filter": {"category": "none such"},
                                                                "change": {"category": "x"}})
    assert nothing.json() == {"updated": 0, "ids": []}


def test_bulk_edit_needs_a_filter(client, four):
    cid, ids = four
    response = client.patch(f"/collections/{cid}/images", json={"filter": {}, "change": {"category": "x"}})
    assert response.status_code == 422
    assert response.json()["code"] == "empty_filter"
    assert image(client, cid, ids[0])["category"] == "cat"


def test_duplicate_upload_updates_the_stored_metadata(client, four):
    cid, ids = four
    response = upload(client, cid, [("again.png", png_bytes(502))],
                      [{"caption": "now captioned", "category": "fish", "attributes": ["wet"], "meta": {"k": 2}}])
    assert response.json()["accepted"][0] == {**response.json()["accepted"][0], "id": ids[2], "duplicate": True}
    body = image(client, cid, ids[2])
    assert (body["captions"], body["category"], body["attributes"], body["meta"]) == (
        ["now captioned"], "fish", ["wet"], {"k": 2})
    # Again with less: captions and attributes are added to, meta merged, the category kept when none is sent.
    upload(client, cid, [("again.png", png_bytes(502))], [{"captions": ["second"], "attributes": ["cold"],
                                                            "meta": {"j": 1}}]).raise_for_status()
    body = image(client, cid, ids[2])
    assert (body["captions"], body["category"], body["attributes"], body["meta"]) == (
        ["now captioned", "second"], "fish", ["wet", "cold"], {"k": 2, "j": 1})


def test_import_manifest_speaks_the_same_vocabulary(make_client, tmp_path):
    root = tmp_path / "import"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(png_bytes(700 + i))
    lines = [{"path": "0.png", "caption": "one"}, {"path": "1.png", "captions": ["two", "deux"], "category": "c",
                                                   "meta": {"from": "manifest"}},
             {"path": "2.png", "attributes": ["x"]}]
    (root / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    client = make_client(import_root=root)
    cid = client.post("/collections", json={"name": "m"}).json()["id"]
    assert import_and_wait(client, cid, {"manifest": "m.jsonl"})["state"] == "succeeded"
    ids = [ids_by_filename(client, cid)[f"{i}.png"] for i in range(3)]
    got = [image(client, cid, i) for i in ids]
    assert [g["captions"] for g in got] == [["one"], ["two", "deux"], []]
    assert got[1]["meta"] == {"from": "manifest"}
    assert got[1]["category"] == "c"
    (root / "bad.jsonl").write_text(json.dumps({"path": "0.png", "colour": "red"}))
    bad = client.post(f"/collections/{cid}/images/import", json={"manifest": "bad.jsonl"})
    assert bad.status_code == 422
    assert bad.json()["code"] == "bad_manifest"


def test_the_next_tuning_job_trains_on_edited_values(client, collection):
    cid = collection["id"]
    upload(client, cid, [(f"{i}.png", png_bytes(800 + i)) for i in range(16)]).raise_for_status()
    refused = client.post(f"/collections/{cid}/tuning-jobs", json={})
    assert refused.status_code == 422
    assert refused.json()["code"] == "too_few_pairs"
    for colour in ("red", "blue"):
        edited = client.patch(f"/collections/{cid}/images",
                              json={"filter": {"uploaded_from": "2000-01-01"}, "change": {"category": colour}})
        assert edited.json()["updated"] == 16
    job = client.post(f"/collections/{cid}/tuning-jobs", json={"epochs": 1})
    assert job.status_code == 202, job.text
    client.post(f"/jobs/{job.json()['id']}/cancel")

"""Filters inside the index search, minimum score, sort by date, EXIF capture dates and richer hits, over real HTTP."""

import io
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from tests.support import png_bytes, upload

COLOURS = ["red", "green", "blue", "yellow"]


def jpeg_with_capture_date(seed: int, when: str | None, original: bool = True) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8))
    exif = Image.Exif()
    if when is not None:
        if original:
            exif.get_ifd(0x8769)[0x9003] = when  # DateTimeOriginal
        else:
            exif[0x0132] = when  # DateTime
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def fill(client, n=24, start=0):
    cid = client.post("/collections", json={"name": f"f{start}"}).json()["id"]
    metadata = [{"captions": [f"a {COLOURS[i % 4]} thing {i}"], "category": COLOURS[i % 4],
                 "attributes": ["big" if i % 3 == 0 else "small", "shiny"] if i % 2 else ["matte"],
                 "meta": {"album": "trip" if i < n // 2 else "home", "n": i}} for i in range(n)]
    response = upload(client, cid, [(f"img{i}.png", png_bytes(300 + i)) for i in range(n)], metadata)
    assert response.status_code == 200, response.text
    return cid, [a["id"] for a in response.json()["accepted"]], metadata


@pytest.fixture(scope="module")
def filled(module_client):
    """``fill`` once for the module's tests that only search it: (client, collection id, image ids, metadata)."""
    return module_client, *fill(module_client)


def search(client, cid, **body):
    response = client.post(f"/collections/{cid}/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_a_filter_keeps_k_results_in_the_unfiltered_order(filled):
    client, cid, ids, metadata = filled
    everything = search(client, cid, query="a thing", k=len(ids))
    reds = [h for h in everything if h["category"] == "red"]
    assert len(reds) == 6
    got = search(client, cid, query="a thing", k=4, filter={"category": "red"})
    assert [h["image_id"] for h in got] == [h["image_id"] for h in reds[:4]]  # 4 come back, not "reds among the top 4"
    np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in reds[:4]], atol=1e-6)
    assert len(search(client, cid, query="a thing", k=50, filter={"category": "red"})) == 6


@pytest.mark.parametrize("flt, expected", [
    ({"attributes": ["shiny"]}, lambda i, m: "shiny" in m["attributes"]),
    ({"attributes": ["shiny", "big"]}, lambda i, m: {"shiny", "big"} <= set(m["attributes"])),
    ({"meta": {"album": "trip"}}, lambda i, m: m["meta"]["album"] == "trip"),
    ({"meta": {"album": "home", "n": 13}}, lambda i, m: i == 13),
    ({"meta": {"missing": "x"}}, lambda i, m: False),
    ({"category": "blue", "meta": {"album": "home"}}, lambda i, m: m["category"] == "blue" and i >= 12),
])
def test_attribute_and_meta_filters(filled, flt, expected):
    client, cid, ids, metadata = filled
    got = {h["image_id"] for h in search(client, cid, query="x", k=len(ids), filter=flt)}
    assert got == {ids[i] for i, m in enumerate(metadata) if expected(i, m)}


def test_upload_date_range(client):
    cid, first, _ = fill(client, n=4)
    middle = datetime.now(timezone.utc)
    response = upload(client, cid, [(f"late{i}.png", png_bytes(900 + i)) for i in range(3)])
    later = [a["id"] for a in response.json()["accepted"]]
    got = search(client, cid, query="x", k=20, filter={"uploaded_from": middle.isoformat()})
    assert {h["image_id"] for h in got} == set(later)
    got = search(client, cid, query="x", k=20, filter={"uploaded_to": middle.isoformat()})
    assert {h["image_id"] for h in got} == set(first)
    naive_future = (datetime.now(timezone.utc) + timedelta(days=1)).replace(tzinfo=None).isoformat()
    assert search(client, cid, query="x", k=20, filter={"uploaded_from": naive_future}) == []


def test_capture_dates_from_exif_filter_and_sort(client, collection):
    cid = collection["id"]
    blobs = [("a.jpg", jpeg_with_capture_date(1, "2019:07:01 12:00:00")),
             ("b.jpg", jpeg_with_capture_date(2, "2021:01:15 08:30:00")),
             ("c.jpg", jpeg_with_capture_date(3, "2020:02:29 23:59:59", original=False)),
             ("d.jpg", jpeg_with_capture_date(4, None)),
             ("e.jpg", jpeg_with_capture_date(5, "not a date"))]
    response = upload(client, cid, blobs)
    assert response.status_code == 200, response.text
    ids = [a["id"] for a in response.json()["accepted"]]
    stored = [client.get(f"/collections/{cid}/images/{i}").json()["captured_at"] for i in ids]
    assert [s and datetime.fromisoformat(s.replace("Z", "+00:00")) for s in stored] == [
        datetime(2019, 7, 1, 12, tzinfo=timezone.utc), datetime(2021, 1, 15, 8, 30, tzinfo=timezone.utc),
        datetime(2020, 2, 29, 23, 59, 59, tzinfo=timezone.utc), None, None]
    got = search(client, cid, query="x", k=10, filter={"captured_from": "2020-01-01T00:00:00Z"})
    assert {h["image_id"] for h in got} == {ids[1], ids[2]}
    got = search(client, cid, query="x", k=10, filter={"captured_from": "2019-01-01", "captured_to": "2020-12-31"})
    assert {h["image_id"] for h in got} == {ids[0], ids[2]}
    # Newest first: capture date where there is one, else the upload date (today, so first).
    by_date = search(client, cid, query="x", k=10, sort="date")
    assert [h["image_id"] for h in by_date][-3:] == [ids[1], ids[2], ids[0]]
    assert {h["image_id"] for h in by_date[:2]} == {ids[3], ids[4]}


def test_min_score_drops_weaker_hits(client):
    cid, ids, _ = fill(client, n=8)
    everything = search(client, cid, query="a red thing", k=8)
    cut = everything[3]["score"]
    got = search(client, cid, query="a red thing", k=8, min_score=cut)
    assert [h["image_id"] for h in got] == [h["image_id"] for h in everything if h["score"] >= cut]
    assert 4 <= len(got) < 8


def test_hits_carry_file_name_thumbnail_and_dates(client):
    cid, ids, _ = fill(client, n=4)
    hit = search(client, cid, image_id=ids[2], k=1)[0]
    assert hit["image_id"] == ids[2]
    assert hit["filename"] == "img2.png"
    assert hit["captured_at"] is None
    assert hit["uploaded_at"]
    thumb = client.get(hit["thumbnail_url"])
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/jpeg"


def test_filters_work_on_an_approximate_index_and_with_combined_queries(make_client):
    client = make_client(ann_threshold=40, ann_nprobe=1)
    cid, ids, metadata = fill(client, n=80)
    assert client.get(f"/collections/{cid}").json()["indexes"][0]["kind"] == "ivf"
    # One image matches: a single probed list would usually miss it; the filtered search finds it.
    got = search(client, cid, query="x", k=5, filter={"meta": {"n": 57}})
    assert [h["image_id"] for h in got] == [ids[57]]
    greens = search(client, cid, terms=[{"text": "a thing"}, {"image_id": ids[0], "weight": -0.5}], k=100,
                    filter={"category": "green"})
    assert {h["image_id"] for h in greens} == {ids[i] for i in range(80) if i % 4 == 1}
    scores = [h["score"] for h in greens]
    assert scores == sorted(scores, reverse=True)


def test_image_upload_search_takes_filters(client):
    cid, ids, _ = fill(client, n=8)
    response = client.post(f"/collections/{cid}/search/image", files={"file": ("q.png", png_bytes(300), "image/png")},
                           data={"options": '{"k": 8, "filter": {"category": "green"}, "sort": "date"}'})
    assert response.status_code == 200, response.text
    assert {h["image_id"] for h in response.json()["results"]} == {ids[1], ids[5]}


@pytest.mark.parametrize("body, code", [
    ({"query": "x", "filter": {"uploaded_from": "2022-01-02", "uploaded_to": "2022-01-01"}}, "bad_filter"),
    ({"query": "x", "filter": {"colour": "red"}}, "invalid_request"),
    ({"query": "x", "filter": {"meta": {"a": {"nested": 1}}}}, "invalid_request"),
    ({"query": "x", "min_score": 2}, "invalid_request"),
    ({"query": "x", "sort": "random"}, "invalid_request"),
])
def test_bad_filters(filled, body, code):
    client, cid, _, _ = filled
    response = client.post(f"/collections/{cid}/search", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code

"""Image queries ("more like this", an uploaded file) and weighted combinations, over real HTTP."""

import io
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from tests.support import SEARCH_CAPTIONS, adapter_blob, assert_same_ranking, png_bytes, upload_captioned

CAPTIONS = SEARCH_CAPTIONS


@pytest.fixture
def filled(client, collection):
    ids, blobs = upload_captioned(client, collection["id"], first_seed=200)
    return collection["id"], ids, blobs


@pytest.fixture(scope="module")
def shared(module_client):
    """``filled`` once for the module's tests that only search: (client, collection id, image ids, blobs)."""
    cid = module_client.post("/collections", json={"name": "shared"}).json()["id"]
    ids, blobs = upload_captioned(module_client, cid, first_seed=200)
    return module_client, cid, ids, blobs


@pytest.fixture(scope="module")
def direct():
    """open_clip itself, with no service code: unit image and text vectors."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms("tiny-vit-test")
    model.eval()
    tokenizer = open_clip.get_tokenizer("tiny-vit-test")

    def images(blobs):
        with torch.no_grad():
            pixels = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
            return model.encode_image(pixels, normalize=True).numpy()

    def texts(items):
        with torch.no_grad():
            return model.encode_text(tokenizer(items), normalize=True).numpy()

    return images, texts


def ranked(vector, image_vectors):
    vector = vector / np.linalg.norm(vector)
    scores = image_vectors @ vector
    return np.argsort(-scores, kind="stable"), scores


def assert_hits(client, hits, ids, scores, atol):
    """The service's hits against open_clip's own ranking (near ties may swap where the service runs in fp16)."""
    assert_same_ranking([h["image_id"] for h in hits], [h["score"] for h in hits], ids, scores,
                        client.app.state.context.backbone, atol=atol)


def search(client, cid, **body):
    response = client.post(f"/collections/{cid}/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_more_like_this_ranks_by_the_stored_vector(shared, direct):
    client, cid, ids, blobs = shared
    vectors = direct[0](blobs)
    body = search(client, cid, image_id=ids[3], k=len(ids))
    order, scores = ranked(vectors[3], vectors)
    assert_hits(client, body["results"], [ids[i] for i in order], scores[order], atol=1e-5)
    assert body["results"][0]["image_id"] == ids[3]


def test_uploaded_image_answers_like_the_stored_one(shared):
    client, cid, ids, blobs = shared
    stored = search(client, cid, image_id=ids[5], k=5)["results"]
    response = client.post(f"/collections/{cid}/search/image", files={"file": ("q.png", blobs[5], "image/png")},
                           data={"options": json.dumps({"k": 5})})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["adapter"] == "none"
    assert [h["image_id"] for h in body["results"]] == [h["image_id"] for h in stored]
    np.testing.assert_allclose([h["score"] for h in body["results"]], [h["score"] for h in stored], atol=1e-5)
    # The query image is not stored.
    assert client.get(f"/collections/{cid}/images").json()["total"] == len(ids)


def test_weighted_terms_are_the_normalised_weighted_sum(shared, direct):
    client, cid, ids, blobs = shared
    images, texts = direct
    image_vectors = images(blobs)
    text_vectors = texts(["golden retriever", "fruit"])
    terms = [{"text": "golden retriever", "weight": 2}, {"image_id": ids[1]}, {"text": "fruit", "weight": -1}]
    body = search(client, cid, terms=terms, k=len(ids))
    combined = 2 * text_vectors[0] + image_vectors[1] - text_vectors[1]
    order, scores = ranked(combined, image_vectors)
    assert_hits(client, body["results"], [ids[i] for i in order], scores[order], atol=1e-4)


def test_a_single_text_term_is_the_plain_query(shared):
    client, cid, ids, _ = shared
    plain = search(client, cid, query="a small cat", k=4)["results"]
    term = search(client, cid, terms=[{"text": "a small cat", "weight": 3}], k=4)["results"]
    assert [h["image_id"] for h in term] == [h["image_id"] for h in plain]
    np.testing.assert_allclose([h["score"] for h in term], [h["score"] for h in plain], atol=1e-5)


def test_uploaded_image_combines_with_terms(shared, direct):
    client, cid, ids, blobs = shared
    images, texts = direct
    image_vectors = images(blobs)
    query = png_bytes(999)
    response = client.post(
        f"/collections/{cid}/search/image", files={"file": ("q.png", query, "image/png")},
        data={"weight": "1.5", "options": json.dumps({"k": len(ids), "terms": [{"text": "a dog", "weight": -1}]})})
    assert response.status_code == 200, response.text
    combined = 1.5 * images([query])[0] - texts(["a dog"])[0]
    order, scores = ranked(combined, image_vectors)
    assert_hits(client, response.json()["results"], [ids[i] for i in order], scores[order], atol=1e-4)


@pytest.mark.parametrize("body, status, code", [
    ({"terms": []}, 422, "empty_query"),
    ({"terms": [{"text": "a cat"}, {"text": "a cat", "weight": -1}]}, 422, "empty_query"),
    ({"terms": [{"text": "a cat", "image_id": 1}]}, 422, "bad_term"),
    ({"terms": [{"weight": 2}]}, 422, "bad_term"),
    ({"terms": [{"text": "a cat", "weight": 0}]}, 422, "bad_term"),
    ({"terms": [{"text": "   "}]}, 422, "empty_query"),
    ({"terms": [{"text": "a", "weight": 11}]}, 422, "invalid_request"),
    ({"image_id": 999999}, 404, "image_not_found"),
    ({"terms": [{"image_id": 999999}]}, 404, "image_not_found"),
    ({"image_id": 1, "terms": [{"text": "x"}]}, 422, "bad_query"),
])
def test_bad_combined_queries(shared, body, status, code):
    client, cid, _, _ = shared
    response = client.post(f"/collections/{cid}/search", json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_an_image_of_another_collection_is_not_found(client, filled):
    cid, ids, _ = filled
    other = client.post("/collections", json={"name": "other"}).json()["id"]
    response = client.post(f"/collections/{other}/search", json={"image_id": ids[0]})
    assert response.status_code == 404
    assert response.json()["code"] == "image_not_found"


@pytest.mark.parametrize("files, data, code", [
    ({"file": ("q.png", b"not an image", "image/png")}, {}, "bad_image"),
    ({"file": ("q.png", b"", "image/png")}, {}, "bad_image"),
    ({"file": ("q.png", png_bytes(1), "image/png")}, {"options": "{not json"}, "bad_options"),
    ({"file": ("q.png", png_bytes(1), "image/png")}, {"options": '{"query": "x"}'}, "bad_options"),
    ({"file": ("q.png", png_bytes(1), "image/png")}, {"options": '{"k": 0}'}, "bad_k"),
    ({"file": ("q.png", png_bytes(1), "image/png")}, {"weight": "0"}, "bad_term"),
    ({"file": ("q.png", png_bytes(1), "image/png")}, {"options": '{"adapter": "v9"}'}, "adapter_not_found"),
])
def test_bad_image_searches(shared, files, data, code):
    client, cid, _, _ = shared
    response = client.post(f"/collections/{cid}/search/image", files=files, data=data)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["code"] == code


def test_image_queries_use_the_adapters_image_space(client, filled, tiny_backbone):
    cid, ids, blobs = filled
    response = client.post(f"/collections/{cid}/adapters", data={"activate": "true"},
                           files={"file": ("a.safetensors", adapter_blob(tiny_backbone), "application/octet-stream")})
    assert response.status_code in (200, 201), response.text
    adapted = search(client, cid, image_id=ids[2], k=len(ids))
    zero = search(client, cid, image_id=ids[2], k=len(ids), adapter="none")
    assert adapted["adapter"] == "v1"
    assert adapted["results"][0]["image_id"] == ids[2]
    by_id = {h["image_id"]: h["score"] for h in adapted["results"]}
    assert not np.allclose([by_id[h["image_id"]] for h in zero["results"]], [h["score"] for h in zero["results"]],
                           atol=1e-4)
    # The stored v1 vector of an image is what the v1 encoder makes of its file.
    uploaded = client.post(f"/collections/{cid}/search/image", files={"file": ("q.png", blobs[2], "image/png")},
                           data={"options": json.dumps({"k": len(ids)})}).json()
    assert uploaded["adapter"] == "v1"
    assert [h["image_id"] for h in uploaded["results"]] == [h["image_id"] for h in adapted["results"]]
    np.testing.assert_allclose([h["score"] for h in uploaded["results"]], [h["score"] for h in adapted["results"]],
                               atol=1e-4)

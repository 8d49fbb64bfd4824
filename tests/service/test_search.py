import io

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from tests.support import SEARCH_CAPTIONS, assert_same_ranking, upload_captioned

CAPTIONS = SEARCH_CAPTIONS


@pytest.fixture
def filled(client, collection):
    ids, blobs = upload_captioned(client, collection["id"], first_seed=100)
    return collection["id"], ids, blobs


@pytest.fixture(scope="module")
def shared(module_client):
    """``filled`` once for the module's tests that only search: (client, collection id, image ids, blobs)."""
    cid = module_client.post("/collections", json={"name": "shared"}).json()["id"]
    ids, blobs = upload_captioned(module_client, cid, first_seed=100)
    return module_client, cid, ids, blobs


def direct_ranking(blobs, query):
    """What open_clip itself says, with no service code involved."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms("tiny-vit-test")
    model.eval()
    tokenizer = open_clip.get_tokenizer("tiny-vit-test")
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
        images = model.encode_image(pixels, normalize=True)
        text = model.encode_text(tokenizer([query]), normalize=True)
    scores = (text @ images.T)[0].numpy()
    return np.argsort(-scores, kind="stable"), scores


@pytest.mark.parametrize("query", ["a red square", "something else entirely", "cat"])
def test_zero_shot_ranks_exactly_as_open_clip(shared, query):
    client, cid, ids, blobs = shared
    order, scores = direct_ranking(blobs, query)
    body = client.post(f"/collections/{cid}/search", json={"query": query, "k": len(ids)}).json()
    assert body["adapter"] == "none"
    got = [hit["image_id"] for hit in body["results"]]
    assert_same_ranking(got, [h["score"] for h in body["results"]], [ids[i] for i in order], scores[order],
                        client.app.state.context.backbone, atol=1e-5)


def test_hits_carry_captions_and_urls(shared):
    client, cid, ids, blobs = shared
    hit = client.post(f"/collections/{cid}/search", json={"query": "x", "k": 1}).json()["results"][0]
    assert hit["captions"] == [CAPTIONS[ids.index(hit["image_id"])]]
    assert client.get(hit["url"]).content == blobs[ids.index(hit["image_id"])]


def test_batch_query_returns_a_list_per_query(shared):
    client, cid, ids, _ = shared
    body = client.post(f"/collections/{cid}/search", json={"query": ["dog", "cat", "car"], "k": 3}).json()
    assert len(body["results"]) == 3
    assert all(len(row) == 3 for row in body["results"])
    single = client.post(f"/collections/{cid}/search", json={"query": "cat", "k": 3}).json()["results"]
    assert [h["image_id"] for h in body["results"][1]] == [h["image_id"] for h in single]


def test_k_larger_than_collection_returns_all(shared):
    client, cid, ids, _ = shared
    body = client.post(f"/collections/{cid}/search", json={"query": "x", "k": 500}).json()
    assert len(body["results"]) == len(ids)


def test_empty_collection_returns_no_hits(client, collection):
    body = client.post(f"/collections/{collection['id']}/search", json={"query": "x"}).json()
    assert body["results"] == []


@pytest.mark.parametrize("body, code", [
    ({"query": ""}, "empty_query"),
    ({"query": "   "}, "empty_query"),
    ({"query": []}, "empty_query"),
    ({"query": ["ok", ""]}, "empty_query"),
    ({"query": "x" * 1001}, "query_too_long"),
    ({"query": "x", "k": 0}, "bad_k"),
    ({"query": "x", "k": -3}, "bad_k"),
    ({"query": "x", "k": 1001}, "bad_k"),
    ({"query": ["x"] * 65}, "too_many_queries"),
    ({"query": "x", "adapter": "v99"}, "adapter_not_found"),
    ({"query": "x", "adapter": "latest"}, "bad_adapter"),
    ({"query": 5}, "invalid_request"),
    ({"k": 3}, "bad_query"),
    ({"query": "x", "image_id": 1}, "bad_query"),
])
def test_bad_search_requests(shared, body, code):
    client, cid, _, _ = shared
    response = client.post(f"/collections/{cid}/search", json=body)
    assert 400 <= response.status_code < 500
    assert response.json()["code"] == code, response.json()

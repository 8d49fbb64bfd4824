"""Adapter uploads cannot hurt: header checked against the backbone before tensors are read, values finite."""

from __future__ import annotations

import hashlib
import json
import resource
import struct

import pytest
import torch
from safetensors.torch import save as save_tensors

from adapters.artifact import serialize_adapter
from adapters.prompted import PromptConfig, PromptedCLIP
from tests.support import noise_like, png_bytes, tolerance, upload

CONFIG = PromptConfig(text_tokens=2, visual_tokens=2)


def prompts(client, config=CONFIG) -> PromptedCLIP:
    return PromptedCLIP.from_backbone(client.app.state.context.backbone, config)


def post(client, cid, blob, activate=False):
    return client.post(f"/collections/{cid}/adapters", files={"file": ("a.safetensors", blob)},
                       data={"activate": str(activate).lower()})


def retagged(blob: bytes, **changes) -> bytes:
    """The same tensors with metadata fields replaced (what a hostile or broken uploader can send)."""
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    meta = dict(header["__metadata__"])
    tensors = {}
    from safetensors.torch import load

    tensors = load(blob)
    for key, value in changes.items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    return save_tensors(tensors, metadata=meta)


def test_good_upload_records_its_digest_and_searches(client, collection):
    cid = collection["id"]
    upload(client, cid, [(f"{i}.png", png_bytes(i)) for i in range(4)])
    blob = serialize_adapter(prompts(client))
    created = post(client, cid, blob, activate=True)
    assert created.status_code == 201, created.text
    assert created.json()["file_sha256"] == hashlib.sha256(blob).hexdigest()
    found = client.post(f"/collections/{cid}/search", json={"query": "a thing", "k": 4}).json()
    assert found["adapter"] == "v1"
    assert len(found["results"]) == 4


def test_nan_and_infinite_prompts_are_refused(client, collection):
    cid = collection["id"]
    for bad in (float("nan"), float("inf")):
        prompted = prompts(client)
        with torch.no_grad():
            prompted.visual_prompts.fill_(bad)
        response = post(client, cid, serialize_adapter(prompted), activate=True)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "non_finite", response.text
    assert client.get(f"/collections/{cid}/adapters").json() == []


def test_huge_claimed_prompts_are_refused_before_anything_is_allocated(client, collection):
    cid = collection["id"]
    blob = serialize_adapter(prompts(client))
    claimed = {**CONFIG.to_dict(), "visual_tokens": 651_041}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = post(client, cid, retagged(blob, prompt_config=claimed))
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "adapter_shape", response.text
    assert grown_kb < 200_000  # 651,041 tokens would have been gigabytes
    assert len(blob) < 100_000


def test_header_that_disagrees_with_the_config_is_refused(client, collection):
    cid = collection["id"]
    blob = serialize_adapter(prompts(client))
    # Config says 4 visual tokens, the tensors hold 2.
    response = post(client, cid, retagged(blob, prompt_config={**CONFIG.to_dict(), "visual_tokens": 4}))
    assert response.status_code == 422
    assert response.json()["code"] == "adapter_shape"
    # float64 tensors of the right shape.
    tensors = {k: v.double() for k, v in prompts(client).prompt_state_dict().items()}
    (size,) = struct.unpack("<Q", blob[:8])
    meta = json.loads(blob[8 : 8 + size])["__metadata__"]
    response = post(client, cid, save_tensors(tensors, metadata=meta))
    assert response.status_code == 422
    assert response.json()["code"] == "adapter_shape"
    # A header whose offsets point past the end of the file.
    response = post(client, cid, blob[: len(blob) - 16])
    assert response.status_code == 422
    assert response.json()["code"] == "bad_adapter_file"
    # Metadata that is not the format's JSON.
    response = post(client, cid, retagged(blob, prompt_config="[" * 5000))
    assert response.status_code == 422
    assert client.get(f"/collections/{cid}/adapters").json() == []


def test_oversized_adapter_file_is_413(make_client):
    client = make_client(max_adapter_bytes=3_000)
    cid = client.post("/collections", json={"name": "c"}).json()["id"]
    blob = serialize_adapter(prompts(client, PromptConfig(text_tokens=2, visual_tokens=8, visual_deep_from=1)))
    assert len(blob) > 3_000
    response = post(client, cid, blob)
    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large"


WORDS = PromptConfig(text_tokens=2, word_tokens=3, residual_rank=2, zero_shot_mix=True)


def with_words(client, config: PromptConfig = WORDS) -> PromptedCLIP:
    """An adapter that learned offsets for "zebra" and "disc" (its third row unused)."""
    prompted = prompts(client, config)
    tokenizer = client.app.state.context.backbone.tokenizer
    prompted.set_words([int(tokenizer([word])[0][1]) for word in ("zebra", "disc")])
    with torch.no_grad():
        prompted.word_deltas.add_(noise_like(prompted.word_deltas, torch.Generator().manual_seed(1)))
    if config.zero_shot_mix:
        prompted.set_adapted_weight(0.5)
    return prompted


def test_an_adapter_of_collection_words_alone_changes_exactly_the_searches_that_use_them(client, collection):
    cid = collection["id"]
    upload(client, cid, [(f"{i}.png", png_bytes(i)) for i in range(4)])
    prompted = with_words(client, PromptConfig(word_tokens=3))  # no prompts, no map: only the words differ
    response = post(client, cid, serialize_adapter(prompted), activate=True)
    assert response.status_code == 201, response.text

    def scores(adapter: str) -> list[list[float]]:
        found = client.post(f"/collections/{cid}/search",
                            json={"query": ["a zebra disc", "a red square"], "k": 4, "adapter": adapter}).json()
        return [sorted(hit["score"] for hit in hits) for hits in found["results"]]

    adapted, zero_shot = scores("active"), scores("none")
    assert max(abs(a - b) for a, b in zip(adapted[0], zero_shot[0], strict=True)) > 1e-3  # uses "zebra", "disc"
    assert adapted[1] == pytest.approx(zero_shot[1], abs=tolerance(client.app.state.context.backbone, 1e-5))  # uses neither


def test_forged_word_ids_and_huge_word_tables_are_refused(client, collection):
    cid = collection["id"]
    prompted = with_words(client)
    vocab = client.app.state.context.backbone.model.token_embedding.weight.shape[0]
    for forged in ([vocab + 5, -1, -1], [7, 7, -1], [-3, -1, -1]):
        tensors = prompted.prompt_state_dict()
        tensors["word_ids"] = torch.tensor(forged)
        blob = serialize_adapter(prompted)
        (size,) = struct.unpack("<Q", blob[:8])
        meta = json.loads(blob[8 : 8 + size])["__metadata__"]
        response = post(client, cid, save_tensors(tensors, metadata=meta))
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "bad_adapter_file", response.text
    blob = serialize_adapter(prompted)
    for field in ("word_tokens", "residual_rank", "block_adapter_rank", "text_block_adapter_rank", "coupling_rank"):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        response = post(client, cid, retagged(blob, prompt_config={**WORDS.to_dict(), field: 50_000_000}))
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "adapter_shape", response.text
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000
    assert client.get(f"/collections/{cid}/adapters").json() == []

"""Concurrent searches against different collections' adapters (mixed text batches) answer as sequential ones."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch

from adapters.artifact import serialize_adapter
from adapters.prompted import PromptConfig, PromptedCLIP
from tests.service.live_server import live_server
from tests.support import COLOURS, assert_same_ranking, perturb, png_bytes

QUERIES = ["a red thing", "a green thing number 3", "blue", "a yellow thing number 7", "thing"]


def adapter_file(backbone, seed: int) -> bytes:
    """A text adapter (prompts, residual map, zero-shot mixing) moved away from its initial values."""
    prompted = PromptedCLIP.from_backbone(
        backbone, PromptConfig(text_tokens=2 + seed, residual_rank=2, zero_shot_mix=True, seed=seed))
    perturb(prompted, torch.Generator().manual_seed(seed), 0.3)
    prompted.set_adapted_weight(0.7)
    return serialize_adapter(prompted)


def collection_with_adapter(http: httpx.Client, backbone, name: str, seed: int) -> int:
    cid = http.post("/collections", json={"name": name}).json()["id"]
    files = [("files", (f"{i}.png", png_bytes(100 * seed + i), "image/png")) for i in range(12)]
    meta = [{"captions": [f"a {COLOURS[i % 4]} thing number {i}"]} for i in range(12)]
    assert http.post(f"/collections/{cid}/images", files=files, data={"metadata": json.dumps(meta)}).status_code == 200
    created = http.post(f"/collections/{cid}/adapters", files={"file": ("a.safetensors", adapter_file(backbone, seed))},
                        data={"activate": "true"})
    assert created.status_code == 201, created.text
    return cid


def test_concurrent_searches_on_two_adapters_match_sequential_ones(tiny_backbone, tmp_path):
    with live_server(tiny_backbone, data_dir=tmp_path / "data") as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        cids = [collection_with_adapter(http, tiny_backbone, f"c{seed}", seed) for seed in (1, 2)]
        asks = [(cid, q) for q in QUERIES for cid in cids] * 3

        def ask(job):
            cid, query = job
            response = http.post(f"/collections/{cid}/search", json={"query": query, "k": 5})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["adapter"] == "v1"
            return [h["image_id"] for h in body["results"]], [h["score"] for h in body["results"]]

        sequential = {job: ask(job) for job in asks}
        with ThreadPoolExecutor(max_workers=8) as pool:
            concurrent = list(pool.map(ask, asks))
        zero_shot = http.post(f"/collections/{cids[0]}/search", json={"query": QUERIES[0], "k": 5, "adapter": "none"})
    for job, (ids, scores) in zip(asks, concurrent, strict=True):
        assert_same_ranking(ids, scores, *sequential[job], tiny_backbone, atol=1e-5, note=job)
    # The adapter changes the answer, so a query encoded with the wrong adapter's prompts would show.
    assert [h["score"] for h in zero_shot.json()["results"]] != sequential[(cids[0], QUERIES[0])][1]

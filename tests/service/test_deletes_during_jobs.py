"""A tuning job survives images deleted while it re-indexes; its errors never show server paths."""

from __future__ import annotations

from service import adapter_versions
from service import collections as ops
from tests.service.test_tuning import QUICK, fill, start_job, wait


def test_images_deleted_during_indexing_are_simply_left_out(client, monkeypatch):
    cid = fill(client)
    ctx = client.app.state.context
    ids = [i["id"] for i in client.get(f"/collections/{cid}/images", params={"limit": 100}).json()["items"]]
    doomed = ids[-3:]
    real_encode, real_open = adapter_versions.encode_images, ctx.store.open_rgb
    indexing = {"on": False, "deleted": False}

    def encode_images(*args, **kwargs):
        indexing["on"] = True
        try:
            return real_encode(*args, **kwargs)
        finally:
            indexing["on"] = False

    def open_rgb(collection_id, sha):
        # The rows are read; now, mid-way through the indexing stage, a user deletes three images.
        if indexing["on"] and not indexing["deleted"]:
            indexing["deleted"] = True
            for image_id in doomed:
                ops.delete_image(ctx, cid, image_id)
        return real_open(collection_id, sha)

    monkeypatch.setattr(adapter_versions, "encode_images", encode_images)
    monkeypatch.setattr(ctx.store, "open_rgb", open_rgb)
    job = wait(client, start_job(client, cid, method="visual", activation="always", **QUICK))
    assert indexing["deleted"], "the job never reached its indexing stage"
    assert job["state"] == "succeeded", job["error"]
    version = job["adapter_version"]
    index = {i["space"]: i["size"] for i in client.get(f"/collections/{cid}").json()["indexes"]}
    assert index[f"v{version}"] == len(ids) - len(doomed)
    found = client.post(f"/collections/{cid}/search", json={"query": "a red thing", "k": 100,
                                                           "adapter": f"v{version}"}).json()
    assert {h["image_id"] for h in found["results"]} == set(ids) - set(doomed)

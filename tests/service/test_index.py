import numpy as np

from service.index import VectorIndex


def clustered(n, dim, seed, clusters=200):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_ann_recall_against_exact():
    vectors = clustered(30_000, 64, seed=0)
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    queries = clustered(200, 64, seed=1)
    exact = VectorIndex.build(64, ids, vectors, ann_threshold=10**9, nprobe=32)
    approx = VectorIndex.build(64, ids, vectors, ann_threshold=20_000, nprobe=32)
    assert exact.kind == "flat" and approx.kind == "ivf"
    _, truth = exact.search(queries, 10)
    _, found = approx.search(queries, 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert recall >= 0.95, recall


def test_remove_and_readd():
    vectors = clustered(100, 16, seed=2)
    ids = np.arange(100, dtype=np.int64) + 1000
    index = VectorIndex.build(16, ids, vectors, ann_threshold=10**9, nprobe=8)
    index.remove(ids[:10])
    _, found = index.search(vectors[:10], 100)
    assert not set(found.ravel()) & set(ids[:10].tolist())
    index.add(ids[:1], vectors[:1])
    _, found = index.search(vectors[:1], 1)
    assert found[0, 0] == ids[0]
    index.add(ids[:1], vectors[1:2])  # re-adding an id replaces its vector
    assert index.size == 91


def test_registry_switches_to_ann_past_threshold(make_client, tmp_path):
    from tests.support import png_bytes, upload

    client = make_client(ann_threshold=40)
    cid = client.post("/collections", json={"name": "c"}).json()["id"]
    upload(client, cid, [(f"{i}.png", png_bytes(i)) for i in range(30)])
    assert client.get(f"/collections/{cid}").json()["indexes"][0]["kind"] == "flat"
    upload(client, cid, [(f"{i}.png", png_bytes(i)) for i in range(30, 45)])
    status = client.get(f"/collections/{cid}").json()["indexes"][0]
    assert status == {"space": "none", "kind": "ivf", "size": 45}

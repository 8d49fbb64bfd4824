import numpy as np
import pytest

from service.index import IndexRegistry, VectorIndex


def clustered(n, dim, seed, clusters=200):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.slow
def test_ann_recall_against_exact():
    vectors = clustered(30_000, 64, seed=0)
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    queries = clustered(200, 64, seed=1)
    exact = VectorIndex.build(64, ids, vectors, ann_threshold=10**9, nprobe=32)
    approx = VectorIndex.build(64, ids, vectors, ann_threshold=20_000, nprobe=32)
    assert exact.kind == "flat"
    assert approx.kind == "ivf"
    _, truth = exact.search(queries, 10)
    _, found = approx.search(queries, 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)])
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


@pytest.mark.parametrize("n", [50, 500])  # flat, then IVF (threshold 100)
def test_a_stale_index_file_is_repaired_from_stored_vectors(tmp_path, n):
    """Loading a file written before later adds and removes gives exactly the stored ids back."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n + 20, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, n + 21, dtype=np.int64)
    stored = {"ids": ids[:n], "vectors": vectors[:n]}
    registry = IndexRegistry(tmp_path, 16, lambda c, s: (stored["ids"], stored["vectors"]), ann_threshold=100, nprobe=8)
    first = registry.get(1, "none")
    kind = first.kind
    # After the file was written: 20 more images and 5 deleted ones, as the database now says.
    keep = np.ones(n + 20, dtype=bool)
    keep[:5] = False
    stored.update(ids=ids[keep], vectors=vectors[keep])

    reopened = IndexRegistry(tmp_path, 16, lambda c, s: (stored["ids"], stored["vectors"]), ann_threshold=100, nprobe=8)
    repaired = reopened.get(1, "none")
    assert repaired.kind == kind
    assert sorted(repaired.ids) == sorted(stored["ids"])
    assert repaired.matches(reopened.path(1, "none"), stored["ids"])  # and written back with its sidecar
    scores, found = repaired.search(vectors[n + 3 : n + 4], 1)
    assert found[0][0] == ids[n + 3]

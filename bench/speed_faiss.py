"""FAISS exact vs approximate search through the service's own ``service.index.VectorIndex``.

Vectors are synthetic and clustered, not uniform noise: a mixture of Gaussians on the unit sphere
(cluster centres drawn uniformly on the sphere, log-normal cluster weights, isotropic noise), each
vector L2-normalised; queries are fresh draws from the same mixture, never stored vectors.

Three ways an IVF index of n vectors comes to exist are measured:
- ``rebuild``: ``VectorIndex.build`` on all n vectors, exactly as the service calls it when it builds
  an index from stored vectors (start-up repair, a new adapter's index, ``reembed``, crossing the
  threshold): IVF-Flat, ``ivf_list_count(n)`` lists, FAISS's IVF k-means defaults (10 iterations on up
  to 256 points per list);
- ``grown``: what uploads do: the index becomes IVF when it reaches ``ann_threshold`` vectors
  (``VectorIndex.build`` on those), and every later vector is ``VectorIndex.add``-ed to it without
  retraining, so it keeps ``ivf_list_count(ann_threshold)`` lists however large it grows;
- ``sampled``: the ``rebuild`` layout (same lists, same nprobe) with the k-means trained on at most
  ``max_points`` points per list: a change the service could make to build faster.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import cast

import faiss
import numpy as np

from bench.speed_http import percentiles
from service.index import VectorIndex, ivf_list_count

# What an IVF index's k-means uses unless told otherwise (FAISS sets niter=10 for IVF quantizers).
_IVF_CP = faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 1, faiss.METRIC_INNER_PRODUCT).cp
FAISS_DEFAULT_NITER = int(_IVF_CP.niter)
FAISS_DEFAULT_MAX_POINTS = int(_IVF_CP.max_points_per_centroid)


def clustered_vectors(n: int, dim: int, clusters: int, noise: float, seed: int,
                      chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 L2-normalised vectors from a Gaussian mixture, and the centres' weights."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, clusters)
    weights /= weights.sum()
    out = np.empty((n, dim), dtype=np.float32)
    sigma = np.float32(noise / np.sqrt(dim))  # noise vector norm ~ ``noise`` against unit-norm centres
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = rng.choice(clusters, size=m, p=weights)
        block = centres[labels] + sigma * rng.standard_normal((m, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out, weights


def build_sampled(dim: int, ids: np.ndarray, vectors: np.ndarray, nprobe: int, max_points: int, niter: int,
                  seed: int) -> tuple[VectorIndex, dict]:
    """The service's IVF layout, k-means on at most ``max_points`` x lists points for ``niter`` rounds."""
    nlist = ivf_list_count(len(ids))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = niter
    index.cp.max_points_per_centroid = max_points
    index.cp.seed = seed
    t0 = time.perf_counter()
    index.train(np.ascontiguousarray(vectors, dtype=np.float32))
    train_s = time.perf_counter() - t0
    index.nprobe = min(nprobe, nlist)
    t0 = time.perf_counter()
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    wrapped = VectorIndex(index, ids)
    wrap_s = time.perf_counter() - t0
    return wrapped, {"train_s": train_s, "add_s": add_s + wrap_s, "build_s": train_s + add_s + wrap_s,
                     "nlist": nlist, "kmeans_points": int(min(len(ids), max_points * nlist)), "niter": niter}


def _single_query_search(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    ids, times = np.empty((len(queries), k), dtype=np.int64), []
    for row in range(len(queries)):
        t = time.perf_counter()
        _, found = index.search(queries[row : row + 1], k)
        times.append(time.perf_counter() - t)
        ids[row] = found[0]
    return ids, times


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    k = truth.shape[1]
    return np.array([len(set(f[f >= 0].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)])


def _set_nprobe(index: VectorIndex, nprobe: int) -> int:
    # downcast_index returns the concrete class (its stub says Index); the caller checked kind == "ivf".
    inner = cast(faiss.IndexIVF, faiss.downcast_index(index._inner()))
    inner.nprobe = min(nprobe, inner.nlist)
    return int(inner.nprobe)


def _evaluate_ann(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, k: int,
                  nprobes: Sequence[int]) -> list[dict]:
    rows = []
    for nprobe in nprobes:
        used = _set_nprobe(index, nprobe)
        _single_query_search(index, queries[: min(20, len(queries))], k)  # warm-up
        found, times = _single_query_search(index, queries, k)
        recall = recall_at_k(found, truth)
        rows.append({"nprobe": used, "recall_at_k": float(recall.mean()), "recall_min": float(recall.min()),
                     "queries_below_0.9": int((recall < 0.9).sum()), "latency_ms": percentiles(times, 1000.0)})
    return rows


def _grown(dim: int, ids: np.ndarray, vectors: np.ndarray, threshold: int, nprobe: int,
           chunk: int = 50_000) -> tuple[VectorIndex, dict]:
    t0 = time.perf_counter()
    index = VectorIndex.build(dim, ids[:threshold], vectors[:threshold], ann_threshold=threshold, nprobe=nprobe)
    first = time.perf_counter() - t0
    for start in range(threshold, len(ids), chunk):
        index.add(ids[start : start + chunk], vectors[start : start + chunk])
    total = time.perf_counter() - t0
    return index, {"build_s": total, "threshold_build_s": first, "add_s": total - first,
                   "nlist": ivf_list_count(threshold)}


def run_faiss(datasets: Sequence[dict], dim: int, noise: float, n_queries: int, exact_latency_queries: int,
              k: int, nprobes: Sequence[int], service_nprobe: int, service_ann_threshold: int,
              sampled_max_points: int, seed: int, log=print) -> dict:
    """``datasets``: [{"name", "clusters", "sizes": [n, ...], "builds": ["rebuild", "grown", "sampled"],
    "exact_latency": bool}]; the sizes of one dataset are prefixes of one draw."""
    out: dict = {
        "data": {"kind": "Gaussian mixture on the unit sphere (clustered, not uniform noise)", "dim": dim,
                 "centres": "uniform on the unit sphere", "cluster_weights": "log-normal(0, 1), normalised",
                 "noise_norm": noise, "l2_normalised": True, "queries": n_queries,
                 "queries_are": "fresh draws from the same mixture (not stored vectors)"},
        "k": k, "faiss_threads": faiss.omp_get_max_threads(), "service_nprobe": service_nprobe,
        "service_ann_threshold": service_ann_threshold,
        "kmeans_defaults": {"niter": FAISS_DEFAULT_NITER, "max_points_per_centroid": FAISS_DEFAULT_MAX_POINTS},
        "results": [],
    }
    for number, spec in enumerate(datasets):
        n_max = max(spec["sizes"])
        t0 = time.perf_counter()
        data, _ = clustered_vectors(n_max + n_queries, dim, spec["clusters"], noise, seed + number)
        gen_s = time.perf_counter() - t0
        queries = np.ascontiguousarray(data[n_max:])
        vectors = data[:n_max]
        for n in sorted(spec["sizes"]):
            log(f"faiss: {spec['name']} n={n}")
            ids = np.arange(1, n + 1, dtype=np.int64)
            sub = vectors[:n]
            row: dict = {"dataset": spec["name"], "clusters": spec["clusters"], "seed": seed + number,
                         "generate_s": gen_s, "n": n, "vectors_per_cluster_mean": n / spec["clusters"],
                         "nlist": ivf_list_count(n), "memory_gb_per_copy": n * dim * 4 / 2**30}

            t = time.perf_counter()
            exact = VectorIndex.build(dim, ids, sub, ann_threshold=n + 1, nprobe=service_nprobe)
            exact_build = time.perf_counter() - t
            assert exact.kind == "flat"
            t = time.perf_counter()
            _, truth = exact.search(queries, k)
            row["exact"] = {"build_s": exact_build, "kind": exact.kind, "batch_search_s": time.perf_counter() - t,
                            "batch_queries": n_queries}
            if spec.get("exact_latency", True) and exact_latency_queries:
                lat_q = min(exact_latency_queries, n_queries)
                _single_query_search(exact, queries[: min(5, lat_q)], k)  # warm-up
                found, times = _single_query_search(exact, queries[:lat_q], k)
                row["exact"].update({"latency_queries": lat_q, "latency_ms": percentiles(times, 1000.0),
                                     "self_recall": float(recall_at_k(found, truth[:lat_q]).mean())})
            del exact
            gc.collect()

            builds = {}
            for kind in spec["builds"]:
                if kind == "grown" and n < 2 * service_ann_threshold:
                    continue  # nothing to grow: the index would be (nearly) a rebuild
                log(f"faiss: {spec['name']} n={n} {kind} build")
                if kind == "rebuild":
                    t = time.perf_counter()
                    ann = VectorIndex.build(dim, ids, sub, ann_threshold=min(service_ann_threshold, n),
                                            nprobe=service_nprobe)
                    info = {"build_s": time.perf_counter() - t, "nlist": ivf_list_count(n),
                            "kmeans_points": int(min(n, FAISS_DEFAULT_MAX_POINTS * ivf_list_count(n))),
                            "niter": FAISS_DEFAULT_NITER,
                            "how": f"VectorIndex.build(all n vectors, ann_threshold=min({service_ann_threshold}, n), "
                                   f"nprobe={service_nprobe})"}
                elif kind == "grown":
                    ann, info = _grown(dim, ids, sub, service_ann_threshold, service_nprobe)
                    info["how"] = (f"VectorIndex.build(first {service_ann_threshold} vectors) then VectorIndex.add "
                                   "of the others in chunks of 50,000, without retraining")
                elif kind == "sampled":
                    ann, info = build_sampled(dim, ids, sub, service_nprobe, sampled_max_points,
                                              FAISS_DEFAULT_NITER, seed)
                    info["how"] = (f"rebuild layout, k-means on at most {sampled_max_points} points per list "
                                   f"(FAISS default {FAISS_DEFAULT_MAX_POINTS}), niter {FAISS_DEFAULT_NITER}")
                else:
                    raise ValueError(kind)
                assert ann.kind == "ivf" and ann.size == n
                builds[kind] = {**info, "by_nprobe": _evaluate_ann(ann, queries, truth, k, nprobes)}
                del ann
                gc.collect()
            row["ann"] = builds
            out["results"].append(row)
            del truth
            gc.collect()
        del data, vectors, queries
        gc.collect()
    return out

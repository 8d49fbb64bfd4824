"""Many adapters at once: the ``adapters`` section of ``bench.speed``.

A server holds many collections, each with its own (synthetic) text adapter of the default recipe's
shape, all active. Closed-loop clients search either all on one collection's adapter ("one") or each
request on a collection drawn at random ("mixed"); rounds alternate. Concurrent queries of different
adapters share one forward pass (``adapters.mixed_text``), so mixed traffic should cost about what
single-adapter traffic does. Also measured: the server's memory (RSS) before and after every
adapter was loaded, the first search of each adapter (it loads the file), and the same comparison
in-process on the text batcher alone (no HTTP, no database).

Synthetic adapters: the recipe's text prompts, residual map and a zero-shot mixing weight, each
tensor moved by seeded noise; they cost exactly what trained ones do. Text-only, so every adapter
answers from its collection's zero-shot index (a visual adapter would add one index per collection).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import torch

from adapters.artifact import serialize_adapter
from adapters.prompted import PromptedCLIP
from adapters.train import TrainConfig
from bench.speed_http import UploadItem, create_collection, percentiles, search_level
from service.adapter_store import AdapterEncoder
from service.batching import TextBatcher
from service.context import text_mixer

ADAPTED_WEIGHT = 0.75  # every adapter mixes with zero-shot (the recipe's usual outcome): same cost for all


def synthetic_adapter(backbone, seed: int) -> PromptedCLIP:
    config = replace(TrainConfig(method="text"), seed=seed).prompt_config()
    prompted = PromptedCLIP.from_backbone(backbone, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in prompted.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    prompted.set_adapted_weight(ADAPTED_WEIGHT)
    return prompted.eval()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def build_collections(client: httpx.Client, backbone, n: int, items: Sequence[UploadItem], seed: int) -> tuple[list[int], int]:
    """``n`` collections with ``items`` each and one active synthetic adapter (4 uploaders at once);
    their ids and one adapter's file size."""

    def one(c: int) -> tuple[int, int]:
        cid = create_collection(client, f"tenant-{c}")
        files = [("files", (it.filename, it.png, "image/png")) for it in items]
        meta = [{"captions": it.captions} for it in items]
        client.post(f"/collections/{cid}/images", files=files, data={"metadata": json.dumps(meta)}).raise_for_status()
        blob = serialize_adapter(synthetic_adapter(backbone, seed + c))
        client.post(f"/collections/{cid}/adapters", files={"file": ("a.safetensors", blob)},
                    data={"activate": "true"}).raise_for_status()
        return cid, len(blob)

    with ThreadPoolExecutor(max_workers=4) as pool:
        built = list(pool.map(one, range(n)))
    return [cid for cid, _ in built], built[0][1]


def first_searches(client: httpx.Client, ids: Sequence[int], queries: Sequence[str], k: int) -> dict:
    """One search per collection, sequential: each loads its adapter from disk."""
    times = []
    for i, cid in enumerate(ids):
        t = time.perf_counter()
        client.post(f"/collections/{cid}/search", json={"query": queries[i % len(queries)], "k": k}).raise_for_status()
        times.append(time.perf_counter() - t)
    return percentiles(times, 1000.0)


def _summary(level: dict) -> dict:
    return {k: v for k, v in level.items() if k != "latencies_ms"}


def http_rounds(server, ids: list[int], queries: Sequence[str], clients: int, k: int, requests: int,
                seconds: float, rounds: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    mixed_targets = [int(c) for c in rng.choice(ids, size=requests)]
    out: dict = {"one": [], "mixed": []}
    for _ in range(rounds):
        out["one"].append(_summary(search_level(server.base_url, [ids[0]], queries, clients, k, requests, seconds,
                                                server.pid)))
        out["mixed"].append(_summary(search_level(server.base_url, mixed_targets, queries, clients, k, requests,
                                                  seconds, server.pid)))
    one = statistics.median(r["throughput_rps"] for r in out["one"])
    mixed = statistics.median(r["throughput_rps"] for r in out["mixed"])
    out.update({
        "one_rps": one, "mixed_rps": mixed, "ratio": mixed / one,
        "one_p99_ms": statistics.median(r["latency_ms"]["p99"] for r in out["one"]),
        "mixed_p99_ms": statistics.median(r["latency_ms"]["p99"] for r in out["mixed"]),
        "one_p50_ms": statistics.median(r["latency_ms"]["p50"] for r in out["one"]),
        "mixed_p50_ms": statistics.median(r["latency_ms"]["p50"] for r in out["mixed"]),
        "distinct_collections_in_mixed": len(set(mixed_targets)),
    })
    return out


def batcher_rounds(backbone, n_adapters: int, queries: Sequence[str], clients: int, per_client: int,
                   rounds: int, seed: int) -> dict:
    """The text batcher alone: ``clients`` threads, each encoding one query at a time."""
    encoders = [AdapterEncoder(synthetic_adapter(backbone, seed + i), backbone, f"v{i}", 32) for i in range(n_adapters)]
    batcher = TextBatcher(text_mixer(backbone))
    rng = np.random.default_rng(seed)

    def run(pick) -> float:
        def worker(w: int) -> None:
            for j in range(per_client):
                batcher.encode_texts(pick(w, j), [queries[(w * per_client + j) % len(queries)]])

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return clients * per_client / (time.perf_counter() - t0)

    choice = rng.integers(0, n_adapters, size=(clients, per_client))
    run(lambda w, j: encoders[0])  # warm-up
    one, mixed = [], []
    for _ in range(rounds):
        one.append(run(lambda w, j: encoders[0]))
        mixed.append(run(lambda w, j: encoders[int(choice[w, j])]))
    return {"adapters": n_adapters, "clients": clients, "queries_per_client": per_client,
            "one_qps": one, "mixed_qps": mixed,
            "ratio": statistics.median(mixed) / statistics.median(one)}


def run_adapters(server, backbone, n_collections: int, images: Sequence[UploadItem], queries: Sequence[str],
                 clients: int, k: int, requests: int, seconds: float, rounds: int, seed: int,
                 log=print) -> dict:
    with httpx.Client(base_url=server.base_url, timeout=600.0) as client:
        t0 = time.perf_counter()
        ids, adapter_bytes = build_collections(client, backbone, n_collections, images, seed)
        setup_s = time.perf_counter() - t0
        log(f"adapters: {n_collections} collections with an adapter each in {setup_s:.0f} s")
        rss_before = rss_mb(server.pid)
        cold = first_searches(client, ids, queries, k)
        rss_loaded = rss_mb(server.pid)
    http = http_rounds(server, ids, queries, clients, k, requests, seconds, rounds, seed)
    rss_after = rss_mb(server.pid)
    log(f"adapters over HTTP: one {http['one_rps']:.1f} req/s, mixed {http['mixed_rps']:.1f} req/s "
        f"({http['ratio']:.2f}x), p99 {http['one_p99_ms']:.1f} / {http['mixed_p99_ms']:.1f} ms")
    in_process = batcher_rounds(backbone, min(n_collections, 1000), queries, clients, max(20, requests // clients),
                                rounds, seed)
    log(f"adapters, text batcher alone: {in_process['ratio']:.2f}x")
    tensor_bytes = AdapterEncoder(synthetic_adapter(backbone, seed), backbone, "v1", 1).nbytes
    return {
        "collections": n_collections, "images_per_collection": len(images), "k": k, "clients": clients,
        "adapter_config": synthetic_adapter(backbone, seed).config.to_dict(), "adapted_weight": ADAPTED_WEIGHT,
        "adapter_file_bytes": adapter_bytes, "adapter_tensor_bytes": tensor_bytes,
        "setup_s": setup_s,
        "first_search_ms": cold,
        "server_rss_mb": {"before_first_searches": rss_before, "after_every_adapter_loaded": rss_loaded,
                          "after_traffic": rss_after},
        "http": http, "text_batcher_only": in_process,
        "traffic": "closed loop; 'one': every request on the first collection; 'mixed': request i on a collection "
                   "drawn uniformly (seeded) from all; same queries, alternating rounds, medians",
    }

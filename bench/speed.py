"""The speed half of the offline benchmark: one command, four measurements, ratios within one run.

    python -m bench.speed [--quick] [--out docs/bench]

1. ingest: images/s through the real HTTP API (uvicorn subprocess, fresh data dir, multipart batches
   of PNGs with captions) vs a bare decode + preprocess + encode_image loop with the same model,
   batch size and torch threads, alternating rounds;
2. search: latency p50/p95/p99 and req/s over loopback HTTP with 1, 8 and 32 concurrent clients;
3. tuning: ``train_adapter`` wall time with and without the frozen-activation cache, same data + seed,
   and whether the results agree;
4. FAISS: exact vs IVF through ``service.index.VectorIndex`` on clustered synthetic vectors: recall@10
   against exact, single-query latency, build time;
5. adapters: many collections with an adapter each, mixed query traffic vs all queries on one adapter
   (``bench.speed_adapters``): throughput ratio, p99 latency, server memory;
6. cli: wall time of one ``prompt-adapters search`` against the running server (with ingest).

Writes ``speed.json`` (every number, command, machine, model, sizes, seeds, versions),
``speed.md`` (a table with targets, met or not) and ``latency.png`` into ``--out``.
The machine is shared and noisy: compare the ratios, not the absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

import faiss  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from adapters.backbone import OFFLINE_CHECKPOINT, OFFLINE_MODEL_NAME, load_backbone  # noqa: E402
from bench.machine import machine_info as shared_machine_info  # noqa: E402
from bench.speed_adapters import run_adapters  # noqa: E402
from bench.speed_faiss import run_faiss  # noqa: E402
from bench.speed_http import (  # noqa: E402
    REPO_ROOT,
    UploadItem,
    bare_encode_loop,
    create_collection,
    framework_floor,
    search_levels,
    start_server,
    upload_batches,
)
from bench.speed_tuning import run_tuning  # noqa: E402
from bench.world import generate, load_spec  # noqa: E402
from service.config import Settings  # noqa: E402
from service.index import VectorIndex  # noqa: E402

TARGETS = {
    "ingest": 0.9,  # service images/s >= 0.9 x bare loop
    "search": 2.0,  # p50 at 8 clients <= 2 x p50 at 1 client
    "tuning": 3.0,  # >= 3x faster with the cache, same result
    "recall": 0.95,  # ANN recall@10 against exact
    "adapters": 0.9,  # mixed-adapter throughput >= 0.9 x all queries on one adapter
    "cli_s": 2.0,  # one CLI search against a running server < 2 s
}


@dataclass(frozen=True)
class Sizes:
    ingest_images: int
    ingest_batch: int
    ingest_rounds: int
    search_levels: tuple[int, ...]
    search_requests: int  # per concurrency level (after warm-up)
    search_seconds: float  # per level: no new request after this
    search_k: int
    search_query_items: int
    tune_train: int
    tune_val: int
    tune_epochs: int
    tune_batch: int
    tune_repeats: int
    visual_prompted_last: tuple[int, ...]  # visual prompts in the tower's last N blocks (start = depth - N)
    faiss_main_sizes: tuple[int, ...]  # one clustered draw, prefixes of it
    faiss_main_clusters: int
    faiss_hard_n: int  # a harder draw: few, large clusters, each split over many IVF lists
    faiss_hard_clusters: int
    faiss_queries: int
    faiss_exact_latency_queries: int
    faiss_noise: float
    faiss_nprobes: tuple[int, ...]
    faiss_sampled_max_points: int
    adapter_collections: int  # collections with one adapter each
    adapter_images: int  # images per such collection
    adapter_requests: int  # per round and traffic kind
    adapter_seconds: float
    adapter_rounds: int
    cli_repeats: int


FULL = Sizes(
    ingest_images=2000, ingest_batch=32, ingest_rounds=3,
    search_levels=(1, 8, 32), search_requests=1000, search_seconds=60.0, search_k=10, search_query_items=400,
    tune_train=1024, tune_val=256, tune_epochs=3, tune_batch=64, tune_repeats=2, visual_prompted_last=(4, 2, 1),
    faiss_main_sizes=(100_000, 1_000_000), faiss_main_clusters=1000, faiss_hard_n=100_000, faiss_hard_clusters=32,
    faiss_queries=1000, faiss_exact_latency_queries=200, faiss_noise=0.8, faiss_nprobes=(8, 16, 32, 64, 128),
    faiss_sampled_max_points=40,
    adapter_collections=1000, adapter_images=2, adapter_requests=1000, adapter_seconds=60.0, adapter_rounds=2,
    cli_repeats=5,
)
QUICK = Sizes(
    ingest_images=200, ingest_batch=32, ingest_rounds=2,
    search_levels=(1, 8, 32), search_requests=50, search_seconds=10.0, search_k=10, search_query_items=60,
    tune_train=96, tune_val=32, tune_epochs=1, tune_batch=32, tune_repeats=1, visual_prompted_last=(2,),
    faiss_main_sizes=(50_000,), faiss_main_clusters=50, faiss_hard_n=20_000, faiss_hard_clusters=4,
    faiss_queries=200, faiss_exact_latency_queries=50, faiss_noise=0.8, faiss_nprobes=(8, 32),
    faiss_sampled_max_points=40,
    adapter_collections=8, adapter_images=2, adapter_requests=40, adapter_seconds=5.0, adapter_rounds=1,
    cli_repeats=2,
)
FLOOR_SECONDS = 8.0  # per request kind of the framework floor (search section)
ADAPTER_CLIENTS = 8
ADAPTER_K = 2  # each collection holds adapter_images images: setting up 1,000 stays a few minutes
# The second, user-sized model (ingest and search only): sizes that keep it to a few minutes here.
REALISTIC_MODEL = "ViT-B-32"
REALISTIC_INGEST_IMAGES = 192
REALISTIC_SEARCH_REQUESTS = 200
REALISTIC_SEARCH_SECONDS = 30.0
SEEDS = {"ingest_images": 101, "search_queries": 202, "tuning_items": 303, "tuning": 0, "faiss": 404, "adapters": 505}


def log(message: str) -> None:
    print(f"[bench.speed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine

def machine_info() -> dict:
    return shared_machine_info({"faiss": faiss.__version__, "numpy": np.__version__, "httpx": httpx.__version__})


def busiest_processes(limit: int = 4) -> list[str]:
    """Other processes using the CPU when the run starts or ends (the machine is shared)."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    me = str(os.getpid())
    rows = [" ".join(line.split())[:120] for line in out if line.split() and line.split()[0] != me]
    return [r for r in rows if not r.split()[2].startswith("ps")][:limit]


class LoadSampler:
    """The 1-minute load average every ``period`` seconds during the run (other work on the machine)."""

    samples: list[tuple[float, float]]  # (seconds since the start, load average)

    def __init__(self, period: float = 10.0):
        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append((round(time.perf_counter() - start, 1), round(os.getloadavg()[0], 2)))
            self._stop.wait(self.period)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict:
        loads = [v for _, v in self.samples] or [float("nan")]
        return {"period_s": self.period, "min": min(loads), "median": statistics.median(loads), "max": max(loads),
                "samples": self.samples}


def git_state() -> dict:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": run("rev-parse", "HEAD") or None, "dirty": bool(run("status", "--porcelain"))}


# --------------------------------------------------------------------------- model

def load_bench_backbone():
    """The miniworld backbone, trained checkpoint when present, else its random init (same timing);
    returns it and the environment that makes the server load exactly the same one."""
    if OFFLINE_CHECKPOINT.exists():
        backbone = load_backbone(OFFLINE_MODEL_NAME, str(OFFLINE_CHECKPOINT))
        env = {"PAS_BACKBONE_MODEL": OFFLINE_MODEL_NAME, "PAS_BACKBONE_PRETRAINED": str(OFFLINE_CHECKPOINT)}
    else:
        backbone = load_backbone(OFFLINE_MODEL_NAME)
        env = {"PAS_BACKBONE_MODEL": OFFLINE_MODEL_NAME, "PAS_BACKBONE_PRETRAINED": ""}
    return backbone, env


def model_info(backbone) -> dict:
    visual = backbone.model.visual
    return {
        **backbone.identity.to_dict(),
        "weights": "trained checkpoint" if backbone.identity.checkpoint_sha256 else "random init (timing only)",
        "image_blocks": len(visual.transformer.resblocks),
        "parameters": sum(p.numel() for p in backbone.model.parameters()),
        "device": str(backbone.device), "precision": backbone.precision,
        "torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- sections

def make_upload_items(n: int, seed: int) -> list[UploadItem]:
    items = generate(load_spec("broad"), n, seed)
    out = []
    for i, item in enumerate(items):
        buffer = io.BytesIO()
        item.image.save(buffer, format="PNG")
        out.append(UploadItem(f"img{i:06d}.png", buffer.getvalue(), list(item.captions), item.category,
                              list(item.attributes)))
    return out


def make_queries(n_items: int, seed: int) -> list[str]:
    """Varied query texts: captions of unseen scenes, plus short attribute + category phrases."""
    queries: list[str] = []
    for item in generate(load_spec("broad"), n_items, seed):
        queries.extend(item.captions)
        if item.attributes and item.category:
            queries.append(f"{item.attributes[0]} {item.category}")
    seen, unique = set(), []
    for q in queries:
        if q not in seen:
            seen.add(q)
            unique.append(q)
    return unique


def measure_ingest(server, backbone, sizes: Sizes) -> tuple[dict, int]:
    items = make_upload_items(sizes.ingest_images, SEEDS["ingest_images"])
    warm = make_upload_items(2 * sizes.ingest_batch, SEEDS["ingest_images"] + 1)
    rounds = []
    with httpx.Client(base_url=server.base_url, timeout=600.0) as client:
        # Warm-up of both paths (first-call costs of torch, the DB, the index registry).
        upload_batches(client, create_collection(client, "warmup"), warm, sizes.ingest_batch)
        bare_encode_loop(backbone, warm, sizes.ingest_batch)
        search_collection = None
        for r in range(sizes.ingest_rounds):
            bare = bare_encode_loop(backbone, items, sizes.ingest_batch)
            cid = create_collection(client, f"ingest-{r}")
            service = upload_batches(client, cid, items, sizes.ingest_batch, server.pid)
            search_collection = search_collection or cid
            rounds.append({"bare": bare, "service": service,
                           "ratio": service["images_per_s"] / bare["images_per_s"]})
            log(f"ingest round {r}: bare {bare['images_per_s']:.1f} img/s, service {service['images_per_s']:.1f} img/s")
    bare_ips = statistics.median(r["bare"]["images_per_s"] for r in rounds)
    service_ips = statistics.median(r["service"]["images_per_s"] for r in rounds)
    assert search_collection is not None  # every round sets it, and the medians above raise when none ran
    n = len(items)
    cpu_ms_per_image = {
        "bare_loop": 1000.0 * statistics.median(r["bare"]["cpu_s"] for r in rounds) / n,
        "server": 1000.0 * statistics.median(r["service"]["server_cpu_s"] for r in rounds) / n,
        "client": 1000.0 * statistics.median(r["service"]["client_cpu_s"] for r in rounds) / n,
    }
    return {
        "images": len(items), "image_size": load_spec("broad").image_size,
        "png_bytes_mean": statistics.mean(len(i.png) for i in items),
        "captions_per_image_mean": statistics.mean(len(i.captions) for i in items),
        "batch": sizes.ingest_batch, "rounds": rounds,
        "order": "per round: bare loop, then the same images uploaded into a new collection (no duplicates)",
        "bare_images_per_s": bare_ips, "service_images_per_s": service_ips,
        "ratio": service_ips / bare_ips,
        "ratio_per_round": [r["ratio"] for r in rounds],
        "cpu_ms_per_image": cpu_ms_per_image,
        "cores_busy": {"bare_loop": bare_ips * cpu_ms_per_image["bare_loop"] / 1000.0,
                       "server": service_ips * cpu_ms_per_image["server"] / 1000.0},
        "bare_loop_is": "PIL decode of the PNG bytes + backbone.encode_images (preprocess + encode_image), "
                        "same batch size, in the bench process with the same torch thread count",
        "service_is": "sequential multipart POST /collections/{id}/images of `batch` PNGs with captions, "
                      "category and attributes; wall time from the first request to the last response",
    }, search_collection


def measure_search(server, collection_id: int, backbone, sizes: Sizes) -> dict:
    queries = make_queries(sizes.search_query_items, SEEDS["search_queries"])
    levels = search_levels(server.base_url, collection_id, queries, sizes.search_levels, sizes.search_k,
                           sizes.search_requests, sizes.search_seconds, server.pid)
    for level in levels:
        log(f"search {level['clients']:>2} clients: p50 {level['latency_ms'].get('p50', float('nan')):.1f} ms, "
            f"{level['throughput_rps']:.1f} req/s, errors {level['errors']}")
    floor = framework_floor(server.base_url, collection_id, max(sizes.search_levels[:2]), FLOOR_SECONDS, server.pid)
    for level in floor:
        log(f"{level['path']} at {level['clients']} clients: {level['throughput_rps']:.0f} req/s, "
            f"{level['server_cpu_ms_per_request']:.2f} ms server CPU per request")
    by = {lv["clients"]: lv for lv in levels}
    ratio = None
    if 1 in by and 8 in by and by[1]["latency_ms"]["n"] and by[8]["latency_ms"]["n"]:
        ratio = by[8]["latency_ms"]["p50"] / by[1]["latency_ms"]["p50"]
    return {
        "collection_images": sizes.ingest_images, "k": sizes.search_k, "distinct_queries": len(queries),
        "query_examples": queries[:5], "max_requests_per_level": sizes.search_requests,
        "max_seconds_per_level": sizes.search_seconds, "levels": levels, "p50_ratio_8_vs_1": ratio,
        "framework_floor": floor,
        "client": "httpx.AsyncClient in the bench process, keep-alive connections, closed loop "
                  "(each client sends its next query when the previous answer arrives); warm-up requests "
                  "not recorded; the load generator shares the machine's cores with the server",
        "components": search_components(backbone, sizes),
    }


def measure_cli(server, collection_id: int, repeats: int) -> dict:
    """Wall time of `prompt-adapters search` as a user runs it, the server holding the data directory,
    beside a bare interpreter start on the same machine."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PAS_DATA_DIR": server.env["PAS_DATA_DIR"]}
    search_cmd = [sys.executable, "-m", "service.cli", "search", str(collection_id), "a red circle", "-k", "5"]
    bare_cmd = [sys.executable, "-c", "pass"]

    def wall(cmd) -> float:
        t = time.perf_counter()
        done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed: {done.stderr[-2000:]}")
        return time.perf_counter() - t

    wall(search_cmd)  # warm the page cache
    search_s = [wall(search_cmd) for _ in range(repeats)]
    bare_s = [wall(bare_cmd) for _ in range(repeats)]
    return {"command": "prompt-adapters search <id> 'a red circle' -k 5 (run as " + shlex.join(search_cmd[:3]) + ")",
            "search_s": search_s, "median_s": statistics.median(search_s),
            "bare_python_median_s": statistics.median(bare_s)}


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def search_components(backbone, sizes: Sizes) -> dict:
    """In-process costs of the parts of one search (evidence for batching concurrent queries)."""
    queries = make_queries(60, SEEDS["search_queries"] + 1)
    repeats = 30 if sizes.search_requests <= QUICK.search_requests else min(100, sizes.search_requests // 10)
    encode = {}
    for batch in (1, 8, 32):
        texts = (queries * math.ceil(batch / len(queries)))[:batch]
        ms = _median_ms(lambda texts=texts: backbone.encode_texts(texts), repeats)
        encode[str(batch)] = {"ms_per_call": ms, "ms_per_query": ms / batch}
    dim = backbone.identity.embed_dim
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((sizes.ingest_images, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex.build(dim, np.arange(1, len(vectors) + 1), vectors, ann_threshold=10**12, nprobe=32)
    query = vectors[:1].copy()
    return {
        "encode_texts": encode,
        "flat_search_1_query_ms": _median_ms(lambda: index.search(query, sizes.search_k), repeats),
        "note": "medians in the bench process (same model, same torch threads), no HTTP, no DB",
        "request_parts": search_request_parts(backbone, sizes),
    }


def search_request_parts(backbone, sizes: Sizes) -> dict:
    """Where one search request's milliseconds go: the steps of the search handler, called in order
    in the bench process on a real data directory (SQLite, FAISS, the same model), one query at a time."""
    from fastapi.testclient import TestClient

    from service import adapter_versions, feedback, search_terms
    from service import search as searching
    from service.app import create_app
    from service.schemas import SearchHit, SearchRequest, SearchResponse

    items = make_upload_items(min(sizes.ingest_images, 500), SEEDS["ingest_images"] + 2)
    queries = make_queries(60, SEEDS["search_queries"] + 3)
    repeats = 30 if sizes.search_requests <= QUICK.search_requests else 200
    steps: dict[str, list[float]] = {k: [] for k in ("parse", "resolve", "encode", "index_and_rows", "hits",
                                                     "record_search", "response_json", "sum")}
    with tempfile.TemporaryDirectory(prefix="bench-parts-") as tmp, \
            TestClient(create_app(Settings(data_dir=Path(tmp)), backbone), base_url="http://localhost") as client:
        ctx = client.app.state.context
        cid = create_collection(client, "parts")
        upload_batches(client, cid, items, sizes.ingest_batch)
        for n in range(repeats + 10):
            marks = [time.perf_counter()]
            body = SearchRequest.model_validate({"query": queries[n % len(queries)], "k": sizes.search_k})
            marks.append(time.perf_counter())
            who = adapter_versions.resolve(ctx, cid, body.adapter)
            marks.append(time.perf_counter())
            query = search_terms.query_vectors(ctx, cid, who, query=body.query, image_id=None, terms=None)
            marks.append(time.perf_counter())
            hits = searching.search(ctx, cid, query.vectors, body.k, who)
            marks.append(time.perf_counter())
            results = [SearchHit(**vars(h)) for h in hits[0]]
            marks.append(time.perf_counter())
            # Where the handler tells one text from a list; make_queries gives one text.
            assert isinstance(body.query, str)
            [search_id] = feedback.record_searches(ctx, cid, body.adapter, who.name, [feedback.search_query(body.query)],
                                                   [[h.image_id for h in hits[0]]])
            marks.append(time.perf_counter())
            SearchResponse(adapter=who.name, results=results, search_id=search_id).model_dump_json()
            marks.append(time.perf_counter())
            if n >= 10:  # warm-up not recorded
                for name, a, b in zip(list(steps)[:-1], marks[:-1], marks[1:], strict=True):
                    steps[name].append(1000.0 * (b - a))
                steps["sum"].append(1000.0 * (marks[-1] - marks[0]))
    return {"median_ms": {k: statistics.median(v) for k, v in steps.items()}, "requests": repeats,
            "collection_images": len(items),
            "note": "the handler's steps (api/search.py) called in order, one query at a time, no HTTP: "
                    "parse = request body validation, resolve = which adapter answers (one DB read), "
                    "encode = text batcher, index_and_rows = FAISS + image rows, record_search = the stored "
                    "search (one DB write + commit), response_json = response model + JSON"}


def measure_tuning(backbone, sizes: Sizes) -> dict:
    items = generate(load_spec("broad"), sizes.tune_train + sizes.tune_val, SEEDS["tuning_items"])
    out = run_tuning(backbone, items, sizes.tune_train, sizes.tune_epochs, sizes.tune_batch, sizes.tune_repeats,
                     sizes.visual_prompted_last, SEEDS["tuning"])
    for start, pair in out["visual"].items():
        log(f"tuning visual_start={start}: wall speedup {pair['wall_speedup']:.2f}x, "
            f"step speedup {pair['step_speedup']:.2f}x, same result {pair['same_result']['equal_within_tolerance']}")
    log(f"tuning text-only: wall speedup {out['text']['wall_speedup']:.2f}x (emulated uncached)")
    return out


def measure_faiss(sizes: Sizes) -> dict:
    settings = Settings()
    datasets = [
        {"name": "main", "clusters": sizes.faiss_main_clusters, "sizes": list(sizes.faiss_main_sizes),
         "builds": ["rebuild", "grown", "sampled"], "exact_latency": True},
        {"name": "hard", "clusters": sizes.faiss_hard_clusters, "sizes": [sizes.faiss_hard_n],
         "builds": ["rebuild"], "exact_latency": False},
    ]
    return run_faiss(
        datasets, dim=512, noise=sizes.faiss_noise, n_queries=sizes.faiss_queries,
        exact_latency_queries=sizes.faiss_exact_latency_queries, k=10, nprobes=sizes.faiss_nprobes,
        service_nprobe=settings.ann_nprobe, service_ann_threshold=settings.ann_threshold,
        sampled_max_points=sizes.faiss_sampled_max_points, seed=SEEDS["faiss"], log=log,
    )


# --------------------------------------------------------------------------- verdicts and reports

def service_verdicts(ingest: dict | None, search: dict | None, model: str) -> list[dict]:
    rows = []
    if ingest:
        rows.append({"what": f"ingest throughput, service / bare encode loop ({model})", "target": f">= {TARGETS['ingest']}x",
                     "value": f"{ingest['ratio']:.2f}x ({ingest['service_images_per_s']:.0f} vs "
                              f"{ingest['bare_images_per_s']:.0f} img/s)",
                     "met": ingest["ratio"] >= TARGETS["ingest"]})
    if search and search.get("p50_ratio_8_vs_1") is not None:
        by = {lv["clients"]: lv for lv in search["levels"]}
        ratio = search["p50_ratio_8_vs_1"]
        errors = sum(lv["errors"] for lv in search["levels"])
        rows.append({"what": f"search p50 at 8 clients / p50 at 1 client ({model})", "target": f"<= {TARGETS['search']}x",
                     "value": f"{ratio:.2f}x ({by[8]['latency_ms']['p50']:.1f} vs {by[1]['latency_ms']['p50']:.1f} ms)"
                              + (f", {errors} errors" if errors else ""),
                     "met": ratio <= TARGETS["search"] and errors == 0})
    return rows


def verdicts(report: dict) -> list[dict]:
    rows = service_verdicts(report.get("ingest"), report.get("search"), report["model"]["model_name"])
    real = report.get("realistic")
    if real:
        rows += service_verdicts(real.get("ingest"), real.get("search"), f"{real['model']['model_name']}, random init")
    tuning = report.get("tuning")
    if tuning:
        # The target is about a step (the "tuning step with the cache vs without"); wall time is
        # shown beside it with the one-time work both runs share.
        def row(what: str, pair: dict) -> dict:
            same = pair["same_result"]["equal_within_tolerance"]
            return {"what": what, "target": f">= {TARGETS['tuning']}x per step, same result",
                    "value": f"steps {pair['step_speedup']:.2f}x ({pair['uncached_step_ms']:.0f} vs "
                             f"{pair['cached_step_ms']:.0f} ms), result {'same' if same else 'DIFFERENT'}; wall "
                             f"{pair['wall_speedup']:.2f}x ({pair['uncached_wall_s']:.1f} vs {pair['cached_wall_s']:.1f} s, "
                             f"of which set-up {pair['uncached_setup_s']:.1f} vs {pair['cached_setup_s']:.1f} s)",
                    "met": pair["step_speedup"] >= TARGETS["tuning"] and same}
        for start, pair in tuning["visual"].items():
            rows.append(row(f"tuning step, visual prompts from block {start} of {tuning['image_blocks']}: "
                            "uncached / cached", pair))
        rows.append(row("tuning step, text-only: images re-encoded each step (emulated) / encoded once", tuning["text"]))
    ad = report.get("adapters")
    if ad:
        h = ad["http"]
        rows.append({"what": f"search throughput, {ad['collections']:,} collections' adapters mixed / all queries on one "
                             f"adapter ({ad['clients']} clients, HTTP)", "target": f">= {TARGETS['adapters']}x",
                     "value": f"{h['ratio']:.2f}x ({h['mixed_rps']:.1f} vs {h['one_rps']:.1f} req/s; p99 "
                              f"{h['mixed_p99_ms']:.1f} vs {h['one_p99_ms']:.1f} ms)",
                     "met": h["ratio"] >= TARGETS["adapters"]})
    cli = report.get("cli")
    if cli:
        rows.append({"what": "one CLI search against a running server (wall, new process)", "target": f"< {TARGETS['cli_s']:.0f} s",
                     "value": f"{cli['median_s']:.2f} s (bare python start {cli['bare_python_median_s']:.2f} s)",
                     "met": cli["median_s"] < TARGETS["cli_s"]})
    fa = report.get("faiss")
    if fa:
        main = [r for r in fa["results"] if r["dataset"] == "main"]
        hard = [r for r in fa["results"] if r["dataset"] == "hard"]
        # The target is about the largest collection; the harder draw is reported beside it.
        for result in ([max(main, key=lambda r: r["n"])] if main else []) + hard:
            for name, build in result["ann"].items():
                at = [r for r in build["by_nprobe"] if r["nprobe"] == min(fa["service_nprobe"], build["nlist"])]
                if not at:
                    continue
                r = at[0]
                exact = result["exact"].get("latency_ms")
                vs = f" vs exact {exact['p50']:.1f} ms" if exact else ""
                label = {"rebuild": "rebuilt index (VectorIndex.build)", "grown": "grown index (built at the "
                         "threshold, then added to)", "sampled": "sampled-k-means index (a proposed change)"}[name]
                rows.append({"what": f"ANN recall@{fa['k']}, {result['dataset']} data, n={result['n']:,}, {label}, "
                                     f"{build['nlist']} lists, service nprobe={r['nprobe']}",
                             "target": f">= {TARGETS['recall']}",
                             "value": f"{r['recall_at_k']:.3f} (p50 {r['latency_ms']['p50']:.2f} ms{vs}; "
                                      f"build {build['build_s']:.0f} s)",
                             "met": r["recall_at_k"] >= TARGETS["recall"]})
    return rows


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def service_markdown(ingest: dict | None, search: dict | None, level: str) -> list[str]:
    lines: list[str] = []
    if ingest:
        lines += ["", f"##{level} Ingest", "",
                  f"{ingest['images']} PNGs of {ingest['image_size']} px (mean {ingest['png_bytes_mean']:.0f} bytes, "
                  f"{ingest['captions_per_image_mean']:.2f} captions each), batches of {ingest['batch']}, "
                  f"{len(ingest['rounds'])} alternating rounds; medians.", "",
                  "| round | bare loop img/s | service img/s | ratio | service request p50 / p95 (ms) |",
                  "|---|---|---|---|---|"]
        for i, r in enumerate(ingest["rounds"]):
            req = r["service"]["request_s"]
            lines.append(f"| {i} | {r['bare']['images_per_s']:.1f} | {r['service']['images_per_s']:.1f} | "
                         f"{r['ratio']:.2f} | {req['p50'] * 1000:.0f} / {req['p95'] * 1000:.0f} |")
        lines.append(f"| median | {ingest['bare_images_per_s']:.1f} | {ingest['service_images_per_s']:.1f} | "
                     f"{ingest['ratio']:.2f} | |")

    if search:
        lines += ["", f"##{level} Search", "",
                  f"POST /collections/{{id}}/search, k={search['k']}, a collection of {search['collection_images']} "
                  f"images (exact index), {search['distinct_queries']} distinct query texts, at most "
                  f"{search['max_requests_per_level']} requests or {search['max_seconds_per_level']:.0f} s per level. "
                  "Server and client CPU: average cores busy during the level.", "",
                  "| clients | requests | p50 ms | p95 ms | p99 ms | req/s | server cores | client cores | errors |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for lv in search["levels"]:
            lat = lv["latency_ms"]
            lines.append(f"| {lv['clients']} | {lv['requests_ok']} | {_fmt(lat.get('p50'))} | {_fmt(lat.get('p95'))} | "
                         f"{_fmt(lat.get('p99'))} | {lv['throughput_rps']:.1f} | {lv['server_cpu_cores']:.2f} | "
                         f"{lv['client_cpu_cores']:.2f} | {lv['errors']} |")
        comp = search["components"]
        enc = comp["encode_texts"]
        lines += ["", "In-process cost of the parts (no HTTP, no DB): `encode_texts` "
                  + ", ".join(f"{b} text{'s' if b != '1' else ''} {v['ms_per_call']:.2f} ms ({v['ms_per_query']:.2f} ms/query)"
                              for b, v in enc.items())
                  + f"; flat FAISS search of one query {comp['flat_search_1_query_ms']:.3f} ms.",
                  ]
        parts = comp.get("request_parts")
        if parts:
            med = parts["median_ms"]
            lines += ["", f"Where one request's milliseconds go (medians over {parts['requests']} queries, "
                      f"{parts['collection_images']} images, no HTTP; {parts['note']}): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in med.items() if k != "sum")
                      + f"; sum {med['sum']:.2f} ms, against a p50 of "
                      + f"{search['levels'][0]['latency_ms'].get('p50', float('nan')):.2f} ms over HTTP at 1 client."]
        lines += (["", "![latency distribution](latency.png)"] if not level else [])

    return lines


def reasons_markdown(report: dict) -> list[str]:
    """What this run's own numbers say about each target not met (measured, not guessed)."""
    out = []
    search = report.get("search")
    if search and search.get("p50_ratio_8_vs_1") is not None and search["p50_ratio_8_vs_1"] > TARGETS["search"]:
        by = {lv["clients"]: lv for lv in search["levels"]}
        one, eight = by[1], by[8]
        cpu_ms = 1000.0 * eight["server_cpu_cores"] / eight["throughput_rps"]
        parts = search["components"].get("request_parts", {}).get("median_ms", {})
        serial = sum(v for k, v in parts.items() if k not in ("encode", "sum"))
        out.append(
            f"- search, 8 vs 1 client: with 8 closed-loop clients the server answers {eight['throughput_rps']:.0f} req/s "
            f"on {eight['server_cpu_cores']:.2f} busy cores, i.e. {cpu_ms:.1f} ms of server CPU per request, so a request "
            f"waits for the 7 others (p50 {eight['latency_ms']['p50']:.1f} ms ≈ 8 / {eight['throughput_rps']:.0f} req/s). "
            f"Only the text encode is shared between queued requests (it is batched, across adapters too); the per-request "
            f"steps outside it add up to {serial:.1f} ms in-process (see 'Where one request's milliseconds go': the stored "
            f"search's write and the adapter/row reads dominate, FAISS is {search['components']['flat_search_1_query_ms']:.3f} ms), "
            f"plus HTTP parsing and the event loop; that Python work holds the GIL, so it does not spread over the 2 cores. "
            f"≤ 2× needs the server to answer ~4× the 1-client rate ({one['throughput_rps']:.0f} req/s) on the same 2 cores; "
            f"even spread perfectly over both cores, 8 requests × {cpu_ms:.1f} ms / 2 cores = {4 * cpu_ms:.0f} ms, "
            f"{4 * cpu_ms / one['latency_ms']['p50']:.1f}× the 1-client p50."
            + "".join(f" For scale, {f['path']} at {f['clients']} clients costs the server {f['server_cpu_ms_per_request']:.2f} ms "
                      f"of CPU per request ({f['throughput_rps']:.0f} req/s, {f['server_cpu_cores']:.2f} cores busy)."
                      for f in search.get("framework_floor", [])))
    ingest = report.get("ingest")
    if ingest and ingest["ratio"] < TARGETS["ingest"]:
        cpu, busy = ingest.get("cpu_ms_per_image"), ingest.get("cores_busy")
        measured = (
            f" CPU time per image: bare loop {cpu['bare_loop']:.2f} ms ({busy['bare_loop']:.2f} cores busy), server "
            f"{cpu['server']:.2f} ms ({busy['server']:.2f} cores busy), plus {cpu['client']:.2f} ms in the uploading "
            f"client on the same machine. The service spends about {cpu['server'] - cpu['bare_loop']:.2f} ms more CPU "
            "per image than the bare loop (its own work, and the encode itself running slower beside the file-writing "
            "and request threads); on this CPU-only machine that work competes with the encoder for the same cores, "
            f"so even with the cores as busy as in the bare loop the ratio could not pass about "
            f"{cpu['bare_loop'] / (cpu['server'] + cpu['client']):.2f} (on a GPU the encode leaves the CPU and the two "
            "overlap)."
        ) if cpu else ""
        out.append(
            f"- ingest: the bare loop only decodes and encodes ({ingest['bare_images_per_s']:.0f} img/s); the service also "
            "parses multipart bodies, hashes, writes and fsyncs every file, and commits rows, captions and vectors per "
            f"request.{measured} With the user-sized model below, the encoder dominates and the service keeps up.")
    tuning = report.get("tuning")
    pairs = [*tuning["visual"].values(), tuning["text"]] if tuning else []
    if tuning and any(p["step_speedup"] < TARGETS["tuning"] for p in pairs):  # no tuning: no pairs
        text = tuning["text"]
        out.append(f"- tuning: {tuning.get('ceiling_note', '')} Text-only prompts sit in the text tower, which every "
                   f"step runs forward and backward ({text['cached_step_ms']:.0f} ms of a {text['uncached_step_ms']:.0f} ms "
                   "uncached step), so caching the frozen images saves only their forward pass. Wall time also counts "
                   "the set-up both runs share (preprocessing, the frozen side's one-time encode; the prefix cache in "
                   "the cached run) and validation, which the cache does not shorten.")
    cli = report.get("cli")
    if cli and cli["median_s"] >= TARGETS["cli_s"]:
        out.append(f"- CLI: {cli['median_s']:.2f} s, of which a bare interpreter start is {cli['bare_python_median_s']:.2f} s; "
                   "the rest is imports (pydantic-settings) and two requests to the server.")
    return ["", "Why a target is not met, from this run's numbers:", "", *out] if out else []


def write_markdown(report: dict, path: Path) -> None:
    m, model = report["machine"], report["model"]
    lines = [
        "# Speed benchmark",
        "",
        f"Command: `{report['command']}` ({report['mode']} run, {report['date']}, {report['wall_s']:.0f} s).",
        f"Machine: {m['nproc']} CPU cores ({m['cpu_model']}), {m['ram_gb']} GB RAM, no GPU; "
        f"torch {m['versions']['torch']}, faiss {m['versions']['faiss']}, open_clip {m['versions']['open_clip']}.",
        f"Model: `{model['model_name']}` ({model['weights']}), {model['parameters']:,} parameters, "
        f"{model['image_size']} px images, {model['image_blocks']} image blocks, embed dim {model['embed_dim']}, "
        f"{model['device']} {model['precision']}, {model['torch_threads']} torch threads (server and bare loop alike).",
        f"Load average (1, 5, 15 min) at start / end: {report['load_start']} / {report['load_end']}; 1-min load "
        f"sampled every {report['load_during']['period_s']:.0f} s during the run: min {report['load_during']['min']}, "
        f"median {report['load_during']['median']}, max {report['load_during']['max']} (the run's own threads "
        "count in it; see `busy_processes_*` and `load_during` in speed.json for other work on the machine). "
        "The machine is shared and noisy: every comparison below is a ratio of two measurements from this run.",
        f"Seeds: {', '.join(f'{k} {v}' for k, v in report['seeds'].items())}.",
        "",
        "## Targets",
        "",
        "| measurement | target | this run | met |",
        "|---|---|---|---|",
    ]
    for row in report["targets"]:
        lines.append(f"| {row['what']} | {row['target']} | {row['value']} | {'yes' if row['met'] else '**no**'} |")

    lines += reasons_markdown(report)
    lines += service_markdown(report.get("ingest"), report.get("search"), "")
    real = report.get("realistic")
    if real:
        rm = real["model"]
        lines += ["", f"## The same with a user-sized model: `{rm['model_name']}` (random init)", "",
                  f"{rm['parameters']:,} parameters, {rm['image_size']} px input, embed dim {rm['embed_dim']}; random "
                  "weights cost exactly what trained ones do. The miniature model encodes an image in about a "
                  "millisecond, so there the per-image bookkeeping (multipart parsing, hashing, fsync, rows) is most "
                  "of the service's time; with a model of this size the encoder dominates, as it does for users."]
        lines += service_markdown(real.get("ingest"), real.get("search"), "#")
    tuning = report.get("tuning")
    if tuning:
        lines += ["", "## Tuning", "",
                  f"`train_adapter` on {tuning['n_train']} training / {tuning['n_val']} held-out miniature-world items, "
                  "same seed; medians of alternating runs. 'Step' is the median time of one optimisation step; "
                  "'wall' includes preprocessing, the frozen pre-computation and per-epoch validation.", "",
                  "| configuration | uncached | cached wall s | uncached wall s | wall speedup | step ms cached / uncached | step speedup | prompts max abs diff | same result |",
                  "|---|---|---|---|---|---|---|---|---|"]
        pairs = [(f"visual, prompts from block {s}", p) for s, p in tuning["visual"].items()] + [("text-only", tuning["text"])]
        for name, p in pairs:
            cfg = p["config"]
            lines.append(
                f"| {name} ({cfg['epochs']} epochs, batch {cfg['batch_size']}) | {p['uncached_is']} | "
                f"{p['cached_wall_s']:.2f} | {p['uncached_wall_s']:.2f} | {p['wall_speedup']:.2f}x | "
                f"{p['cached_step_ms']:.1f} / {p['uncached_step_ms']:.1f} | {p['step_speedup']:.2f}x | "
                f"{p['same_result']['prompt_max_abs_diff']:.1e} | "
                f"{'yes' if p['same_result']['equal_within_tolerance'] else 'no'} |")
        lines += ["", tuning.get("ceiling_note", "")]

    ad = report.get("adapters")
    if ad:
        h, rss, cold, tb = ad["http"], ad["server_rss_mb"], ad["first_search_ms"], ad["text_batcher_only"]
        cfg = ad["adapter_config"]
        lines += ["", "## Many adapters at once", "",
                  f"{ad['collections']:,} collections of {ad['images_per_collection']} images, each with its own active "
                  f"synthetic text adapter (the recipe's shape: {cfg['text_tokens']} text prompts, residual rank "
                  f"{cfg['residual_rank']}, zero-shot mixing at weight {ad['adapted_weight']}; {ad['adapter_file_bytes']:,} "
                  f"bytes on disk, {ad['adapter_tensor_bytes']:,} bytes of tensors). {ad['clients']} closed-loop clients, "
                  f"k={ad['k']}; {ad['traffic']}. Queries of different adapters share one text forward pass "
                  "(`adapters/mixed_text.py`).", "",
                  "| traffic | round | req/s | p50 ms | p99 ms | server cores |",
                  "|---|---|---|---|---|---|"]
        for kind in ("one", "mixed"):
            for i, r in enumerate(h[kind]):
                lat = r["latency_ms"]
                lines.append(f"| {kind} | {i} | {r['throughput_rps']:.1f} | {lat.get('p50', float('nan')):.1f} | "
                             f"{lat.get('p99', float('nan')):.1f} | {r['server_cpu_cores']:.2f} |")
        lines += ["", f"Mixed / one: {h['ratio']:.2f}x throughput over HTTP ({h['distinct_collections_in_mixed']} distinct "
                  f"collections in the mixed traffic); the text batcher alone (in-process, {tb['clients']} threads, "
                  f"{tb['adapters']} adapters): {tb['ratio']:.2f}x.",
                  f"Server memory (RSS): {rss['before_first_searches']:.0f} MB before any search, "
                  f"{rss['after_every_adapter_loaded']:.0f} MB once every adapter was loaded (one first search each: "
                  f"p50 {cold['p50']:.1f} ms, p99 {cold['p99']:.1f} ms, sequential), {rss['after_traffic']:.0f} MB after "
                  f"the traffic; the adapters' tensors alone: {ad['collections'] * ad['adapter_tensor_bytes'] / 2**20:.1f} MB."]
    cli = report.get("cli")
    if cli:
        lines += ["", "## CLI", "",
                  f"`{cli['command']}` with a server holding the data directory: median {cli['median_s']:.2f} s over "
                  f"{len(cli['search_s'])} runs (bare `python -c pass`: {cli['bare_python_median_s']:.2f} s). The CLI asks "
                  "the server (`service/server_client.py`) and imports neither torch nor the model."]
    fa = report.get("faiss")
    if fa:
        d = fa["data"]
        nprobes = [r["nprobe"] for r in fa["results"][0]["ann"][next(iter(fa["results"][0]["ann"]))]["by_nprobe"]]
        per = " / ".join(str(p) for p in nprobes)
        lines += ["", "## FAISS exact vs IVF", "",
                  f"{d['kind']}: dim {d['dim']}, centres {d['centres']}, weights {d['cluster_weights']}, isotropic "
                  f"noise of norm {d['noise_norm']} around the unit-norm centres, then L2-normalised; {d['queries']} "
                  f"queries ({d['queries_are']}). The sizes of one dataset are prefixes of one draw. Recall@{fa['k']} "
                  "is against exact search, averaged over all queries; latency is one query per call "
                  f"(`VectorIndex.search`, {fa['faiss_threads']} FAISS threads). The service's defaults: "
                  f"`ann_threshold` {fa['service_ann_threshold']:,}, `nprobe` {fa['service_nprobe']}; FAISS's IVF "
                  f"k-means: {fa['kmeans_defaults']['niter']} iterations on at most "
                  f"{fa['kmeans_defaults']['max_points_per_centroid']} points per list.", "",
                  "Index builds: **rebuild** = `VectorIndex.build` on all vectors (what start-up repair, an adapter's "
                  "new index and `reembed` do); **grown** = IVF built at the threshold, every later vector added "
                  "without retraining (what uploads do); **sampled** = the rebuild layout with k-means on fewer "
                  "points (a possible change).", "",
                  f"| data | n | index | lists | build s | recall@10 at nprobe {per} | p50 ms at nprobe {per} | "
                  f"p99 ms at nprobe {fa['service_nprobe']} |",
                  "|---|---|---|---|---|---|---|---|"]
        for res in fa["results"]:
            data = f"{res['dataset']} ({res['clusters']} clusters)"
            ex = res["exact"]
            if "latency_ms" in ex:
                lines.append(f"| {data} | {res['n']:,} | exact (flat) | - | {ex['build_s']:.1f} | 1 | "
                             f"{ex['latency_ms']['p50']:.2f} | {ex['latency_ms']['p99']:.2f} (over {ex['latency_queries']} queries) |")
            for name, build in res["ann"].items():
                rows = build["by_nprobe"]
                svc = [r for r in rows if r["nprobe"] == min(fa["service_nprobe"], build["nlist"])]
                lines.append(
                    f"| {data} | {res['n']:,} | IVF, {name} | {build['nlist']} | {build['build_s']:.1f} | "
                    + " / ".join(f"{r['recall_at_k']:.3f}" for r in rows) + " | "
                    + " / ".join(f"{r['latency_ms']['p50']:.2f}" for r in rows) + " | "
                    + (f"{svc[0]['latency_ms']['p99']:.2f}" if svc else "-") + " |")
        lines += [""] + sorted({f"- {name}: {b['how']}" for res in fa["results"] for name, b in res["ann"].items()})
    lines += ["", "Every number, with the per-request latencies, is in `speed.json`.", ""]
    path.write_text("\n".join(lines))


def write_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["search"]["levels"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for lv in levels:
        lat = np.sort(np.asarray(lv["latencies_ms"]))
        if not len(lat):
            continue
        left.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{lv['clients']} client(s)")
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("fraction of requests")
    left.set_title("Search latency, CDF per concurrency level")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    data = [lv["latencies_ms"] for lv in levels if lv["latencies_ms"]]
    names = [str(lv["clients"]) for lv in levels if lv["latencies_ms"]]
    right.boxplot(data, tick_labels=names, whis=(1, 99), showfliers=False)
    for i, lv in enumerate([lv for lv in levels if lv["latencies_ms"]], start=1):
        right.annotate(f"{lv['throughput_rps']:.0f} req/s", (i, lv["latency_ms"]["p99"]), textcoords="offset points",
                       xytext=(0, 6), ha="center", fontsize=8)
    right.set_yscale("log")
    right.set_xlabel("concurrent clients")
    right.set_ylabel("latency (ms, log scale)")
    right.set_title("p25-p75 box, p50 line, whiskers p1-p99")
    right.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(f"POST /search, k={report['search']['k']}, {report['search']['collection_images']} images, "
                 f"{report['machine']['nproc']} CPU cores ({report['mode']} run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tuning_ceiling_note(tuning: dict) -> str:
    blocks = tuning["image_blocks"]
    parts = []
    for start in tuning["visual"]:
        s = int(start)
        # Per step, uncached: forward through all blocks + backward through the prompted ones (~2x forward);
        # cached: forward + backward through the prompted ones only. The text side is frozen (cached) in both.
        uncached, cached = blocks + 2 * (blocks - s), 3 * (blocks - s)
        parts.append(f"from block {s}: at most ~{uncached / cached:.2f}x")
    return ("Upper bound of the step speedup from caching alone, counting a block's backward as twice its forward "
            f"and ignoring the loss and optimiser ({blocks} image blocks): " + "; ".join(parts) + ".")


# --------------------------------------------------------------------------- main

def measure_service(backbone, backbone_env: dict, sizes: Sizes, with_search: bool, with_cli: bool = False) -> dict:
    """Ingest (and search) through a uvicorn server that loads the same backbone as the bare loop."""
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        server = start_server(Path(tmp) / "data", backbone_env, sizes.ingest_batch, torch.get_num_threads())
        try:
            assert server.health is not None  # start_server returns only once /healthz has answered
            out["server"] = {"command": shlex.join(server.command), "env": server.env,
                             "backbone_source": server.health.get("backbone_source"),
                             "backbone": server.health.get("backbone")}
            if server.health.get("backbone") != backbone.identity.to_dict():
                raise RuntimeError(f"the server loaded another backbone: {server.health.get('backbone')}")
            out["ingest"], collection_id = measure_ingest(server, backbone, sizes)
            if with_search:
                out["search"] = measure_search(server, collection_id, backbone, sizes)
            if with_cli:
                out["cli"] = measure_cli(server, collection_id, sizes.cli_repeats)
                log(f"cli search: median {out['cli']['median_s']:.2f} s (bare python {out['cli']['bare_python_median_s']:.2f} s)")
        except BaseException:
            log("server log tail:\n" + server.log_tail())
            raise
        finally:
            server.stop()
    return out


def measure_adapters(backbone, backbone_env: dict, sizes: Sizes) -> dict:
    """Many collections with an adapter each on a fresh server: mixed vs single-adapter traffic."""
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp:
        server = start_server(Path(tmp) / "data", backbone_env, sizes.ingest_batch, torch.get_num_threads())
        try:
            return run_adapters(server, backbone, sizes.adapter_collections,
                                make_upload_items(sizes.adapter_images, SEEDS["adapters"]),
                                make_queries(sizes.search_query_items, SEEDS["search_queries"]),
                                ADAPTER_CLIENTS, ADAPTER_K, sizes.adapter_requests, sizes.adapter_seconds,
                                sizes.adapter_rounds, SEEDS["adapters"], log=log)
        except BaseException:
            log("server log tail:\n" + server.log_tail())
            raise
        finally:
            server.stop()


def run_sections(report: dict, sections: set[str], sizes: Sizes, realistic_model: str | None) -> None:
    backbone, backbone_env = load_bench_backbone()
    report["model"] = model_info(backbone)
    log(f"model {report['model']['model_name']} ({report['model']['weights']}), "
        f"{report['model']['torch_threads']} torch threads, load {report['load_start']}")

    if "ingest" in sections:
        report.update(measure_service(backbone, backbone_env, sizes, "search" in sections, "cli" in sections))
    if "tuning" in sections:
        report["tuning"] = measure_tuning(backbone, sizes)
        report["tuning"]["ceiling_note"] = tuning_ceiling_note(report["tuning"])
    if "adapters" in sections:
        report["adapters"] = measure_adapters(backbone, backbone_env, sizes)
    if "faiss" in sections:
        report["faiss"] = measure_faiss(sizes)
    if realistic_model and "ingest" in sections:
        # The miniature model encodes a 64 px image in ~1 ms, so per-image bookkeeping (multipart parsing,
        # hashing, fsync, rows) dominates its ratios. A user's model does far more work per image and per
        # query; random weights cost exactly what trained ones do.
        del backbone
        real = load_backbone(realistic_model)
        log(f"realistic model {realistic_model} (random init, timing only)")
        real_sizes = replace(sizes, ingest_images=REALISTIC_INGEST_IMAGES, ingest_rounds=2,
                             search_requests=REALISTIC_SEARCH_REQUESTS, search_seconds=REALISTIC_SEARCH_SECONDS)
        report["realistic"] = {
            "model": model_info(real), "sizes": asdict(real_sizes),
            **measure_service(real, {"PAS_BACKBONE_MODEL": realistic_model, "PAS_BACKBONE_PRETRAINED": ""},
                              real_sizes, "search" in sections),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< about a minute), for the smoke test")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench", help="output directory")
    parser.add_argument("--only", default="ingest,search,cli,tuning,adapters,faiss",
                        help="comma-separated sections to run (default: all; search and cli need ingest)")
    parser.add_argument("--realistic-model", default=None,
                        help=f"also time ingest and search with this open_clip model at random init "
                             f"(full runs default to {REALISTIC_MODEL}; 'none' to skip)")
    parser.add_argument("--adapter-collections", type=int, default=None,
                        help="collections (one adapter each) of the adapters section (default: 1,000; --quick: 8)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch threads for the server and the bench process alike (default: torch's own)")
    args = parser.parse_args(argv)
    # A terminated run still stops its server and removes its temp data dir.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if sections & {"search", "cli"}:
        sections.add("ingest")
    sizes = QUICK if args.quick else FULL
    if args.adapter_collections:
        sizes = replace(sizes, adapter_collections=args.adapter_collections)
    argv_used = sys.argv[1:] if argv is None else argv
    command = "python -m bench.speed" + ("" if not argv_used else " " + shlex.join(argv_used))
    args.out.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    report: dict = {
        "command": command, "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(), "machine": machine_info(),
        "load_start": [round(x, 2) for x in os.getloadavg()], "busy_processes_start": busiest_processes(),
        "sizes": asdict(sizes), "seeds": SEEDS, "targets_spec": TARGETS, "sections": sorted(sections),
    }
    sampler = LoadSampler()
    with sampler:
        realistic = args.realistic_model or (None if args.quick else REALISTIC_MODEL)
        run_sections(report, sections, sizes, None if realistic == "none" else realistic)
    report["load_during"] = sampler.summary()
    report["load_end"] = [round(x, 2) for x in os.getloadavg()]
    report["busy_processes_end"] = busiest_processes()
    report["wall_s"] = time.perf_counter() - t_start
    report["targets"] = verdicts(report)

    (args.out / "speed.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    write_markdown(report, args.out / "speed.md")
    if "search" in report:
        write_plot(report, args.out / "latency.png")
    for row in report["targets"]:
        log(f"{'MET    ' if row['met'] else 'NOT MET'} {row['what']}: {row['value']} (target {row['target']})")
    log(f"done in {report['wall_s']:.0f} s; wrote {args.out}/speed.json, speed.md"
        + (", latency.png" if "search" in report else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

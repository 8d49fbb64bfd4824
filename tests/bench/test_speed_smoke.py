"""Smoke test of the speed benchmark: the quick variant runs end to end and writes sane outputs.

Nothing here asserts on timing (the machine is shared and noisy); only that every measurement
was taken, is a finite positive number where it must be, and that the reports agree with it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-m", "bench.speed", "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out, json.loads((out / "speed.json").read_text())


@pytest.mark.slow
def test_outputs_exist(quick_run):
    out, _ = quick_run
    assert (out / "speed.md").stat().st_size > 500
    png = (out / "latency.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 5000


@pytest.mark.slow
def test_run_is_described(quick_run):
    _, report = quick_run
    assert report["mode"] == "quick"
    assert "--quick" in report["command"]
    machine = report["machine"]
    assert machine["nproc"] >= 1
    assert positive(machine["ram_gb"])
    assert "cpu_model" in machine
    assert machine["torch_cpu_kernels"]  # e.g. "AVX512": a seeded run may not repeat on other kernels
    assert "cpu_id" in machine
    assert machine["versions"]["torch"]
    assert machine["versions"]["faiss"]
    assert report["model"]["model_name"] == "miniworld-vit"
    assert report["server"]["backbone"] == {k: report["model"][k] for k in report["server"]["backbone"]}
    assert report["seeds"]
    assert report["sizes"]["ingest_images"] == 200
    assert report["date"]
    assert positive(report["wall_s"])


@pytest.mark.slow
def test_ingest_numbers(quick_run):
    _, report = quick_run
    ingest = report["ingest"]
    assert ingest["images"] == 200
    assert len(ingest["rounds"]) == report["sizes"]["ingest_rounds"]
    for r in ingest["rounds"]:
        assert positive(r["bare"]["images_per_s"])
        assert positive(r["service"]["images_per_s"])
    assert positive(ingest["ratio"])


@pytest.mark.slow
def test_search_numbers(quick_run):
    _, report = quick_run
    search = report["search"]
    assert [lv["clients"] for lv in search["levels"]] == [1, 8, 32]
    for lv in search["levels"]:
        assert lv["errors"] == 0, lv["error_examples"]
        assert lv["requests_ok"] > 0
        assert len(lv["latencies_ms"]) == lv["requests_ok"]
        lat = lv["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert positive(lv["throughput_rps"])
    assert positive(search["p50_ratio_8_vs_1"])


@pytest.mark.slow
def test_tuning_cache_gives_the_same_result(quick_run):
    _, report = quick_run
    tuning = report["tuning"]
    pairs = list(tuning["visual"].values()) + [tuning["text"]]
    assert len(pairs) >= 2
    for pair in pairs:
        assert pair["same_result"]["equal_within_tolerance"], pair["same_result"]
        assert positive(pair["cached_wall_s"])
        assert positive(pair["uncached_wall_s"])
        assert positive(pair["wall_speedup"])


@pytest.mark.slow
def test_faiss_numbers(quick_run):
    _, report = quick_run
    fa = report["faiss"]
    assert fa["data"]["kind"].startswith("Gaussian mixture")
    assert {r["dataset"] for r in fa["results"]} == {"main", "hard"}
    for result in fa["results"]:
        assert result["n"] >= 20_000
        assert "rebuild" in result["ann"]
        if result["dataset"] == "main":
            assert result["exact"]["self_recall"] == 1.0
            assert positive(result["exact"]["latency_ms"]["p50"])
            assert set(result["ann"]) == {"rebuild", "grown", "sampled"}
        for build in result["ann"].values():
            assert build["nlist"] > 1
            assert positive(build["build_s"])
            for row in build["by_nprobe"]:
                assert 0.0 <= row["recall_at_k"] <= 1.0
                assert positive(row["latency_ms"]["p50"])


@pytest.mark.slow
def test_markdown_states_every_target(quick_run):
    out, report = quick_run
    text = (out / "speed.md").read_text()
    assert "| measurement | target | this run | met |" in text
    assert len(report["targets"]) >= 4
    for row in report["targets"]:
        assert isinstance(row["met"], bool)
        assert row["what"] in text


@pytest.mark.slow
def test_many_adapters_and_cli_numbers(quick_run):
    _, report = quick_run
    adapters = report["adapters"]
    assert adapters["collections"] == report["sizes"]["adapter_collections"]
    http = adapters["http"]
    assert positive(http["one_rps"])
    assert positive(http["mixed_rps"])
    assert positive(http["ratio"])
    assert http["distinct_collections_in_mixed"] > 1
    assert all(r["errors"] == 0 for kind in ("one", "mixed") for r in http[kind])
    assert positive(adapters["text_batcher_only"]["ratio"])
    rss = adapters["server_rss_mb"]
    assert positive(rss["before_first_searches"])
    assert positive(rss["after_every_adapter_loaded"])
    assert positive(report["cli"]["median_s"])
    parts = report["search"]["components"]["request_parts"]["median_ms"]
    assert all(positive(parts[k]) for k in ("resolve", "encode", "index_and_rows", "record_search", "sum"))
    whats = " ".join(row["what"] for row in report["targets"])
    assert "adapters mixed" in whats
    assert "CLI search" in whats

"""docs/bench/gpu.md's writer: GPU runs against the published CPU runs of the same key, and the suite's counts."""

from __future__ import annotations

import json

from bench.gpu_report import write

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1"
tests="5" time="12.5"><testcase classname="tests.a" name="test_ok" /><testcase classname="tests.a" name="test_bad">
<failure message="AssertionError: 1 != 2">trace</failure></testcase><testcase classname="tests.b" name="test_skip">
<skipped message="forks a process that holds CUDA" /></testcase><testcase classname="" name="tests.c">
<error message="collection failure">trace</error></testcase><testcase classname="tests.a" name="test_ok2" />
</testsuite></testsuites>"""


def run(method: str, ranks: list[int], val_r1: float, wall: float) -> dict:
    """One run record as bench.quality writes it (the fields the report reads)."""
    hits = sum(r == 1 for r in ranks) / len(ranks)
    return {"spec": "style", "train_size": 1000, "method": method, "seed": 0, "wall_time_s": wall,
            "val": {"t2i_r1": val_r1, "rsum": 1.0},
            "summary": {"t2i_r1": hits},
            "per_query": {"rank": ranks, "cat_p10": [0.5] * len(ranks), "cat_ap": [0.5] * len(ranks)}}


def test_each_gpu_run_is_set_beside_the_cpu_run_of_its_key_with_a_paired_difference(tmp_path):
    r1_60, r1_50, r1_40 = ([1] * n + [3] * (100 - n) for n in (60, 50, 40))  # R@1 of 60, 50, 40 % on 100 queries
    published = tmp_path / "quality.json"
    published.write_text(json.dumps({"runs": [run("adapter", r1_60, 0.30, 300), run("adapter+blocks", r1_50, 0.20, 400),
                                              run("adapter+blocks-lr3e-3", r1_40, 0.25, 100)]}))
    check = tmp_path / "check"
    (check / "style-fp16").mkdir(parents=True)
    (check / "style-fp16" / "quality.json").write_text(json.dumps({
        "machine": {"gpu": "a GPU"}, "backbone": {"device": "cuda:0", "precision": "fp16"},
        "runs": [run("adapter", r1_40, 0.10, 20), run("adapter+blocks", r1_50, 0.25, 30),
                 run("adapter+blocks-lr3e-3", r1_60, 0.15, 10)]}))
    (check / "junit.xml").write_text(JUNIT)
    (check / "env.txt").write_text("torch 9 on a GPU\nGPU 0: a GPU (UUID: x)\n")

    text = write(check, check / "junit.xml", published, tmp_path / "gpu.md", "the command", ["a note"])

    rows = {line.split(" | ")[2]: line for line in text.splitlines() if line.startswith("| style")}
    assert "| 40.0 | 60.0 | -20.0 [" in rows["recipe"]  # the CPU run of the same key, and the paired difference
    assert "| 20 s | 300 s |" in rows["recipe"]
    assert "| 50.0 | 50.0 | +0.0 [+0.0, +0.0] |" in rows["recipe + block adapters"]
    # auto keeps, on each device, the candidate its own val prefers: here block adapters on the GPU, the recipe on the CPU
    auto = next(line for name, line in rows.items() if name.startswith("auto"))
    assert "kept: recipe + block adapters; CPU kept: recipe)" in auto and "| 50.0 | 60.0 | -10.0 [" in auto
    assert "| 60 s | 800 s |" in auto  # every candidate's time: auto trains them all
    assert "| 60.0 | 40.0 | +20.0 [" in rows["recipe + block adapters, lr 3e-3"]
    assert "2 passed, 1 failed, 1 not collected or not set up, 1 skipped (in 12 s)" in text
    assert "- tests.a::test_bad: AssertionError: 1 != 2" in text and "- tests.c: collection failure" in text
    assert "skipped (1): forks a process that holds CUDA" in text
    assert "Machine: torch 9 on a GPU\n" in text and "UUID" not in text
    assert text.endswith("- a note\n") and (tmp_path / "gpu.md").read_text() == text


def test_a_gpu_run_without_a_published_twin_says_so(tmp_path):
    published = tmp_path / "quality.json"
    published.write_text(json.dumps({"runs": []}))
    (tmp_path / "c" / "x").mkdir(parents=True)
    (tmp_path / "c" / "x" / "quality.json").write_text(json.dumps({
        "machine": {"gpu": "a GPU"}, "backbone": {"precision": "fp32"}, "runs": [run("zero-shot", [1, 2], 0.1, 0)]}))
    text = write(tmp_path / "c", tmp_path / "c" / "junit.xml", published, tmp_path / "gpu.md", "cmd")
    assert "| style (1,000) | fp32 | zero-shot | 50.0 | – (no published CPU run) |" in text
    assert "The test suite did not run (no junit.xml)." in text

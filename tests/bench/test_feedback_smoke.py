"""The feedback benchmark: marks become a job's data as the service makes them, and the command runs end to end.

The end-to-end run uses the tiny random test model on a small world (seconds): it checks the
mechanics and the report's arithmetic, never a quality claim (a random model proves nothing).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from adapters.marks import MarkedQuery, training_data
from bench import feedback
from bench.feedback import describes, simulate_session
from bench.world import generate, load_spec


@pytest.fixture(scope="module")
def pool():
    return generate(load_spec("style"), 60, seed=11)


def test_marks_become_captions_and_named_negatives(pool):
    session = [MarkedQuery(f"q{k}", relevant=[2 * k], not_relevant=[2 * k + 1, 50 + k % 3]) for k in range(8)]
    session.append(MarkedQuery("nothing found", not_relevant=[40, 41]))
    session.append(MarkedQuery("twice", relevant=[0, 30], not_relevant=[41]))
    items, negatives = training_data(pool, session)
    captions = {item.key: sorted(item.captions) for item in items}
    assert captions[pool[0].key] == ["q0", "twice"]  # an image relevant to two queries has both texts
    assert captions[pool[30].key] == ["twice"]
    assert len(items) == 9
    assert all(item.category is None and not item.attributes for item in items)  # only what the marks say
    # Negatives: each query names its own not-relevant images (each image stored once).
    assert set(negatives.of_caption) == {f"q{k}" for k in range(8)} | {"nothing found", "twice"}
    named = {text: {pool.index(next(p for p in pool if p.image is negatives.images[i])) for i in ids}
             for text, ids in negatives.of_caption.items()}
    assert named["q0"] == {1, 50}
    assert named["nothing found"] == {40, 41}
    assert len(negatives.images) == len({id(im) for im in negatives.images})
    counts = feedback.session_counts(session)
    assert counts["relevant_marks"] == 10
    assert counts["not_relevant_marks"] == 19
    assert counts["queries_with_relevant"] == 9


def test_the_simulated_user_marks_the_top_results_truthfully(tiny_backbone, pool):
    session = simulate_session(tiny_backbone, pool, 12, seed=0)
    assert len(session) == 12
    assert len({m.text for m in session}) >= 10
    for marks in session:
        owner = next(p for p in pool if marks.text in p.captions)
        assert len(marks.relevant) + len(marks.not_relevant) == feedback.TOP_K
        assert all(describes(owner, pool[i]) for i in marks.relevant)
        assert not any(describes(owner, pool[i]) for i in marks.not_relevant)


def test_a_spec_with_partial_captions_is_refused():
    with pytest.raises(ValueError, match="partial or noisy"):
        feedback.check_truthful(load_spec("broad"))


@pytest.mark.slow  # ~10 s of training; the session, marks and job data above stay in the fast loop
def test_the_command_writes_its_report_on_the_tiny_model(tiny_backbone, tmp_path):
    argv = ["--backbone", "tiny-vit-test", "--pool", "60", "--test", "30", "--queries", "5", "60", "--ablation",
            "--out", str(tmp_path)]
    assert feedback.main(argv, backbone=tiny_backbone) == 0
    report = json.loads((tmp_path / "feedback.json").read_text())
    text = (tmp_path / "feedback.md").read_text()
    assert "python -m bench.feedback --backbone tiny-vit-test" in text
    assert "| none (zero-shot) |" in text
    assert [(row["queries"], row["variant"], row["model"]) for row in report["rows"]] == [
        (n, v, m) for n in (5, 60) for v in ("all marks", "relevant marks only") for m in ("served", "adapter")]
    zero = report["zero_shot"]["metrics"]
    for m in feedback.METRICS:
        assert zero[m]["low"] <= zero[m]["mean"] <= zero[m]["high"]
    ran = [row for row in report["rows"] if row["runs"]]
    assert ran, "every image queried once: the top 10 of some queries hold their own image"
    for row in ran:
        run = row["runs"][0]
        assert run["relevant_marks"] + run["not_relevant_marks"] == row["queries"] * feedback.TOP_K
        ranks = np.asarray(run[row["model"]]["per_query"]["rank"])
        assert len(ranks) == report["sizes"]["test_queries"]
        assert row["metrics"]["r1"]["mean"] == pytest.approx(float(np.mean(ranks <= 1)))
        assert row["gain"]["r1"]["mean"] == pytest.approx(row["metrics"]["r1"]["mean"] - zero["r1"]["mean"])
        if not run["selection"]["served"] and row["model"] == "served":  # the gate refused: exactly zero-shot
            assert row["gain"]["r1"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
        if row["variant"] == "all marks" and "negative_pairs_used" in run:
            assert run["negative_pairs_used"] > 0
        if row["variant"] == "all marks" and row["model"] == "adapter":
            assert set(row["gain_over_relevant_only"]) == set(row["gain"])
        if row["variant"] != "all marks" and "negative_pairs_used" in run:  # the ablation: no named negatives
            assert run["negative_pairs_used"] == 0
    assert "| N = 60 queries, served |" in text

"""The feedback benchmark: marks become a job's data as the service makes them, and the command runs end to end.

The end-to-end run uses the tiny random test model on a small world (seconds): it checks the
mechanics and the report's arithmetic, never a quality claim (a random model proves nothing).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import feedback
from bench.feedback import QueryMarks, describes, job_data, simulate_session
from bench.world import generate, load_spec


@pytest.fixture(scope="module")
def pool():
    return generate(load_spec("style"), 60, seed=11)


def test_marks_become_captions_negatives_and_a_val_set_kept_apart(pool):
    session = [QueryMarks(f"q{k}", relevant=[2 * k], not_relevant=[2 * k + 1, 50 + k % 3]) for k in range(8)]
    session.append(QueryMarks("nothing found", not_relevant=[40, 41]))
    job = job_data(pool, session)
    assert job is not None
    val_texts = {"q3", "q7"}  # every fourth query with a relevant mark
    train_texts = {c for item in job.train for c in item.captions}
    assert train_texts == {f"q{k}" for k in range(8)} - val_texts
    assert all(item.category is None and not item.attributes for item in job.train)  # only what the marks say
    assert {item.key for item in job.train}.isdisjoint(item.key for item in job.val)
    assert sorted(c for item in job.val for c in item.captions) == sorted(val_texts)
    # Negatives: each train query names its own not-relevant images (each image stored once).
    assert set(job.negatives.of_caption) == (train_texts | {"nothing found"})
    named = {text: {pool.index(next(p for p in pool if p.image is job.negatives.images[i])) for i in ids}
             for text, ids in job.negatives.of_caption.items()}
    assert named["q0"] == {1, 50}
    assert named["nothing found"] == {40, 41}
    assert len(job.negatives.images) == len({id(im) for im in job.negatives.images})
    assert job.counts["relevant_marks"] == 8
    assert job.counts["not_relevant_marks"] == 18
    assert job.counts["val_queries"] == 2
    assert job.counts["train_pairs"] == 6

    assert job_data(pool, session[:1] + session[8:]) is None  # one query found something: no job


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
    assert [(row["queries"], row["variant"]) for row in report["rows"]] == [
        (n, v) for n in (5, 60) for v in ("all marks", "relevant marks only")]
    zero = report["zero_shot"]["metrics"]
    for m in feedback.METRICS:
        assert zero[m]["low"] <= zero[m]["mean"] <= zero[m]["high"]
    ran = [row for row in report["rows"] if row["runs"]]
    assert ran, "every image queried once: the top 10 of some queries hold their own image"
    for row in ran:
        run = row["runs"][0]
        assert run["relevant_marks"] + run["not_relevant_marks"] == row["queries"] * feedback.TOP_K
        ranks = np.asarray(run["per_query"]["rank"])
        assert len(ranks) == report["sizes"]["test_queries"]
        assert row["metrics"]["r1"]["mean"] == pytest.approx(float(np.mean(ranks <= 1)))
        assert row["gain"]["r1"]["mean"] == pytest.approx(row["metrics"]["r1"]["mean"] - zero["r1"]["mean"])
        if row["variant"] == "all marks":
            assert 0 < run["negative_pairs_used"] <= run["negative_pairs_given"]
            assert set(row["gain_over_relevant_only"]) == set(row["gain"])
            assert f"| N = {row['queries']} queries |" in text
        else:  # the ablation: the same job without its named negatives
            assert run["negative_pairs_used"] == 0
            assert run["negative_pairs_given"] > 0

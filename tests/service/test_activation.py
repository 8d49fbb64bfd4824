"""Activation says honestly whether a tuned adapter helped: a tie is refused, a real gain activates.

The decision rule is tested on per-query arrays (where a clear gain can be built); over HTTP a tie
is built for sure: a second job with the first job's config and seed trains the same prompts, so
its gain over the (active) first version is exactly zero on every test query.
"""

import numpy as np
import pytest
from PIL import Image

from adapters.data import PairedItem
from service.activation import decide, selection_metric
from service.vocabulary import Activation
from tests.service.test_tuning import QUICK, start_job, wait
from tests.support import fill, png_bytes, upload


def test_a_tie_is_refused():
    hits = np.array([1, 0, 1, 0, 0, 1, 0, 0] * 5, dtype=float)
    decision = decide(Activation.IF_BETTER, 0.0, "t2i_r1", hits, hits.copy(), "none")
    assert not decision.activate
    assert decision.note.startswith("kept inactive")
    assert "95 % interval +0.000 to +0.000" in decision.note
    assert decision.evidence.gain == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert decision.evidence.queries == 40


def test_a_consistent_gain_activates():
    rng = np.random.default_rng(0)
    baseline = (rng.random(200) < 0.3).astype(float)
    candidate = baseline.copy()
    candidate[rng.choice(np.flatnonzero(baseline == 0), 40, replace=False)] = 1.0  # 40 queries fixed, none lost
    decision = decide(Activation.IF_BETTER, 0.0, "t2i_r1", baseline, candidate, "v1")
    assert decision.activate
    assert decision.note.startswith("activated")
    assert decision.evidence.gain["low"] > 0
    assert decision.evidence.gain["mean"] == pytest.approx(0.2)
    # ... but not when the caller asks for more than the interval supports.
    assert not decide(Activation.IF_BETTER, 0.5, "t2i_r1", baseline, candidate, "v1").activate


def test_a_gain_the_queries_cannot_tell_from_noise_is_refused():
    baseline = np.array([0, 1, 0, 1, 0, 0, 1, 0, 0, 0], dtype=float)
    candidate = np.array([1, 0, 1, 1, 0, 1, 1, 0, 0, 0], dtype=float)  # +0.2 on 10 queries, one lost
    decision = decide(Activation.IF_BETTER, 0.0, "t2i_r1", baseline, candidate, "none")
    assert decision.evidence.gain["mean"] == pytest.approx(0.2)
    assert decision.evidence.gain["low"] <= 0
    assert not decision.activate
    # The older policies keep their meaning.
    assert decide(Activation.IF_NOT_WORSE, 0.0, "t2i_r1", baseline, candidate, "none").activate
    assert not decide(Activation.IF_NOT_WORSE, 0.0, "t2i_r1", candidate, baseline, "none").activate
    assert decide(Activation.ALWAYS, 0.0, "t2i_r1", candidate, baseline, "none").activate
    assert not decide(Activation.NEVER, 0.0, "t2i_r1", baseline, candidate, "none").activate


def test_class_name_captions_are_compared_by_category_precision():
    image = Image.new("RGB", (8, 8))
    named = [PairedItem(image, [f"a photo of a {c}"], category=c) for c in ("cat", "cat", "dog", "dog", "dog")]
    described = [PairedItem(image, [f"a {c} on mat number {i}"], category=c) for i, c in enumerate("ccddd")]
    uncategorised = [PairedItem(image, ["a photo of a cat"]) for _ in range(4)]
    assert selection_metric(named) == "cat_p10"
    assert selection_metric(described) == "t2i_r1"
    assert selection_metric(uncategorised) == "t2i_r1"


def test_a_tie_over_http_keeps_the_version_inactive_and_says_the_interval(client):
    cid = fill(client)
    first = wait(client, start_job(client, cid, activation="always", **QUICK))
    assert first["state"] == "succeeded", first["error"]
    again = wait(client, start_job(client, cid, **QUICK))  # the default policy, the same prompts again
    assert again["state"] == "succeeded", again["error"]

    v1, v2 = client.get(f"/collections/{cid}/adapters").json()
    assert v1["active"]
    assert not v2["active"]
    evidence = client.get(f"/collections/{cid}/adapters/2").json()["report"]["activation"]
    assert evidence["policy"] == "if_better"
    assert evidence["metric"] == "t2i_r1"  # fill's captions describe single images
    assert evidence["baseline_name"] == "v1"
    assert evidence["gain"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert not evidence["activated"]
    assert v2["note"].startswith("kept inactive")
    assert "95 % interval +0.000 to +0.000" in v2["note"]
    assert client.post(f"/collections/{cid}/search", json={"query": "red"}).json()["adapter"] == "v1"


def test_images_with_only_a_category_train_and_are_counted(client):
    cid = client.post("/collections", json={"name": "labelled"}).json()["id"]
    classes = ["red", "blue"]
    metadata = [{"category": classes[i % 2], "attributes": ["small"] if i % 3 else []} for i in range(20)]
    metadata += [{"captions": [f"a {classes[i % 2]} thing number {i}"], "category": classes[i % 2]} for i in range(4)]
    assert upload(client, cid, [(f"{i}.png", png_bytes(i)) for i in range(24)], metadata).status_code == 200

    job = wait(client, start_job(client, cid, **QUICK))
    assert job["state"] == "succeeded", job["error"]
    assert sum(job["split_sizes"].values()) == 24
    adapter = client.get(f"/collections/{cid}/adapters/1").json()
    report = adapter["report"]
    assert report["templated_captions"] == 20
    assert sum(report["split_sizes"].values()) == 24
    # Category metrics for every model compared, in the report and in the adapter's stored metrics.
    for model in ("adapter", "zero_shot", "baseline"):
        assert 0 <= report["test"][model]["cat_p10"] <= 1
        assert 0 < report["test"][model]["cat_map"] <= 1
    assert {"cat_p10", "cat_map"} <= adapter["metrics"]["test"].keys()
    assert {"cat_p10", "cat_map"} <= adapter["metrics"]["test_zero_shot"].keys()
    # The activation evidence uses the metric it names, with its interval, whatever it decided.
    evidence = report["activation"]
    assert evidence["metric"] in ("t2i_r1", "cat_p10")
    assert evidence["gain"]["low"] <= evidence["gain"]["mean"] <= evidence["gain"]["high"]
    assert evidence["adapter"] == pytest.approx(report["test"]["adapter"][evidence["metric"]])
    assert adapter["active"] == evidence["activated"]
    assert "95 % interval" in adapter["note"]


def test_collections_without_categories_report_no_category_metrics(client):
    cid = client.post("/collections", json={"name": "plain"}).json()["id"]
    metadata = [{"captions": [f"thing number {i}"]} for i in range(16)]
    upload(client, cid, [(f"{i}.png", png_bytes(i)) for i in range(16)], metadata)
    job = wait(client, start_job(client, cid, **QUICK))
    assert job["state"] == "succeeded", job["error"]
    report = client.get(f"/collections/{cid}/adapters/1").json()["report"]
    assert "cat_p10" not in report["test"]["adapter"]
    assert report["templated_captions"] == 0
    assert report["activation"]["metric"] == "t2i_r1"

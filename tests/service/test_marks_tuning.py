"""A collection without captions learns from its owner's marked searches alone, over real HTTP.

The tiny test model is random, so these check the mechanics (what is trained, judged, reported,
stored and served) and the activation rules; whether marks help is the feedback benchmark's question.
"""

import logging
import time

from safetensors.torch import load

from adapters.marks import MIN_JUDGED_QUERIES, Selection, gate_level
from adapters.stats import Interval
from service.activation import decide_on_marks
from service.vocabulary import Activation
from tests.service.test_tuning import QUICK, SLOW, wait
from tests.support import png_bytes, upload

TEXTS = ["a red thing", "a blue thing", "something green", "a dark shape", "a bright spot", "the odd one"]


def uncaptioned(client, n=14) -> int:
    cid = client.post("/collections", json={"name": "photos"}).json()["id"]
    assert upload(client, cid, [(f"{i}.png", png_bytes(300 + i)) for i in range(n)]).status_code == 200
    return cid


def mark_searches(client, cid, texts=TEXTS) -> dict[str, int]:
    """Search each text; mark one result not yet marked relevant as relevant and the next three as not."""
    taken: set[int] = set()
    counts = {"relevant": 0, "not_relevant": 0}
    for text in texts:
        found = client.post(f"/collections/{cid}/search", json={"query": text, "k": 8}).json()
        hits = [h["image_id"] for h in found["results"]]
        chosen = next(i for i in hits if i not in taken)
        taken.add(chosen)
        marks = [(chosen, True)] + [(i, False) for i in hits if i != chosen][:3]
        for image_id, relevant in marks:
            response = client.post(f"/collections/{cid}/feedback",
                                   json={"search_id": found["search_id"], "image_id": image_id, "relevant": relevant})
            assert response.status_code == 201, response.text
            counts["relevant" if relevant else "not_relevant"] += 1
    return counts


def test_a_collection_without_captions_tunes_on_marked_searches_alone(client, caplog):
    cid = uncaptioned(client)
    counts = mark_searches(client, cid)
    caplog.set_level(logging.INFO, logger="service")

    response = client.post(f"/collections/{cid}/tuning-jobs", json=QUICK)  # training_data "auto"
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    marked_images = job["split_sizes"]["marked"]
    assert set(job["split_sizes"]) == {"marked"} and marked_images >= len(TEXTS) + 3
    assert job["progress"]["runs"] == 5 and job["progress"]["run"] >= 4  # 4 folds, then the final job (if it steps)
    assert f"tuning job {job['id']} started for collection {cid} (method dual, 2 epochs, on marks alone)" in caplog.text

    version = client.get(f"/collections/{cid}/adapters/{job['adapter_version']}").json()
    report = version["report"]
    assert report["test"] is None
    marks = report["marks"]
    assert 1 <= marks["queries"] <= len(TEXTS)
    assert marks["candidates_compared"] == len(marks["candidates"]) == 4 * (QUICK["epochs"] + 1)
    assert marks["gate_level"] == gate_level(marks["candidates_compared"])
    assert report["split_sizes"] == {"train": len(TEXTS), "marked_queries": len(TEXTS),
                                     "judged_queries": marks["queries"]}
    feedback = report["feedback"]
    assert feedback["relevant_used"] == counts["relevant"] and feedback["images_added"] == len(TEXTS)
    assert feedback["not_relevant_used"] + feedback["not_relevant_skipped_no_positive"] == counts["not_relevant"]
    assert report["training"]["val"] is None and all("metrics" not in e for e in report["epochs"])

    # Fewer judged queries than the gate needs: kept inactive, with the numbers, and search stays zero-shot.
    evidence = report["activation"]
    assert evidence["metric"] == "marks_ap" and evidence["baseline_name"] == "none"
    assert evidence["queries"] == marks["queries"] and evidence["gain"] == marks["gate_ap"]
    assert evidence["level"] == marks["gate_level"]
    assert not version["active"] and not evidence["activated"]
    assert f"fewer than the {MIN_JUDGED_QUERIES} needed" in version["note"]
    assert client.post(f"/collections/{cid}/search", json={"query": "x"}).json()["adapter"] == "none"

    # Stored as trained (the cross-validated weight), so activating it by hand serves the trained adapter.
    assert marks["weight"] > 0
    stored = load(client.get(f"/collections/{cid}/adapters/{version['version']}/file").content)
    assert float(stored["adapted_weight"]) == marks["weight"]
    by_version = client.post(f"/collections/{cid}/search", json={"query": TEXTS[0], "k": 14,
                                                                "adapter": str(version["version"])}).json()
    zero_shot = client.post(f"/collections/{cid}/search", json={"query": TEXTS[0], "k": 14, "adapter": "none"}).json()
    assert [h["score"] for h in by_version["results"]] != [h["score"] for h in zero_shot["results"]]

    forced = client.post(f"/collections/{cid}/tuning-jobs", json={**QUICK, "training_data": "marks",
                                                                  "activation": "always"})
    job = wait(client, forced.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    assert client.get(f"/collections/{cid}/adapters/{job['adapter_version']}").json()["active"]
    served = client.post(f"/collections/{cid}/search", json={"query": TEXTS[0], "k": 3}).json()
    assert served["adapter"] == f"v{job['adapter_version']}"


def test_a_job_on_marks_alone_cancels_between_two_steps_and_keeps_nothing(client, tmp_path):
    cid = uncaptioned(client)
    mark_searches(client, cid)
    job_id = client.post(f"/collections/{cid}/tuning-jobs", json=SLOW).json()["id"]
    while not (running := client.get(f"/jobs/{job_id}").json())["progress"].get("step"):
        assert running["state"] in ("queued", "running"), running
        time.sleep(0.05)
    assert running["split_sizes"]["marked"] > 0 and running["progress"]["runs"] == 5
    client.post(f"/jobs/{job_id}/cancel")
    job = wait(client, job_id)
    assert job["state"] == "cancelled"
    assert job["progress"]["run"] == 1  # stopped inside the first cross-validation run, not at its end
    assert client.get(f"/collections/{cid}/adapters").json() == []
    assert not list((tmp_path / "data").rglob("*.safetensors"))


def test_what_each_kind_of_job_needs_is_said_before_it_is_queued(client):
    cid = uncaptioned(client)
    for config, code in [({}, "too_few_pairs"), ({"training_data": "marks"}, "too_few_marks"),
                         ({"training_data": "pairs"}, "too_few_pairs")]:
        response = client.post(f"/collections/{cid}/tuning-jobs", json=config)
        assert response.status_code == 422 and response.json()["code"] == code, response.text
    auto = client.post(f"/collections/{cid}/tuning-jobs", json={}).json()
    assert auto["marked_queries"] == 0 and auto["captioned"] == 0 and "marked searches alone" in auto["detail"]

    mark_searches(client, cid, TEXTS[:1])  # one text: nothing to cross-validate
    refused = client.post(f"/collections/{cid}/tuning-jobs", json={"training_data": "marks"}).json()
    assert refused["code"] == "too_few_marks" and refused["marked_queries"] == 1
    mark_searches(client, cid, TEXTS[1:2])
    pairs_only = client.post(f"/collections/{cid}/tuning-jobs", json={"training_data": "pairs"})
    assert pairs_only.json()["code"] == "too_few_pairs"
    queued = client.post(f"/collections/{cid}/tuning-jobs", json={**QUICK, "activation": "never"})
    assert queued.status_code == 202 and queued.json()["split_sizes"]["marked"] >= 2
    assert wait(client, queued.json()["id"])["state"] in ("succeeded", "failed")  # 2 texts may leave none to judge


def _selection(queries: int, low: float) -> Selection:
    gain = Interval(0.05, low, 0.1)
    return Selection(3, 0.5, gain, queries, served=low > 0, candidates=[{}] * 40, gate=gain, zero_shot_ap=0.4)


def test_marks_activate_only_past_the_gate_and_never_over_another_active_version():
    past = decide_on_marks(Activation.IF_BETTER, 0.0, _selection(MIN_JUDGED_QUERIES, 0.01), "none")
    assert past.activate and past.evidence is not None and past.evidence.activated
    assert past.evidence.adapter == 0.45 and past.evidence.baseline == 0.4
    assert not decide_on_marks(Activation.IF_BETTER, 0.0, _selection(MIN_JUDGED_QUERIES, -0.01), "none").activate
    assert not decide_on_marks(Activation.IF_BETTER, 0.02, _selection(MIN_JUDGED_QUERIES, 0.01), "none").activate
    few = decide_on_marks(Activation.IF_BETTER, 0.0, _selection(MIN_JUDGED_QUERIES - 1, 0.01), "none")
    assert not few.activate and "judged queries" in few.note
    other = decide_on_marks(Activation.IF_BETTER, 0.0, _selection(MIN_JUDGED_QUERIES, 0.01), "v2")
    assert not other.activate and "v2 is active" in other.note
    assert decide_on_marks(Activation.IF_NOT_WORSE, 0.0, _selection(5, -0.01), "none").activate
    assert decide_on_marks(Activation.ALWAYS, 0.0, _selection(5, -0.01), "v2").activate
    assert not decide_on_marks(Activation.NEVER, 0.0, _selection(99, 0.05), "none").activate
    nothing = decide_on_marks(Activation.IF_BETTER, 0.0, Selection(0, 0.0, None, 0, False), "none")
    assert not nothing.activate and nothing.evidence is None

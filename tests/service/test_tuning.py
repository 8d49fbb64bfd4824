"""The user's main loop over real HTTP: ingest -> tune -> watch -> search better -> roll back -> restart."""

import json
import threading
import time

import pytest
from sqlalchemy import func, select

from adapters.artifact import read_adapter_info, serialize_adapter
from adapters.backbone import load_backbone
from adapters.prompted import PromptConfig, PromptedCLIP
from adapters.train import TrainConfig
from service.models import AdapterVersion, Embedding, TuningJob
from service.schemas import DcarOptions, TuningConfig
from service.tuning import SERVICE_FIELDS, to_train_config
from tests.support import fill, png_bytes, upload

QUICK = {"epochs": 2, "batch_size": 8, "text_tokens": 2, "visual_tokens": 2}
SLOW = {"epochs": 200, "batch_size": 2, "text_tokens": 2, "visual_tokens": 2, "patience": None}


def wait(client, job_id, until=("succeeded", "failed", "cancelled"), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in until:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s")


def start_job(client, cid, **config):
    response = client.post(f"/collections/{cid}/tuning-jobs", json=config)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "queued"
    return response.json()["id"]


def ranking(client, cid, adapter="active"):
    body = client.post(f"/collections/{cid}/search", json={"query": ["a red thing", "blue"], "k": 8,
                                                           "adapter": adapter}).json()
    return body["adapter"], [[h["image_id"] for h in row] for row in body["results"]]


def test_tune_search_roll_back_restart(make_client):
    client = make_client()
    cid = fill(client)
    zero_shot = ranking(client, cid)
    assert zero_shot[0] == "none"

    # This loop is about serving a tuned adapter, not about whether the tiny random model gains.
    job = wait(client, start_job(client, cid, method="dual", activation="if_not_worse", **QUICK))
    assert job["state"] == "succeeded", job["error"]
    assert job["adapter_version"] == 1
    assert job["split_sizes"] == {"train": 15, "val": 4, "test": 5}
    assert job["progress"]["total_steps"] == job["progress"]["step"] > 0
    assert "val" in job["progress"]

    adapters = client.get(f"/collections/{cid}/adapters").json()
    assert len(adapters) == 1
    assert adapters[0]["active"]
    assert adapters[0]["has_visual"]
    assert adapters[0]["param_count"] > 0
    assert 0 < adapters[0]["size_bytes"] < 40_000  # prompts, maps and a word table on the tiny backbone: kilobytes
    detail = client.get(f"/collections/{cid}/adapters/1").json()
    assert set(detail["report"]["test"]) >= {"adapter", "zero_shot", "baseline"}
    assert len(detail["report"]["loss_curve"]) == job["progress"]["total_steps"]
    words = detail["report"]["training"]["collection_words"]  # what the word table learned, most used first
    assert 0 < len(words) <= detail["report"]["config"]["word_tokens"]
    assert "red" in words

    tuned = ranking(client, cid)
    assert tuned[0] == "v1"
    assert ranking(client, cid, "v1") == tuned
    assert ranking(client, cid, "1") == tuned
    assert ranking(client, cid, "none") == zero_shot

    # Roll back to zero-shot, then forward again; each state survives a restart.
    client.post(f"/collections/{cid}/adapters/none/activate")
    assert ranking(client, cid) == zero_shot
    client = make_client.restart(client)
    assert ranking(client, cid) == zero_shot
    assert client.post(f"/collections/{cid}/adapters/1/activate").status_code == 200
    client = make_client.restart(client)
    assert ranking(client, cid) == tuned


def test_text_only_adapter_reuses_zero_shot_index(client):
    cid = fill(client)
    assert wait(client, start_job(client, cid, method="text", **QUICK))["state"] == "succeeded"
    status = client.get(f"/collections/{cid}").json()["indexes"]
    assert [s["space"] for s in status] == ["none"]
    assert client.get(f"/collections/{cid}/adapters").json()[0]["has_visual"] is False


def test_the_default_method_trains_each_candidate_and_keeps_the_one_better_on_val(client):
    cid = fill(client)
    job = wait(client, start_job(client, cid, activation="always", **QUICK))  # method auto: the default
    assert job["config"]["method"] == "auto"
    assert (job["progress"]["run"], job["progress"]["runs"]) == (3, 3)  # the last candidate's progress

    detail = client.get(f"/collections/{cid}/adapters/1").json()
    assert detail["method"] == "dual"
    tried = detail["report"]["candidates"]["candidates"]
    assert [c["name"] for c in tried] == ["recipe", "recipe + block adapters", "recipe + block adapters, lr 3e-3"]
    kept = [c for c in tried if c["chosen"]]
    assert len(kept) == 1 and kept[0]["name"] == detail["report"]["candidates"]["chosen"]
    assert detail["report"]["training"]["val"] == kept[0]["val"]
    assert detail["param_count"] == kept[0]["params"]
    stored = read_adapter_info(client.get(f"/collections/{cid}/adapters/1/file").content)
    assert (stored.prompt_config.block_adapter_rank > 0) == (kept[0]["name"] != "recipe")
    assert stored.train_config["residual_lr"] == (3e-3 if kept[0]["name"].endswith("lr 3e-3") else 1e-3)
    assert stored.train_config["block_adapter_rank"] == stored.prompt_config.block_adapter_rank

    single = wait(client, start_job(client, cid, method="dual", activation="never", **QUICK))
    report = client.get(f"/collections/{cid}/adapters/{single['adapter_version']}").json()["report"]
    assert report["candidates"] is None and "run" not in single["progress"]


def test_events_stream_until_the_end(client):
    cid = fill(client)
    job_id = start_job(client, cid, **QUICK)
    events = []
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    assert events[-1][0] == "end"
    assert events[-1][1]["state"] == "succeeded"
    states = [e[1]["state"] for e in events]
    assert states.index("succeeded") == len(states) - 2  # the last progress event, then end


@pytest.mark.slow
def test_images_added_later_join_every_served_index(client):
    cid = fill(client)
    wait(client, start_job(client, cid, **QUICK))
    upload(client, cid, [("late.png", png_bytes(500))], [{"captions": ["late"]}])
    assert {s["space"]: s["size"] for s in client.get(f"/collections/{cid}").json()["indexes"]} == {"none": 25, "v1": 25}


def test_adapter_that_does_not_beat_the_active_one_stays_inactive(client):
    cid = fill(client)
    job = wait(client, start_job(client, cid, min_gain=1.0, **QUICK))  # R@1 cannot rise by 1.0
    assert job["state"] == "succeeded"
    adapter = client.get(f"/collections/{cid}/adapters").json()[0]
    assert not adapter["active"]
    assert adapter["note"].startswith("kept inactive")
    assert ranking(client, cid)[0] == "none"


def test_cancel_queued_and_running(client, tmp_path):
    cid = fill(client)
    running = start_job(client, cid, **SLOW)
    queued = start_job(client, cid, **SLOW)
    wait(client, running, until=("running",))
    assert client.post(f"/jobs/{queued}/cancel").json()["state"] == "cancelled"
    client.post(f"/jobs/{running}/cancel")
    assert wait(client, running)["state"] == "cancelled"
    assert client.get(f"/collections/{cid}/adapters").json() == []
    assert not list((tmp_path / "data").rglob("*.safetensors"))
    # Cancelling a finished job changes nothing.
    assert client.post(f"/jobs/{running}/cancel").json()["state"] == "cancelled"


def test_restart_during_a_job_keeps_nothing(make_client, tmp_path):
    client = make_client()
    cid = fill(client)
    job_id = start_job(client, cid, **SLOW)
    wait(client, job_id, until=("running",))
    client = make_client.restart(client)  # a shutdown in the middle of training
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "failed"
    assert "interrupted" in job["error"]
    assert client.get(f"/collections/{cid}/adapters").json() == []

    # A crash leaves the row `running`: the next start marks it failed.
    ctx = client.app.state.context
    with ctx.session() as session:
        session.add(TuningJob(collection_id=cid, state="running", config={}, split={}, progress={}))
        session.commit()
    client = make_client.restart(client)
    crashed = client.get(f"/collections/{cid}/tuning-jobs").json()[-1]
    assert crashed["state"] == "failed"
    assert "restart" in crashed["error"]
    assert not list((tmp_path / "data").rglob("*.safetensors"))


@pytest.mark.parametrize("config, code", [
    ({"method": "bogus"}, "invalid_request"),
    ({"epochs": 0}, "invalid_request"),
    ({"lr": -1}, "invalid_request"),
    ({"surprise": True}, "invalid_request"),
    ({"text_tokens": 30}, "bad_config"),
    ({"method": "visual", "visual_deep_from": 9}, "bad_config"),
    ({"test_fraction": 0.6}, "invalid_request"),
])
def test_bad_job_configs(client, config, code):
    cid = fill(client)
    response = client.post(f"/collections/{cid}/tuning-jobs", json=config)
    assert response.status_code == 422, response.json()
    assert response.json()["code"] == code, response.json()


def test_too_few_pairs_says_the_minimum(client):
    cid = client.post("/collections", json={"name": "small"}).json()["id"]
    metadata = [{"captions": ["x"]} for _ in range(5)] + [{"category": "cat"} for _ in range(3)] + [{}] * 7
    upload(client, cid, [(f"{i}.png", png_bytes(i)) for i in range(15)], metadata)
    response = client.post(f"/collections/{cid}/tuning-jobs", json={})
    body = response.json()
    assert response.status_code == 422
    assert body["code"] == "too_few_pairs"
    assert body["captioned"] == 8  # 5 captioned + 3 with only a category
    assert f"at least {body['minimum']} captioned or categorised images" in body["detail"]
    assert client.post("/collections/999/tuning-jobs", json={}).status_code == 404
    assert client.get("/jobs/999").status_code == 404


@pytest.mark.slow
def test_upload_download_and_incompatible_artifacts(client):
    cid = fill(client)
    wait(client, start_job(client, cid, **QUICK))
    blob = client.get(f"/collections/{cid}/adapters/1/file").content
    other = fill(client, name="other")
    response = client.post(f"/collections/{other}/adapters", files={"file": ("a.safetensors", blob)},
                           data={"activate": "true"})
    assert response.status_code == 201, response.text
    assert response.json()["active"]
    assert response.json()["version"] == 1
    assert ranking(client, other)[0] == "v1"

    foreign = PromptedCLIP.from_backbone(load_backbone("miniworld-vit"), PromptConfig(text_tokens=2))
    refused = client.post(f"/collections/{other}/adapters",
                          files={"file": ("f.safetensors", serialize_adapter(foreign))})
    assert refused.status_code == 422
    assert refused.json()["code"] == "adapter_incompatible"
    assert "embed_dim" in refused.json()["fields"]
    garbage = client.post(f"/collections/{other}/adapters", files={"file": ("g.safetensors", b"not an adapter")})
    assert garbage.status_code == 422
    assert garbage.json()["code"] == "bad_adapter_file"
    assert len(client.get(f"/collections/{other}/adapters").json()) == 1


def test_delete_adapter(client, tmp_path):
    cid = fill(client)
    wait(client, start_job(client, cid, activation="if_not_worse", **QUICK))  # v1 active, to refuse its delete
    refused = client.delete(f"/collections/{cid}/adapters/1")
    assert refused.status_code == 409
    assert refused.json()["code"] == "adapter_active"
    assert client.delete(f"/collections/{cid}/adapters/1", params={"force": "true"}).status_code == 204
    assert ranking(client, cid)[0] == "none"
    assert not list((tmp_path / "data").rglob("*.safetensors"))
    assert not list((tmp_path / "data").rglob("v1.faiss"))
    with client.app.state.context.session() as session:
        assert session.scalar(select(func.count()).select_from(Embedding).where(Embedding.space == "v1")) == 0
        assert session.scalar(select(func.count()).select_from(AdapterVersion)) == 0
    assert client.delete(f"/collections/{cid}/adapters/1").status_code == 404

    # A number once given is never given again: a client that pinned "v1" gets 404, not another adapter.
    job = wait(client, start_job(client, cid, **QUICK))
    assert job["state"] == "succeeded"
    assert job["adapter_version"] == 2
    assert [a["version"] for a in client.get(f"/collections/{cid}/adapters").json()] == [2]
    gone = client.post(f"/collections/{cid}/search", json={"query": "red", "adapter": "v1"})
    assert gone.status_code == 404
    assert gone.json()["code"] == "adapter_not_found"


def test_a_cancel_during_evaluation_still_keeps_nothing(client, monkeypatch):
    """A cancel that lands after the last training step (while testing or indexing) must win too."""
    import service.tuning as tuning

    cid = fill(client)
    real_measure, entered, release = tuning.measure, threading.Event(), threading.Event()

    def slow_measure(*args, **kwargs):
        entered.set()
        release.wait(30)
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(tuning, "measure", slow_measure)
    job_id = start_job(client, cid, **QUICK)
    assert entered.wait(60), "the job never reached its evaluation"
    assert client.post(f"/jobs/{job_id}/cancel").json()["state"] == "running"
    release.set()
    job = wait(client, job_id)
    assert job["state"] == "cancelled"
    assert job["adapter_version"] is None
    assert client.get(f"/collections/{cid}/adapters").json() == []
    assert ranking(client, cid)[0] == "none"


@pytest.mark.slow
def test_searches_during_activation_swaps_all_succeed(client):
    cid = fill(client)
    wait(client, start_job(client, cid, **QUICK))
    failures, answered = [], set()
    stop = threading.Event()

    def searcher():
        while not stop.is_set():
            response = client.post(f"/collections/{cid}/search", json={"query": "red", "k": 5})
            if response.status_code != 200:
                failures.append(response.text)
            else:
                answered.add(response.json()["adapter"])

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(20):
        client.post(f"/collections/{cid}/adapters/{'none' if i % 2 else '1'}/activate")
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert answered == {"none", "v1"}


@pytest.mark.slow
def test_deleting_a_collection_removes_its_adapters_and_jobs(client, tmp_path):
    cid = fill(client)
    wait(client, start_job(client, cid, **QUICK))
    assert client.delete(f"/collections/{cid}").status_code == 204
    assert not (tmp_path / "data" / "collections" / str(cid)).exists()
    with client.app.state.context.session() as session:
        assert session.scalar(select(func.count()).select_from(TuningJob)) == 0
        assert session.scalar(select(func.count()).select_from(AdapterVersion)) == 0


def test_the_http_defaults_are_the_training_recipe():
    """One recipe: every training field of a default job config is TrainConfig's default, field for field."""
    recipe = TrainConfig()
    converted = to_train_config(TuningConfig(), device="cpu")
    for name in TuningConfig.model_fields.keys() - SERVICE_FIELDS:
        assert getattr(converted, name) == getattr(recipe, name), name
    for name in DcarOptions.model_fields:
        assert getattr(converted, name) == getattr(recipe, name), name
    assert converted.device == "cpu"


def test_every_job_setting_reaches_training():
    config = TuningConfig(method="text", epochs=3, lr=0.5, batch_size=4, text_tokens=3, visual_tokens=5,
                          visual_start=2, visual_deep_from=None, text_init="random", patience=2, seed=7,
                          dcar={"same_category_weight": 0.5, "hard_negatives": 2, "attribute_reweighting": True})
    converted = to_train_config(config, device="cpu")
    assert converted.method == "text"
    assert (converted.epochs, converted.lr, converted.batch_size, converted.patience, converted.seed) == (3, 0.5, 4, 2, 7)
    assert (converted.text_tokens, converted.visual_tokens, converted.visual_start) == (3, 5, 2)
    assert converted.visual_deep_from is None
    assert converted.text_init == "random"
    assert (converted.same_category_weight, converted.hard_negatives, converted.attribute_reweighting) == (0.5, 2, True)

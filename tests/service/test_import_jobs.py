"""Imports as background jobs over real HTTP: a directory tree or a manifest under the import root, in batches,
with progress, duplicates and failures, cancel, and resume after a shutdown or a crash."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from service import unit_of_work
from service.cli import main
from service.config import Settings
from service.context import ServiceContext
from service.import_jobs import enqueue_import
from service.jobs import JobRunner
from service.models import ImageRecord
from service.schemas import ImportRequest
from tests.service.live_server import live_server
from tests.service.test_tuning import wait
from tests.service.test_unit_of_work import assert_consistent
from tests.support import CRASHED, TEST_BACKBONE, crash_at, exit_code_of_child, png_bytes


def tree(root: Path) -> Path:
    """pets/cats (3 images, one with a caption file), pets/dogs (2), one image at the top of pets, a copy of
    a cat elsewhere, a broken image, and files an import skips (hidden, not an image)."""
    cats, dogs = root / "pets" / "cats", root / "pets" / "dogs"
    cats.mkdir(parents=True)
    dogs.mkdir()
    for i in range(3):
        (cats / f"cat{i}.png").write_bytes(png_bytes(100 + i))
    (cats / "cat0.txt").write_text("a grey cat\n\n  asleep on a sofa \n")
    for i in range(2):
        (dogs / f"dog{i}.jpg").write_bytes(png_bytes(200 + i, fmt="JPEG"))
    (root / "pets" / "top.png").write_bytes(png_bytes(300))
    (dogs / "same-as-cat1.png").write_bytes(png_bytes(101))
    (dogs / "broken.png").write_bytes(b"not an image")
    (dogs / ".hidden.png").write_bytes(png_bytes(400))
    (dogs / "notes.md").write_text("not an image")
    return root


class Pause:
    """Holds the import's worker right after its first batch committed, until released."""

    def __init__(self, monkeypatch):
        self.reached, self.release = threading.Event(), threading.Event()
        self.commits = 0

        def phase_reached(phase: str) -> None:
            if phase == "committed":
                self.commits += 1
                if self.commits == 1:
                    self.reached.set()
                    assert self.release.wait(60)

        monkeypatch.setattr(unit_of_work, "phase_reached", phase_reached)


def events(client, job_id: int) -> list[tuple[str, dict]]:
    out, name = [], None
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


def images(client, cid: int) -> dict[str, dict]:
    return {image["filename"]: image for image in client.get(f"/collections/{cid}/images").json()["items"]}


def test_a_directory_import_runs_as_a_job_with_progress(make_client, tmp_path, monkeypatch):
    root = tree(tmp_path / "imports")
    client = make_client(import_root=root, import_batch_size=2)
    cid = client.post("/collections", json={"name": "pets"}).json()["id"]
    pause = Pause(monkeypatch)

    response = client.post(f"/collections/{cid}/images/import", json={"directory": "pets"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["kind"], job["state"], job["config"]) == ("import", "queued", {"directory": "pets",
                                                                               "folder_categories": True})
    assert job["progress"]["total_steps"] == 8  # hidden and non-image files are not part of it

    # Mid-way, the job says how far it is; a tuning job would draw its split from half a collection: 409.
    assert pause.reached.wait(60)
    running = client.get(f"/jobs/{job['id']}").json()
    assert running["state"] == "running"
    assert (running["progress"]["stage"], running["progress"]["step"]) == ("importing", 2)
    refused = client.post(f"/collections/{cid}/tuning-jobs", json={})
    assert refused.status_code == 409
    assert refused.json()["code"] == "import_in_progress"
    assert refused.json()["job_id"] == job["id"]
    pause.release.set()

    stream = events(client, job["id"])
    assert stream[-1][0] == "end"
    assert stream[-1][1]["state"] == "succeeded"
    done = stream[-1][1]["progress"]
    assert (done["step"], done["total_steps"], done["added"], done["duplicates"], done["failed"]) == (8, 8, 6, 1, 1)
    assert done["failures"] == [{"path": "pets/dogs/broken.png",
                                 "reason": "not a decodable image (unknown or unsupported format)"}]
    assert done["eta_s"] is None

    stored = images(client, cid)
    assert sorted(stored) == ["pets/cats/cat0.png", "pets/cats/cat1.png", "pets/cats/cat2.png",
                              "pets/dogs/dog0.jpg", "pets/dogs/dog1.jpg", "pets/top.png"]
    assert {name: image["category"] for name, image in stored.items()} == {
        # The copy of cat1 in dogs/ is the same image: stored once; the later file's folder (a category sent
        # with a duplicate replaces the stored one, as for uploads) wins.
        "pets/cats/cat0.png": "cats", "pets/cats/cat1.png": "dogs", "pets/cats/cat2.png": "cats",
        "pets/dogs/dog0.jpg": "dogs", "pets/dogs/dog1.jpg": "dogs", "pets/top.png": "pets"}
    assert stored["pets/cats/cat0.png"]["captions"] == ["a grey cat", "asleep on a sofa"]
    assert client.get(f"/collections/{cid}").json()["image_count"] == 6
    hits = client.post(f"/collections/{cid}/search", json={"query": "a cat", "k": 10}).json()["results"]
    assert len(hits) == 6  # every image is in the index

    assert [j["id"] for j in client.get(f"/collections/{cid}/import-jobs").json()] == [job["id"]]
    assert client.get(f"/collections/{cid}/tuning-jobs").json() == []

    # Importing the same tree again stores nothing new: every file is recognised by its bytes.
    again = client.post(f"/collections/{cid}/images/import", json={"directory": "pets",
                                                                   "folder_categories": False}).json()
    final = wait(client, again["id"])
    assert final["state"] == "succeeded"
    assert (final["progress"]["added"], final["progress"]["duplicates"]) == (0, 7)
    assert client.get(f"/collections/{cid}").json()["image_count"] == 6


def test_a_manifest_import_is_a_job_too(make_client, tmp_path, caplog):
    root = tmp_path / "imports"
    (root / "pics").mkdir(parents=True)
    for i in range(3):
        (root / "pics" / f"{i}.png").write_bytes(png_bytes(i))
    (root / "m.jsonl").write_text("\n".join(json.dumps(line) for line in [
        {"path": "pics/0.png", "captions": ["zero", "nil"], "category": "num"},
        {"path": "pics/1.png", "caption": "one"},
        {"path": "pics/missing.png"},
    ]))
    client = make_client(import_root=root)
    cid = client.post("/collections", json={"name": "c"}).json()["id"]
    caplog.set_level("INFO", logger="service")
    response = client.post(f"/collections/{cid}/images/import", json={"manifest": "m.jsonl"})
    assert response.status_code == 202
    job = wait(client, response.json()["id"])
    assert job["state"] == "succeeded"
    assert f"import job {job['id']} queued for collection {cid} (3 files)" in caplog.text
    assert f"import job {job['id']} started for collection {cid}" in caplog.text
    assert (f"import job {job['id']} (collection {cid}) ended: succeeded, 2 added, 0 duplicates, 1 failed of 3 files"
            in caplog.text)
    assert job["progress"]["failures"] == [{"path": "pics/missing.png", "reason": "file not found"}]
    stored = images(client, cid)
    assert (stored["pics/0.png"]["captions"], stored["pics/0.png"]["category"]) == (["zero", "nil"], "num")
    assert stored["pics/1.png"]["captions"] == ["one"]

    # Every file failing fails the job, with the reasons in its progress.
    (root / "none.jsonl").write_text(json.dumps({"path": "pics/nothing.png"}) + "\n")
    failed = wait(client, client.post(f"/collections/{cid}/images/import", json={"manifest": "none.jsonl"}).json()["id"])
    assert failed["state"] == "failed"
    assert "every file was rejected" in failed["error"]
    assert failed["progress"]["failed"] == 1


def test_cancel_stops_after_the_batch_in_hand(make_client, tmp_path, monkeypatch):
    root = tree(tmp_path / "imports")
    client = make_client(import_root=root, import_batch_size=2)
    cid = client.post("/collections", json={"name": "pets"}).json()["id"]
    pause = Pause(monkeypatch)
    job_id = client.post(f"/collections/{cid}/images/import", json={"directory": "pets"}).json()["id"]
    assert pause.reached.wait(60)
    assert client.post(f"/jobs/{job_id}/cancel").json()["state"] == "running"  # it stops at its next batch
    pause.release.set()
    job = wait(client, job_id)
    assert job["state"] == "cancelled"
    assert (job["progress"]["step"], job["progress"]["added"]) == (2, 2)  # the batch committed before is kept
    assert client.get(f"/collections/{cid}").json()["image_count"] == 2
    # A queued import is cancelled at once.
    pause = Pause(monkeypatch)
    first = client.post(f"/collections/{cid}/images/import", json={"directory": "pets/dogs"}).json()["id"]
    queued = client.post(f"/collections/{cid}/images/import", json={"directory": "pets/cats"}).json()["id"]
    assert pause.reached.wait(60)
    assert client.post(f"/jobs/{queued}/cancel").json()["state"] == "cancelled"
    pause.release.set()
    assert wait(client, first)["state"] == "succeeded"
    assert wait(client, queued)["state"] == "cancelled"


def test_a_shutdown_mid_import_resumes_at_the_next_start(make_client, tmp_path, monkeypatch):
    root = tree(tmp_path / "imports")
    client = make_client(import_root=root, import_batch_size=2)
    cid = client.post("/collections", json={"name": "pets"}).json()["id"]
    runner = client.app.state.context.jobs
    reached = threading.Event()

    def phase_reached(phase: str) -> None:  # the first batch is in; hold the worker until the shutdown begins
        if phase == "committed" and not reached.is_set():
            reached.set()
            deadline = time.monotonic() + 60
            while not runner._stop.is_set():
                assert time.monotonic() < deadline
                time.sleep(0.01)

    monkeypatch.setattr(unit_of_work, "phase_reached", phase_reached)
    job_id = client.post(f"/collections/{cid}/images/import", json={"directory": "pets"}).json()["id"]
    assert reached.wait(60)
    client = make_client.restart(client)
    job = wait(client, job_id)
    assert job["state"] == "succeeded"
    assert (job["progress"]["added"], job["progress"]["duplicates"], job["progress"]["failed"]) == (6, 1, 1)
    assert client.get(f"/collections/{cid}").json()["image_count"] == 6


def crash_mid_import(data_dir: Path, root: Path, phase: str, backbone, database_url: str | None) -> int:
    """Fork; the child queues a directory import and runs it with a job runner until the second batch
    reaches ``phase``, where it dies (os._exit: no rollback, no clean-up). Returns the child's exit code."""

    def work() -> int:
        from service.collections import create_collection

        crash_at(phase, nth=2)
        ctx = ServiceContext(Settings(data_dir=data_dir, database_url=database_url, backbone_model=TEST_BACKBONE,
                                      import_root=root, import_batch_size=2), backbone)
        cid = create_collection(ctx, "pets", None).id
        enqueue_import(ctx, cid, ImportRequest(directory="pets"))
        ctx.jobs = JobRunner(ctx)
        ctx.jobs.start()
        time.sleep(120)
        return 1  # the phase was never reached

    return exit_code_of_child(work)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash is simulated in a forked child")
@pytest.mark.parametrize("phase", ["staged", "committed"])
def test_a_crash_mid_import_resumes_without_duplicates(make_client, tmp_path, tiny_backbone, database_url, phase,
                                                       caplog):
    root = tree(tmp_path / "imports")
    data_dir = tmp_path / "data"
    assert crash_mid_import(data_dir, root, phase, tiny_backbone, database_url) == CRASHED

    caplog.set_level("INFO", logger="service.import_jobs")
    client = make_client(import_root=root, import_batch_size=2)
    done_before = {"staged": 2, "committed": 4}[phase]  # the second batch was rolled back, or committed
    assert f"import job 1 (collection 1) stopped at file {done_before} of 8; queued to resume" in caplog.text
    job = wait(client, 1)
    assert job["state"] == "succeeded"
    progress = job["progress"]
    assert (progress["step"], progress["added"], progress["duplicates"], progress["failed"]) == (8, 6, 1, 1)
    ctx = client.app.state.context
    with ctx.session() as session:
        assert session.scalar(select(func.count(func.distinct(ImageRecord.sha256)))) == 6
        assert session.scalar(select(func.count()).select_from(ImageRecord)) == 6
    assert_consistent(ctx, data_dir)


def test_bad_imports_are_refused_with_4xx_and_queue_nothing(make_client, tmp_path):
    root = tree(tmp_path / "imports")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "private.png").write_bytes(png_bytes(900))
    (root / "linked-out").symlink_to(secret)  # a link to a folder outside the root
    (root / "pets" / "cats" / "leak.png").symlink_to(secret / "private.png")  # a link to a file outside
    (root / "empty").mkdir()
    client = make_client(import_root=root)
    cid = client.post("/collections", json={"name": "c"}).json()["id"]
    url = f"/collections/{cid}/images/import"

    def refused(body: dict, status: int) -> str:
        response = client.post(url, json=body)
        assert response.status_code == status, (body, response.text)
        detail = response.json()
        assert isinstance(detail["detail"], str)
        assert str(root) not in detail["detail"]  # says no server path
        return detail["code"]

    assert refused({}, 422) == "invalid_request"
    assert refused({"manifest": "m.jsonl", "directory": "pets"}, 422) == "invalid_request"
    assert refused({"directory": ""}, 422) == "invalid_request"
    for outside in ("..", "../secret", str(secret), "linked-out", "/etc"):
        assert refused({"directory": outside}, 403) == "outside_import_root"
    assert refused({"directory": "nowhere"}, 404) == "directory_not_found"
    assert refused({"directory": "pets/top.png"}, 404) == "directory_not_found"
    assert refused({"directory": "empty"}, 422) == "no_images"
    assert refused({"directory": "d" * 300}, 422) == "bad_directory"
    assert refused({"directory": "pets", "colour": "red"}, 422) == "invalid_request"
    assert client.post("/collections/999/images/import", json={"directory": "pets"}).status_code == 404
    assert client.get(f"/collections/{cid}/import-jobs").json() == []

    # A linked file leading outside the root is a failed file, never read; the linked folder is not entered.
    job = wait(client, client.post(url, json={"directory": "."}).json()["id"])
    assert job["state"] == "succeeded"
    assert {"path": "pets/cats/leak.png",
            "reason": "the file (or its caption file) resolves outside the import root"} in job["progress"]["failures"]
    assert not [name for name in images(client, cid) if "private" in name or "linked" in name]
    assert images(client, cid)["pets/top.png"]["category"] == "pets"

    disabled = make_client(data_dir=tmp_path / "other")
    other = disabled.post("/collections", json={"name": "elsewhere"}).json()["id"]
    response = disabled.post(f"/collections/{other}/images/import", json={"directory": "pets"})
    assert response.status_code == 403
    assert response.json()["code"] == "import_disabled"


def test_the_cli_import_command_follows_the_job(tiny_backbone, tmp_path, capsys):
    root = tree(tmp_path / "imports")
    data_dir = tmp_path / "data"
    with live_server(tiny_backbone, data_dir=data_dir, import_root=root, import_batch_size=3) as (url, _):
        with httpx.Client(base_url=url) as http:
            http.post("/collections", json={"name": "pets"}).raise_for_status()
        common = ["--data-dir", str(data_dir), "--backbone-model", TEST_BACKBONE]
        assert main(["import", "pets", "--directory", "pets", "--wait", *common]) == 0
        out = capsys.readouterr().out
        assert "import job 1 queued for collection 1" in out
        assert "(8 files)" in out
        assert "failed pets/dogs/broken.png: not a decodable image" in out
        assert "import job 1 succeeded: 6 added, 1 duplicates, 1 failed" in out
        # Without --wait it only queues; a bad request is one error line.
        assert main(["import", "pets", "--manifest", "nope.jsonl", *common]) == 2
        assert "manifest 'nope.jsonl' not found" in capsys.readouterr().err

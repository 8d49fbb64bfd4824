"""Scaled out for real: one PostgreSQL, one shared data directory, two API processes, two workers.

Every process is a real `prompt-adapters` subprocess (uvicorn on 127.0.0.1, procrastinate workers)
on the tiny model config. Checked: jobs spread over the workers; a worker killed with SIGKILL mid-job
is noticed by its missing heartbeat and its job fails cleanly while the other worker's job runs on;
a cancel sent to the other API reaches the job on its worker; a job row left queued without a queue
job (its API died in between) is queued again by a worker; an activation, an ingest, an image delete
and a version delete made through one API are served by the other within the documented bound
(PAS_REPLICA_SYNC_S); collections, indexes and jobs read the same through both afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from service import cli, job_queue
from service.config import Settings
from service.data_lock import DataDirBusy, hold_data_dir, share_data_dir
from service.index import IndexRegistry
from service.models import TuningJob, utcnow
from tests.service.live_server import free_port
from tests.service.test_tuning import SLOW
from tests.support import (
    TEST_BACKBONE,
    adapter_blob,
    fill,
    fresh_postgres_database,
    png_bytes,
    throwaway_postgres_server,
    upload,
)

SYNC_S = 0.5  # PAS_REPLICA_SYNC_S: the bound on how long a write made through one API goes unseen by another
HEARTBEAT_S, STALLED_S = 0.5, 3.0


@pytest.fixture(scope="module")
def postgres_server():
    with throwaway_postgres_server() as url:
        yield url


class Processes:
    """Subprocesses of `prompt-adapters` with one environment; each one's output goes to its own log file."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([sys.executable, "-m", "service.cli", *args], env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT)
        log.close()  # the child holds its own descriptor
        self.running[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, name: str, what: str, ready, timeout: float = 300) -> None:
        """Until ``ready()``; a process that exits first fails the test with its log."""
        wait_until(f"{name} {what}", lambda: ready() or self.running[name].poll() is not None, timeout=timeout)
        assert self.running[name].poll() is None, self.log(name)

    def report(self) -> str:
        """Each process's exit code (None: running) and the end of its log."""
        return "\n".join(f"--- {name} (exit {process.poll()}):\n{self.log(name)[-3000:]}"
                         for name, process in self.running.items())

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(what: str, check, timeout: float = 60.0, step: float = 0.1, diagnose=None):
    """``diagnose()``: what to show if it times out (e.g. the processes' logs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{diagnose()}" if diagnose else ""))
        time.sleep(step)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def taken_by(processes: Processes, job_id: int) -> str | None:
    """The worker whose log says it took the job."""
    for name in ("worker-1", "worker-2"):
        if re.search(rf"\bjob {job_id} taken by worker", processes.log(name)):
            return name
    return None


def ids_found(api: httpx.Client, cid: int, adapter: str = "none") -> set[int]:
    response = api.post(f"/collections/{cid}/search", json={"query": "a thing", "k": 1000, "adapter": adapter})
    assert response.status_code == 200, response.text
    return {hit["image_id"] for hit in response.json()["results"]}


def described(api: httpx.Client, cid: int) -> tuple:
    collection = api.get(f"/collections/{cid}").json()
    jobs = api.get(f"/collections/{cid}/tuning-jobs").json()
    versions = api.get(f"/collections/{cid}/adapters").json()
    return (collection["image_count"], sorted((i["space"], i["size"]) for i in collection["indexes"]),
            [(j["id"], j["state"], j["error"]) for j in jobs], [(v["version"], v["active"]) for v in versions])


def queued_row_without_queue_job(url: str, copy_of: int) -> int:
    """A `queued` row as an API writes it, from long enough ago to count as lost, and no queue job for it."""
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            model = session.get(TuningJob, copy_of)
            assert model is not None
            row = TuningJob(collection_id=model.collection_id, state="queued", config=model.config, split=model.split,
                            progress={"stage": "queued"},
                            created_at=utcnow() - timedelta(seconds=job_queue.LOST_AFTER_S + 1))
            session.add(row)
            session.commit()
            return row.id
    finally:
        engine.dispose()


@pytest.mark.slow
def test_two_apis_and_two_workers_agree(postgres_server, tmp_path, tiny_backbone):
    with ExitStack() as stack:
        url = stack.enter_context(fresh_postgres_database(postgres_server))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "HF_HUB_OFFLINE": "1",
               "PAS_SCALE_OUT": "1", "PAS_DATABASE_URL": url, "PAS_DATA_DIR": str(tmp_path / "data"),
               "PAS_BACKBONE_MODEL": TEST_BACKBONE, "PAS_REPLICA_SYNC_S": str(SYNC_S),
               "PAS_WORKER_HEARTBEAT_S": str(HEARTBEAT_S), "PAS_WORKER_STALLED_S": str(STALLED_S),
               "PAS_INDEX_SAVE_DELAY_S": "0.5", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        processes = Processes(env, tmp_path)
        stack.callback(processes.stop_all)
        ports = [free_port(), free_port()]
        for n, port in enumerate(ports, start=1):
            processes.start(f"api-{n}", "serve", "--port", str(port))
        processes.start("worker-1", "worker")
        processes.start("worker-2", "worker")
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for name, url_ in zip(("api-1", "api-2"), urls, strict=True):
            # Generous: four processes import torch at once, on a CPU other jobs may be using too.
            processes.wait_ready(name, "to serve", lambda u=url_: healthy(u))
        # A job takes seconds here: a worker still loading its backbone would leave both jobs to the other.
        for name in ("worker-1", "worker-2"):
            processes.wait_ready(name, "taking jobs", lambda n=name: "taking jobs from queue" in processes.log(n))
        api1 = stack.enter_context(httpx.Client(base_url=urls[0], timeout=60))
        api2 = stack.enter_context(httpx.Client(base_url=urls[1], timeout=60))

        cid = fill(api1)  # 24 captioned images, through API 1
        assert ids_found(api2, cid) == ids_found(api1, cid)  # API 2 loads the zero-shot index now

        # Two long jobs: each worker runs one at a time, so both running at once means both workers work.
        job_a = api1.post(f"/collections/{cid}/tuning-jobs", json=SLOW).json()["id"]
        job_b = api2.post(f"/collections/{cid}/tuning-jobs", json=SLOW).json()["id"]
        def both_running() -> bool:
            jobs = [api1.get(f"/jobs/{j}").json() for j in (job_a, job_b)]
            ended = [j for j in jobs if j["state"] not in ("queued", "running")]
            assert not ended, f"a job ended before both ran: {ended}\n{processes.report()}"
            return all(j["state"] == "running" for j in jobs)

        wait_until("both jobs running", both_running, timeout=300,
                   diagnose=lambda: f"{[api1.get(f'/jobs/{j}').json() for j in (job_a, job_b)]}\n{processes.report()}")
        workers = {job: wait_until(f"job {job}'s worker in the logs", lambda j=job: taken_by(processes, j), 10)
                   for job in (job_a, job_b)}
        assert set(workers.values()) == {"worker-1", "worker-2"}, workers

        # Kill job A's worker mid-training; the survivor sees its heartbeat stop and fails the job cleanly.
        wait_until("job A past its first steps", lambda: (api1.get(f"/jobs/{job_a}").json()["progress"]
                                                         .get("step") or 0) > 0)
        processes.running[workers[job_a]].send_signal(signal.SIGKILL)
        killed = wait_until("job A failed", lambda: (j := api2.get(f"/jobs/{job_a}").json())["state"] != "running"
                            and j, timeout=STALLED_S + 30)
        assert killed["state"] == "failed"
        assert "interrupted by the loss of its worker" in killed["error"]
        assert killed["adapter_version"] is None
        assert killed["progress"]["eta_s"] is None
        assert api1.get(f"/jobs/{job_b}").json()["state"] == "running"  # the live worker's job is untouched

        # A cancel sent to API 2 reaches job B on the other worker between two steps.
        assert api2.post(f"/jobs/{job_b}/cancel").json()["state"] == "running"
        cancelled = wait_until("job B cancelled", lambda: (j := api1.get(f"/jobs/{job_b}").json())["state"]
                               != "running" and j, timeout=30)
        assert cancelled["state"] == "cancelled", cancelled
        assert api1.get(f"/collections/{cid}/adapters").json() == []  # neither job left anything behind

        # An API process that died between committing a job's row and putting it on the queue: a worker
        # notices the row left queued without a queue job and queues it again.
        lost = queued_row_without_queue_job(url, copy_of=job_b)
        wait_until("the lost job running", lambda: api2.get(f"/jobs/{lost}").json()["state"] == "running")
        assert api2.post(f"/jobs/{lost}/cancel").json()["state"] == "running"
        wait_until("the lost job cancelled", lambda: api1.get(f"/jobs/{lost}").json()["state"] == "cancelled")

        # An activation through API 1 is what API 2's very next search uses.
        uploaded = api1.post(f"/collections/{cid}/adapters", files={"file": ("a.safetensors",
                                                                            adapter_blob(tiny_backbone))})
        assert uploaded.status_code == 201, uploaded.text
        version = uploaded.json()["version"]
        assert api1.post(f"/collections/{cid}/adapters/{version}/activate").status_code == 200
        served = api2.post(f"/collections/{cid}/search", json={"query": "a red thing", "k": 3}).json()
        assert served["adapter"] == f"v{version}"
        everything = ids_found(api1, cid)
        assert ids_found(api2, cid, "active") == everything  # the new version's index, loaded by API 2

        # An ingest through API 1 and an image delete through API 2: each served by the other within the bound.
        new_id = upload(api1, cid, [("late.png", png_bytes(99))]).json()["accepted"][0]["id"]
        gone = min(everything)
        assert api2.delete(f"/collections/{cid}/images/{gone}").status_code == 204
        time.sleep(SYNC_S)
        expected = everything - {gone} | {new_id}
        for api in (api1, api2):
            assert ids_found(api, cid) == expected
            assert ids_found(api, cid, "active") == expected

        # A version deleted through API 1 is never served by API 2 again: not by name, not as an index.
        assert api1.post(f"/collections/{cid}/adapters/none/activate").status_code == 200
        assert api1.delete(f"/collections/{cid}/adapters/{version}").status_code == 204
        refused = api2.post(f"/collections/{cid}/search", json={"query": "red", "adapter": f"v{version}"})
        assert refused.status_code == 404
        assert refused.json()["code"] == "adapter_not_found"
        time.sleep(SYNC_S)

        # Counts agree everywhere.
        first, second = described(api1, cid), described(api2, cid)
        assert first == second
        assert first[0] == len(expected)
        assert first[1] == [("none", len(expected))]
        assert [state for _, state, _ in first[2]] == ["failed", "cancelled", "cancelled"]


def test_scale_out_needs_postgresql(tmp_path):
    with pytest.raises(ValueError, match="PostgreSQL"):
        Settings(data_dir=tmp_path, scale_out=True)


def test_worker_refuses_without_scale_out(tmp_path, capsys):
    assert cli.main(["worker", "--data-dir", str(tmp_path)]) == 2
    assert "PAS_SCALE_OUT=1" in capsys.readouterr().err


def test_shared_holders_exclude_an_exclusive_one_both_ways(tmp_path):
    with share_data_dir(tmp_path, "an api"), share_data_dir(tmp_path, "a worker"):
        with pytest.raises(DataDirBusy), hold_data_dir(tmp_path, "prompt-adapters ingest"):
            pass
    with hold_data_dir(tmp_path, "the server"):
        with pytest.raises(DataDirBusy, match="scaled out"), share_data_dir(tmp_path, "a worker"):
            pass
    with share_data_dir(tmp_path, "a worker"):  # all released: free again
        pass


def test_index_sync_reads_only_the_missing_vectors(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    registry = IndexRegistry(tmp_path, 8, lambda c, s: (np.arange(6), vectors[:6]), ann_threshold=100, nprobe=4)
    assert registry.sync(1, "none", np.arange(10), lambda ids: vectors[ids]) == (0, 0)  # not loaded: left to get
    registry.get(1, "none")
    asked = []

    def load(ids):
        asked.append(ids.tolist())
        return vectors[ids]

    # Another process deleted image 0 and added 6..9.
    assert registry.sync(1, "none", np.arange(1, 10), load) == (4, 1)
    assert asked == [[6, 7, 8, 9]]
    scores, ids = registry.search(1, "none", vectors[[0, 7]], 1)
    assert ids[0][0] != 0
    assert ids[1][0] == 7
    assert sorted(registry.get(1, "none").ids.tolist()) == list(range(1, 10))

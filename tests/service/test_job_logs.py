"""The job log says when a job starts, ends, is cancelled and when a version is activated; a finished job has no ETA."""

from __future__ import annotations

import logging

from tests.service.test_tuning import QUICK, SLOW, start_job, wait
from tests.support import fill


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name in ("service.jobs", "service.adapter_versions")]


def test_start_end_and_activation_are_logged(client, caplog):
    caplog.set_level(logging.INFO)
    cid = fill(client)
    job_id = start_job(client, cid, method="dual", activation="always", **QUICK)
    job = wait(client, job_id)
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"]["eta_s"] is None  # finished: nothing left to estimate
    logged = messages(caplog)
    assert any(m.startswith(f"tuning job {job_id} started for collection {cid}") for m in logged), logged
    ended = [m for m in logged if m.startswith(f"tuning job {job_id} (collection {cid}) ended: succeeded, version v1")]
    assert ended, logged
    assert "wall time" in ended[0], logged
    assert any(m.startswith(f"collection {cid}: activated adapter v1 (note: ") for m in logged), logged

    caplog.clear()
    assert client.post(f"/collections/{cid}/adapters/none/activate").status_code == 200
    assert f"collection {cid}: activated adapter none (note: none)" in messages(caplog)


def test_cancel_is_logged_and_clears_the_eta(client, caplog):
    caplog.set_level(logging.INFO)
    cid = fill(client)
    running = start_job(client, cid, method="dual", **SLOW)
    queued = start_job(client, cid, method="dual", **SLOW)
    wait(client, running, until=("running",))
    assert client.post(f"/jobs/{queued}/cancel").json()["state"] == "cancelled"
    client.post(f"/jobs/{running}/cancel")
    job = wait(client, running)
    assert job["state"] == "cancelled"
    assert job["progress"]["eta_s"] is None
    logged = messages(caplog)
    assert f"tuning job {queued} cancelled" in logged
    assert f"tuning job {running}: cancel requested; it stops at its next step" in logged
    assert any(m.startswith(f"tuning job {running} (collection {cid}) ended: cancelled, version none") for m in logged)

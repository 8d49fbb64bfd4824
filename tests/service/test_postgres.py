"""The same code on PostgreSQL: a throw-away local server when its binaries are on the machine.

The whole suite can also run on PostgreSQL: PAS_TEST_POSTGRES_URL=postgresql+psycopg://... pytest
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.service.test_tuning import QUICK, ranking, start_job, wait
from tests.support import fill, fresh_postgres_database, png_bytes, upload

INITDB = shutil.which("initdb")
PG_CTL = shutil.which("pg_ctl")


def as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; the distribution's `postgres` user does it then.
    if os.geteuid() == 0:
        return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(command)]
    return command


@pytest.fixture(scope="module")
def postgres_server():
    if not (INITDB and PG_CTL):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    # Not under pytest's tmp dir: that one is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="pas-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", 55000 + os.getpid() % 1000
    subprocess.run(as_postgres([INITDB, "-D", str(data), "-A", "trust", "-U", "postgres"]), check=True,
                   capture_output=True)
    subprocess.run(as_postgres([PG_CTL, "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                                f"'-k {root} -p {port} -c listen_addresses='", "start"]), check=True,
                   capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run(as_postgres([PG_CTL, "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_collection_lifecycle_on_postgres(make_client, postgres_server, tmp_path):
    with fresh_postgres_database(postgres_server) as url:
        client = make_client(database_url=url)
        assert client.get("/healthz").status_code == 200
        cid = fill(client)
        duplicate = upload(client, cid, [("again.png", png_bytes(0))]).json()["accepted"][0]
        assert duplicate["duplicate"]
        assert client.post("/collections", json={"name": "c"}).status_code == 409

        job = wait(client, start_job(client, cid, activation="if_not_worse", **QUICK))  # serve v1 either way
        assert job["state"] == "succeeded", job["error"]
        tuned = ranking(client, cid)
        assert tuned[0] == "v1"
        make_client.stop(client)

        client = make_client(database_url=url)
        assert ranking(client, cid) == tuned
        assert client.delete(f"/collections/{cid}").status_code == 204
        assert client.get("/collections").json() == []
        make_client.stop(client)
        time.sleep(0.1)  # let pooled connections close before the database is dropped

"""The same code on PostgreSQL: a throw-away local server when its binaries are on the machine.

The whole suite can also run on PostgreSQL: PAS_TEST_POSTGRES_URL=postgresql+psycopg://... pytest
"""

import dataclasses
import threading
import time

import pytest

from service.context import BackboneMismatch, check_backbone_identity
from service.db import make_engine, make_session_factory, migrate
from tests.service.test_tuning import QUICK, ranking, start_job, wait
from tests.support import fill, fresh_postgres_database, png_bytes, throwaway_postgres_server, upload


@pytest.fixture(scope="module")
def postgres_server():
    with throwaway_postgres_server() as url:
        yield url


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


@pytest.mark.slow
def test_replicas_starting_at_once_record_the_backbone_once(postgres_server, tiny_backbone):
    """Every replica checks the backbone on start; the ones that lose the race to record it compare instead."""
    with fresh_postgres_database(postgres_server) as url:
        engine = make_engine(url)
        migrate(engine)
        sessions = make_session_factory(engine)
        starts = threading.Barrier(6)
        failures: list[BaseException] = []

        def start_replica() -> None:
            with sessions() as session:
                starts.wait()
                try:
                    check_backbone_identity(session, tiny_backbone.identity)
                except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                    failures.append(exc)

        threads = [threading.Thread(target=start_replica) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        other = dataclasses.replace(tiny_backbone.identity, embed_dim=tiny_backbone.identity.embed_dim + 1)
        with sessions() as session, pytest.raises(BackboneMismatch, match="embed_dim"):
            check_backbone_identity(session, other)
        engine.dispose()

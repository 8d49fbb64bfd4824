"""Shared fixtures: the real app over HTTP on a real SQLite file, real FAISS, real open_clip modules."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the one place: nothing in the suite (or its subprocesses) may reach a hub

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.backbone import Backbone, load_backbone
from service.app import create_app
from service.config import Settings
from tests.support import TEST_BACKBONE


@pytest.fixture(scope="session")
def tiny_backbone() -> Backbone:
    """The one model fixture: loaded once for the whole run; the app uses it exactly as one it loaded itself."""
    return load_backbone(TEST_BACKBONE, device="cpu")


@pytest.fixture(scope="session")
def tiny(tiny_backbone: Backbone) -> Backbone:
    """The adapters tests' name for the same backbone."""
    return tiny_backbone


@pytest.fixture
def database_url() -> Iterator[str | None]:
    """SQLite in the data dir by default; PAS_TEST_POSTGRES_URL runs the suite on a fresh PostgreSQL database."""
    server = os.environ.get("PAS_TEST_POSTGRES_URL")
    if not server:
        yield None
        return
    from tests.support import fresh_postgres_database

    with fresh_postgres_database(server) as url:
        yield url


class Apps:
    """Starts apps (lifespan and all) on data directories, and stops them as a clean shutdown would.

    ``apps()`` starts one on this test's data dir; ``apps.stop(client)`` shuts it down (indexes
    saved, worker stopped); ``apps.restart(client)`` is stop + start on the same directory. Whatever
    is still running when the test ends is stopped then.
    """

    def __init__(self, data_dir: Path, backbone: Backbone, database_url: str | None, stack: ExitStack):
        self.data_dir, self.backbone, self.database_url, self.stack = data_dir, backbone, database_url, stack
        self._running: dict[int, tuple[ExitStack, dict[str, Any]]] = {}

    def __call__(self, data_dir: Path | None = None, backbone: Backbone | None = None, **overrides: Any) -> TestClient:
        if self.database_url is not None:
            overrides.setdefault("database_url", self.database_url)
        settings = Settings(data_dir=data_dir or self.data_dir, **overrides)
        own = ExitStack()
        client = own.enter_context(TestClient(create_app(settings, backbone or self.backbone),
                                                  base_url="http://localhost"))
        self.stack.callback(own.close)
        self._running[id(client)] = (own, {"data_dir": data_dir, "backbone": backbone, **overrides})
        return client

    def stop(self, client: TestClient) -> None:
        own, _ = self._running.pop(id(client))
        own.close()

    def restart(self, client: TestClient, **overrides: Any) -> TestClient:
        _, started_with = self._running[id(client)]
        self.stop(client)
        return self(**{**started_with, **overrides})


@pytest.fixture
def make_client(tmp_path: Path, tiny_backbone: Backbone, database_url: str | None) -> Iterator[Apps]:
    with ExitStack() as stack:
        yield Apps(tmp_path / "data", tiny_backbone, database_url, stack)


@pytest.fixture(scope="session")
def start_app(tiny_backbone: Backbone):
    """``with start_app(data_dir) as client:``: an app on a data dir with its own SQLite file, stopped on leaving."""

    def start(data_dir: Path, **overrides: Any) -> AbstractContextManager[TestClient]:
        settings = Settings(data_dir=data_dir, backbone_model=TEST_BACKBONE, **overrides)
        return TestClient(create_app(settings, tiny_backbone), base_url="http://localhost")

    return start


@pytest.fixture
def client(make_client: Apps) -> TestClient:
    return make_client()


@pytest.fixture
def collection(client: TestClient) -> dict:
    response = client.post("/collections", json={"name": "holiday", "description": "photos"})
    assert response.status_code == 201, response.text
    return response.json()

"""Shared fixtures: the real app over HTTP on a real SQLite file, real FAISS, real open_clip modules."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the suite may reach a model hub

import pytest
from fastapi.testclient import TestClient

from adapters.backbone import load_backbone
from service.app import create_app
from service.config import Settings


@pytest.fixture(scope="session")
def tiny_backbone():
    """Loaded once for the whole run; the app uses it exactly as it would one it loaded itself."""
    return load_backbone("tiny-vit-test")


@pytest.fixture
def database_url():
    """SQLite in the data dir by default; PAS_TEST_POSTGRES_URL runs the suite on a fresh PostgreSQL database."""
    server = os.environ.get("PAS_TEST_POSTGRES_URL")
    if not server:
        yield None
        return
    from tests.support import fresh_postgres_database

    with fresh_postgres_database(server) as url:
        yield url


@pytest.fixture
def make_client(tmp_path, tiny_backbone, database_url):
    """Start an app on a data directory (default: this test's tmp dir); settings can be overridden."""
    opened: list[TestClient] = []

    def start(data_dir=None, backbone=None, **overrides) -> TestClient:
        if database_url is not None:
            overrides.setdefault("database_url", database_url)
        settings = Settings(data_dir=data_dir or tmp_path / "data", **overrides)
        client = TestClient(create_app(settings, backbone or tiny_backbone), base_url="http://localhost")
        client.__enter__()
        opened.append(client)
        return client

    yield start
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def collection(client):
    response = client.post("/collections", json={"name": "holiday", "description": "photos"})
    assert response.status_code == 201, response.text
    return response.json()

"""Shared fixtures: the real app over HTTP on a real SQLite file, real FAISS, real open_clip modules."""

from __future__ import annotations

import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"  # the one place: nothing in the suite (or its subprocesses) may reach a hub

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import pytest
import torch
from _pytest.mark.expression import Expression
from fastapi.testclient import TestClient

from adapters.backbone import Backbone, load_backbone
from service.app import create_app
from service.config import Settings
from service.db import make_engine, migrate
from tests.support import TEST_BACKBONE, TEST_DEVICE, fresh_postgres_database, seed_database

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # `-n N` (pytest-xdist): the workers share the cores
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

MEMORY_FS = Path("/dev/shm")
MEMORY_BASETEMP = pytest.StashKey[str]()
WHOLLY_SLOW = re.compile(r"^pytestmark = \[?pytest\.mark\.slow\b", re.MULTILINE)  # a module marked slow as a whole


def deselects_slow(config: pytest.Config) -> bool:
    """Whether ``-m`` leaves out every test marked slow, whatever its other marks (the fast loop: ``-m "not slow"``)."""
    if not config.option.markexpr:
        return False
    expression = Expression.compile(config.option.markexpr)
    # A slow test may carry other marks too: it is left out if the expression is false both when they
    # match nothing and when they match everything.
    slow_alone = expression.evaluate(lambda name, **_: name == "slow")
    slow_and_every_other = expression.evaluate(lambda name, **_: True)
    return not (slow_alone or slow_and_every_other)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast loop does not even import a module marked slow as a whole: ``-m`` would deselect all of
    its tests after paying its imports and its collection (the OpenAPI fuzz sweep builds its cases then)."""
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") and deselects_slow(config) \
            and WHOLLY_SLOW.search(collection_path.read_text()):
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    if not deselects_slow(config):
        # The OpenAPI fuzz sweep (slow) is schemathesis's one user; pyproject keeps its plugin (and with it
        # hypothesis) from loading by itself, which would cost the fast loop seconds of imports.
        config.pluginmanager.import_plugin("schemathesis.pytest.plugin")
    use_memory_basetemp(config)


def use_memory_basetemp(config: pytest.Config) -> None:
    """Temp dirs (data dirs, SQLite files, indexes) on a memory filesystem where the machine has one.

    The service fsyncs every file and commit it writes; on this project's disks that is several
    milliseconds each, thousands of times per run. The same calls on tmpfs cost next to nothing and
    mean the same for what the tests check (a killed process, never a lost power supply).
    ``--basetemp`` still puts them anywhere else.
    """
    if config.option.basetemp is None and MEMORY_FS.is_dir() and os.access(MEMORY_FS, os.W_OK) \
            and not hasattr(config, "workerinput"):  # pytest-xdist workers get theirs below the controller's
        config.option.basetemp = config.stash[MEMORY_BASETEMP] = tempfile.mkdtemp(prefix="pas-tests-", dir=MEMORY_FS)


def pytest_unconfigure(config: pytest.Config) -> None:
    basetemp = config.stash.get(MEMORY_BASETEMP, None)
    if basetemp is not None:  # kept in memory only for the run: nothing to inspect survives it
        shutil.rmtree(basetemp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_backbone() -> Backbone:
    """The one model fixture: loaded once for the whole run; the app uses it exactly as one it loaded itself."""
    return load_backbone(TEST_BACKBONE, device=TEST_DEVICE)


@pytest.fixture(scope="session")
def tiny(tiny_backbone: Backbone) -> Backbone:
    """The adapters tests' name for the same backbone."""
    return tiny_backbone


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the newest schema, made once per run by the real migrations (Alembic).

    Migrating a fresh file costs a few hundred milliseconds, paid at every app start on a new data dir;
    ``seed_database`` copies this file instead. It holds no rows (no backbone identity either), so a
    copy is exactly what a first start would have made, for any backbone.
    """
    path = tmp_path_factory.mktemp("schema") / "service.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()  # the last connection closes: the write-ahead log is folded into the file
    return path


@pytest.fixture
def database_url() -> Iterator[str | None]:
    """SQLite in the data dir by default; PAS_TEST_POSTGRES_URL runs the suite on a fresh PostgreSQL database."""
    server = os.environ.get("PAS_TEST_POSTGRES_URL")
    if not server:
        yield None
        return
    with fresh_postgres_database(server) as url:
        yield url


class Apps:
    """Starts apps (lifespan and all) on data directories, and stops them as a clean shutdown would.

    ``apps()`` starts one on this test's data dir; ``apps.stop(client)`` shuts it down (indexes
    saved, worker stopped); ``apps.restart(client)`` is stop + start on the same directory. Whatever
    is still running when the test ends is stopped then.
    """

    def __init__(self, data_dir: Path, backbone: Backbone, database_url: str | None, stack: ExitStack,
                 migrated_database: Path | None = None):
        self.data_dir, self.backbone, self.database_url, self.stack = data_dir, backbone, database_url, stack
        self.migrated_database = migrated_database
        self._running: dict[int, tuple[ExitStack, dict[str, Any]]] = {}

    def __call__(self, data_dir: Path | None = None, backbone: Backbone | None = None, **overrides: Any) -> TestClient:
        if self.database_url is not None:
            overrides.setdefault("database_url", self.database_url)
        settings = Settings(data_dir=data_dir or self.data_dir, **overrides)
        if self.migrated_database is not None:
            seed_database(settings, self.migrated_database)
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
def make_client(tmp_path: Path, tiny_backbone: Backbone, database_url: str | None,
                migrated_database: Path) -> Iterator[Apps]:
    with ExitStack() as stack:
        yield Apps(tmp_path / "data", tiny_backbone, database_url, stack, migrated_database)


@pytest.fixture(scope="session")
def start_app(tiny_backbone: Backbone, migrated_database: Path):
    """``with start_app(data_dir) as client:``: an app on a data dir with its own SQLite file, stopped on leaving."""

    def start(data_dir: Path, **overrides: Any) -> AbstractContextManager[TestClient]:
        settings = Settings(data_dir=data_dir, backbone_model=TEST_BACKBONE, **overrides)
        seed_database(settings, migrated_database)
        return TestClient(create_app(settings, tiny_backbone), base_url="http://localhost")

    return start


@pytest.fixture
def client(make_client: Apps) -> TestClient:
    return make_client()


@pytest.fixture(scope="module")
def module_client(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Backbone,
                  migrated_database: Path) -> Iterator[TestClient]:
    """One app for a whole test module, on a data dir of its own: for tests that only read, or are refused.

    An app per test costs its start and its uploads again; tests that share this one must leave nothing
    that another test of the module could see (a test that changes state takes ``client``).
    """
    server = os.environ.get("PAS_TEST_POSTGRES_URL")
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_postgres_database(server)) if server else None
        apps = Apps(tmp_path_factory.mktemp("module") / "data", tiny_backbone, database_url, stack, migrated_database)
        yield apps()


@pytest.fixture
def collection(client: TestClient) -> dict:
    response = client.post("/collections", json={"name": "holiday", "description": "photos"})
    assert response.status_code == 201, response.text
    return response.json()

"""Fixtures of the browser tests: a live server on loopback and headless Chromium."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from service.app import create_app
from service.config import Settings
from tests.support import seed_database

CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def serve(tmp_path, tiny_backbone, migrated_database):
    """serve(wrap=None, backbone=None, **settings) -> base URL: the real app (optionally wrapped; tiny backbone
    unless another is given; settings beyond the data directory, e.g. import_root) served by uvicorn in a thread."""
    servers = []

    def start(wrap=None, backbone=None, **extra) -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        settings = Settings(data_dir=tmp_path / "data", **extra)
        seed_database(settings, migrated_database)
        app = create_app(settings, backbone or tiny_backbone)
        server = uvicorn.Server(uvicorn.Config(wrap(app) if wrap else app, host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "the live server did not start"
            assert time.monotonic() < deadline, "the live server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def browser(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None or not CHROMEDRIVER.exists():
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.download_dir = tmp_path / "downloads"  # where the page's downloads land
    driver.download_dir.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(driver.download_dir)})
    yield driver
    driver.quit()

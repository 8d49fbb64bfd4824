"""The web page driven by headless Chromium against a live server: the whole mission through the page.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); skipped where they are missing.
Screenshots of the main screens are written to docs/ui/.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from service.app import create_app
from service.config import Settings

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "ui"
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 210), "yellow": (230, 200, 40)}
PER_COLOUR = 7
SHAPES = ["square", "circle", "stripe"]

pytestmark = pytest.mark.skipif(CHROMIUM is None or not Path(CHROMEDRIVER).exists(),
                                reason="chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")


def photo(colour: tuple[int, int, int], seed: int) -> Image.Image:
    """A small textured image of one colour with a lighter shape: distinct per seed, recognisable as a thumbnail."""
    rng = np.random.default_rng(seed)
    base = np.clip(np.array(colour) + rng.normal(0, 18, size=(64, 64, 3)), 0, 255)
    y, x = np.mgrid[:64, :64]
    cy, cx, r = rng.integers(18, 46, size=2).tolist() + [int(rng.integers(8, 16))]
    shape = SHAPES[seed % 3]
    mask = ((x - cx) ** 2 + (y - cy) ** 2 < r * r) if shape == "circle" else \
        (abs(x - cx) < r) & (abs(y - cy) < r) if shape == "square" else (abs(y - cy) < r // 2)
    base[mask] = np.clip(base[mask] * 0.4 + 150, 0, 255)
    return Image.fromarray(base.astype(np.uint8))


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """photos/<colour>/<n>.png with a <n>.txt caption beside each, and one file that is not an image."""
    root = tmp_path / "photos"
    seed = 0
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(PER_COLOUR):
            photo(rgb, seed).save(root / name / f"{name}{i}.png")
            (root / name / f"{name}{i}.txt").write_text(f"a {name} {SHAPES[seed % 3]} photo number {seed}\n")
            seed += 1
    (root / "red" / "broken.png").write_bytes(b"this is not an image")
    return root


@pytest.fixture
def live_server(tmp_path, tiny_backbone):
    """The real app served by uvicorn on a free loopback port, in a thread of this process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(Settings(data_dir=tmp_path / "data"), tiny_backbone)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the live server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


class Page:
    """What a user does and sees, in a few words per step."""

    def __init__(self, driver, base: str):
        from functools import partial

        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        # The page re-renders parts of itself: an element read while it is being replaced is simply read again.
        self.Wait = partial(WebDriverWait, ignored_exceptions=[StaleElementReferenceException])
        self.driver, self.base, self.By = driver, base, By

    def open(self, path: str = "/"):
        self.driver.get(self.base + path)

    def find(self, css: str, timeout: float = 20):
        return self.Wait(self.driver, timeout).until(lambda d: d.find_element(self.By.CSS_SELECTOR, css))

    def all(self, css: str):
        return self.driver.find_elements(self.By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def wait_text(self, css: str, needle: str, timeout: float = 20) -> str:
        def present(_):
            found = self.driver.find_elements(self.By.CSS_SELECTOR, css)
            return found and needle in found[0].text and found[0].text
        return self.Wait(self.driver, timeout).until(present, f"{needle!r} never appeared in {css}")

    def wait_for(self, condition, timeout: float = 20, message: str = ""):
        return self.Wait(self.driver, timeout, poll_frequency=0.2).until(lambda d: condition(), message)

    def click(self, css: str):
        self.find(css).click()

    def button(self, label: str, within: str = "main"):
        xpath = f".//button[normalize-space()={label!r}]"
        return self.Wait(self.driver, 20).until(lambda d: d.find_element(self.By.CSS_SELECTOR, within)
                                                .find_element(self.By.XPATH, xpath))

    def fill(self, css: str, value: str):
        field = self.find(css)
        field.clear()
        field.send_keys(value)

    def shot(self, name: str):
        SHOTS.mkdir(parents=True, exist_ok=True)
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        width = self.driver.execute_script("return window.innerWidth")
        self.driver.set_window_size(width if width > 500 else 390, min(max(height, 600), 2400))
        self.driver.save_screenshot(str(SHOTS / f"{name}.png"))

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]


def test_whole_mission_through_the_page(live_server, browser, photo_folder):
    page = Page(browser, live_server)
    images = len(COLOURS) * PER_COLOUR

    # Collections: empty at first; create one, create and delete a second one (with confirmation).
    page.open("/")
    page.wait_text("#main", "No collections yet")
    page.fill("#new-name", "scratch")
    page.button("Create collection").click()
    page.wait_text("#crumbs", "scratch")
    page.click("#crumbs a")
    page.fill("#new-name", "Holiday photos")
    page.fill("#new-description", "Four colours, folders as categories")
    page.button("Create collection").click()
    page.wait_text("#crumbs", "Holiday photos")
    page.click("#crumbs a")
    page.find("#collections")
    page.find("[aria-label='Delete collection scratch']").click()
    page.wait_text("#confirm-text", "scratch")
    page.button("Cancel", within="#confirm").click()
    assert len(page.all("#collections tbody tr")) == 2
    page.find("[aria-label='Delete collection scratch']").click()
    page.button("Delete", within="#confirm").click()
    page.wait_for(lambda: len(page.all("#collections tbody tr")) == 1, message="scratch was not deleted")

    # Upload a folder: sub-folder names become categories, .txt files captions; the broken file is listed as rejected.
    page.find("#collections a").click()
    page.find("#pick-folder").send_keys(str(photo_folder))
    summary = page.wait_text("#upload-summary", "rejected.", timeout=90)
    assert summary == f"{images} added, 0 already in the collection, 1 rejected.", summary
    assert "broken.png" in page.text("#rejected")
    assert page.find("#rejected-box").get_attribute("open") is not None
    assert len(page.all("#uploads li[data-state=added]")) == images
    assert page.text("#page-info") == f"Page 1 of 2 · {images} images"
    page.wait_for(lambda: all(img.get_attribute("src") for img in page.all("#grid img")), message="thumbnails")
    assert len(page.all("#grid .tile")) == 24
    assert {b.text for b in page.all("#grid .badge")} <= set(COLOURS) and len(page.all("#grid .badge")) == 24
    page.shot("images")
    page.button("Next").click()
    page.wait_text("#page-info", "Page 2 of 2")
    assert len(page.all("#grid .tile")) == images - 24

    # Tuning: a tiny job from the advanced settings, watched live until it finishes.
    page.click("#tab-tuning")
    page.find("#advanced summary").click()
    for field, value in {"epochs": "2", "batch_size": "8", "text_tokens": "2", "visual_tokens": "2"}.items():
        page.fill(f"#cfg-{field}", value)
    page.find("#cfg-activation option[value=always]").click()
    page.click("#start-custom")
    page.find("#job-board")
    page.wait_for(lambda: page.find("#job-board").get_attribute("data-state") in ("succeeded", "failed", "cancelled"),
                  timeout=120, message="the tuning job did not finish")
    assert page.find("#job-board").get_attribute("data-state") == "succeeded", page.text("#job-board")
    page.find("#job-test")
    assert page.text("[data-field=state]") == "succeeded"
    assert page.text("[data-field=split]") != "– / – / –"
    r1_cells = page.all("#job-test [data-metric=t2i_r1]")
    assert len(r1_cells) == 2 and all("%" in c.text for c in r1_cells)
    assert len(page.all("#job-charts svg path")) >= 3  # loss, R@1, R@5 (and the zero-shot line)
    assert "v1: active" in page.text("#job-outcome")
    page.shot("tuning")

    # Adapters: v1 is active; details with test metrics; roll back to zero-shot, activate again.
    page.click("#tab-adapters")
    page.wait_text("#serving-state", "adapter v1")
    row = page.find("#adapters tr[data-version='1']")
    assert row.get_attribute("data-active") == "true"
    assert "%" in page.text("#adapters [data-field=r1]") and "%" in page.text("#adapters [data-field=r1-zero-shot]")
    page.button("Details").click()
    page.find("#adapter-test")
    assert len(page.all("#adapter-detail svg")) == 2
    page.shot("adapters")
    page.button("Roll back to zero-shot").click()
    page.wait_text("#serving-state", "zero-shot")
    assert page.find("#adapters tr[data-version='1']").get_attribute("data-active") == "false"
    page.button("Activate").click()
    page.wait_text("#serving-state", "adapter v1")

    # Search: zero-shot and the active adapter side by side, ten scored results each.
    page.click("#tab-search")
    page.fill("#query", "a red circle photo")
    page.button("Search").click()
    page.find("#results-adapter")
    for column in ("#results-zero-shot", "#results-adapter"):
        hits = page.all(f"{column} .hit")
        assert len(hits) == 10
        scores = [float(s.text) for s in page.all(f"{column} .score")]
        assert scores == sorted(scores, reverse=True)
    assert "(zero-shot, 10 results)" in page.text("#results-zero-shot h3")
    assert "(v1, 10 results)" in page.text("#results-adapter h3")
    page.wait_for(lambda: all(img.get_attribute("src") for img in page.all("#results img")), message="result images")
    page.shot("search")

    # Back on the list: the count and the adapter state are shown.
    page.click("#crumbs a")
    page.wait_text("#collections [data-field=adapter]", "v1 active")
    assert page.text("#collections [data-field=images]") == str(images)
    page.shot("collections")

    # Phone width: nothing wider than the screen.
    browser.set_window_size(390, 844)
    page.find("#collections a").click()
    page.click("#tab-search")
    page.fill("#query", "a blue square photo")
    page.button("Search").click()
    page.find("#results-adapter .hit")
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    page.shot("search-phone")
    browser.set_window_size(1280, 900)

    assert page.console_errors() == []

    # The API docs work without internet: Swagger UI and ReDoc render from local assets.
    page.open("/docs")
    page.wait_text(".swagger-ui .info", "Prompt-adapter retrieval service")
    page.open("/redoc")
    page.wait_text("h1", "Prompt-adapter retrieval service")
    assert page.console_errors() == []

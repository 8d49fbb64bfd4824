"""Helpers for the browser tests: generated photos and a thin layer over Selenium in the user's words."""

from __future__ import annotations

import io
import os
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

SCREENSHOTS = bool(os.environ.get("PAS_UI_SCREENSHOTS"))


def screenshot_dir(tmp_path: Path) -> Path:
    """docs/ui when PAS_UI_SCREENSHOTS=1 (to refresh the README's pictures), else the test's tmp dir."""
    return Path(__file__).resolve().parents[2] / "docs" / "ui" if SCREENSHOTS else tmp_path
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 210), "yellow": (230, 200, 40)}
SHAPES = ["square", "circle", "stripe"]


def photo(colour: tuple[int, int, int], seed: int) -> Image.Image:
    """A small textured image of one colour with a lighter shape: distinct per seed, recognisable as a thumbnail."""
    rng = np.random.default_rng(seed)
    base = np.clip(np.array(colour) + rng.normal(0, 7, size=(64, 64, 3)), 0, 255)
    y, x = np.mgrid[:64, :64]
    cy, cx = rng.integers(18, 46, size=2).tolist()
    r = int(rng.integers(8, 16))
    shape = SHAPES[seed % 3]
    mask = ((x - cx) ** 2 + (y - cy) ** 2 < r * r) if shape == "circle" else \
        (abs(x - cx) < r) & (abs(y - cy) < r) if shape == "square" else (abs(y - cy) < r // 2)
    base[mask] = np.clip(base[mask] * 0.4 + 150, 0, 255)
    return Image.fromarray(base.astype(np.uint8))


def write_photos(folder: Path, per_colour: int, subfolders: bool) -> list[Path]:
    """<colour>/<colour><i>.png (or flat) with a same-named .txt caption beside each; returns every file written."""
    written, seed = [], 0
    for name, rgb in COLOURS.items():
        target = folder / name if subfolders else folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_colour):
            photo(rgb, seed).save(target / f"{name}{i}.png")
            (target / f"{name}{i}.txt").write_text(f"a {name} {SHAPES[seed % 3]} photo number {seed}\n")
            written += [target / f"{name}{i}.png", target / f"{name}{i}.txt"]
            seed += 1
    return written


def write_scenes(folder: Path, n: int) -> None:
    """Scenes of the benchmark's miniature world in <category>/ folders, captions beside them: for screenshots
    taken on the shipped miniworld backbone, whose rankings mean something on these scenes."""
    from bench.world import generate

    for i, item in enumerate(generate("broad", n, seed=3)):
        (folder / item.category).mkdir(parents=True, exist_ok=True)
        item.image.save(folder / item.category / f"scene{i}.png")
        (folder / item.category / f"scene{i}.txt").write_text("\n".join(item.captions) + "\n")


class Page:
    """What a user does and sees, in a few words per step."""

    def __init__(self, driver, base: str, shots: Path | None = None):
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        # The page re-renders parts of itself: an element read while it is being replaced is simply read again.
        self.Wait = partial(WebDriverWait, ignored_exceptions=[StaleElementReferenceException])
        self.driver, self.base, self.By, self.shots = driver, base, By, shots

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

    def set_date(self, css: str, iso_day: str):
        """A date field's value (typing into one depends on the browser's locale)."""
        field = self.find(css)
        self.driver.execute_script("arguments[0].value = arguments[1]", field, iso_day)

    def images_loaded(self, css: str):
        self.wait_for(lambda: all(img.get_attribute("src") for img in self.all(f"{css} img")), message=f"images in {css}")

    def shot(self, name: str):
        """The whole page as <shots>/<name>.png, reduced to 256 colours to stay small in the repository."""
        self.driver.execute_script("const t = document.getElementById('toast'); t.style.transition = 'none';"
                                   "t.className = ''; t.offsetHeight; t.style.transition = ''")
        width = self.driver.execute_script("return window.innerWidth")
        self.driver.set_window_size(width, 600)  # measure the page's own height, not the last window's
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(width, min(max(height, 600), 2400))
        png = Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB")
        self.shots.mkdir(parents=True, exist_ok=True)
        png.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(self.shots / f"{name}.png", optimize=True)

    def unlabelled_controls(self) -> list[str]:
        """Form controls a screen reader could not name (no <label>, no aria-label)."""
        return self.driver.execute_script(
            "return [...document.querySelectorAll('input, select, textarea, progress')]"
            ".filter(e => !e.classList.contains('visually-hidden') && !e.labels?.length && !e.getAttribute('aria-label'))"
            ".map(e => e.id || e.outerHTML)")

    def console_errors(self, allowed: str | None = None) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser")
                if e["level"] == "SEVERE" and not (allowed and allowed in e["message"])]

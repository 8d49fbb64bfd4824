"""The page's Import tab in headless Chromium against a live server with an import root: a refused path's reason,
an import followed live and cancelled after its first batch, a second one to the end with its failed file listed.
"""

from __future__ import annotations

import pytest

from tests.service.test_import_jobs import Pause
from tests.web.page import Page, screenshot_dir, write_photos
from tests.web.test_browser import get_json


@pytest.mark.slow  # about 15 s: Chromium and two small imports
def test_import_from_the_server_through_the_page(serve, browser, tmp_path, monkeypatch):
    root = tmp_path / "import-root"
    write_photos(root / "trip", per_colour=2, subfolders=True)  # 8 images in 4 colour folders, a caption each
    (root / "trip" / "red" / "broken.png").write_bytes(b"this is not an image")
    base = serve(import_root=root, import_batch_size=2)
    page = Page(browser, base, screenshot_dir(tmp_path / "shots"))
    page.open("/")
    page.fill("#new-name", "Trip")
    page.button("Create collection").click()
    page.wait_text("#crumbs", "Trip")
    assert "null" not in page.text("#main")  # no description: nothing shown
    page.click("#tab-import")
    page.wait_text("#import-history", "No imports yet.")
    assert page.unlabelled_controls() == []

    # A path outside the import root: the server's reason, and nothing queued.
    page.fill("#import-path", "../elsewhere")
    page.click("#start-import")
    assert "403 outside_import_root" in page.wait_text("#import-error [role=alert]", "outside the allowed import root")
    assert page.text("#import-history") == "No imports yet."

    # Followed live: the worker holds after its first batch; the page shows it, and the cancel stops the job there.
    pause = Pause(monkeypatch)
    page.fill("#import-path", "trip")
    page.click("#start-import")
    assert pause.reached.wait(60)
    board = "#import-board[data-job='1']"
    page.wait_text(f"{board} [data-field=files]", "2 of 9")
    assert page.find(board).get_attribute("data-state") == "running"
    assert page.find("#import-error").text == ""
    page.click("#cancel-import")
    page.wait_text("#toast", "Asked import 1 to stop")
    pause.release.set()
    page.wait_for(lambda: page.find(board).get_attribute("data-state") == "cancelled", message="the import was not cancelled")
    assert not page.find("#cancel-import").is_displayed()
    assert page.text("[data-field=added]") == "2"
    page.wait_text("#import-jobs tbody", "cancelled")

    # Again to the end: the two stored files are duplicates, the broken one is listed with its reason.
    page.click("#start-import")
    board = "#import-board[data-job='2']"
    page.wait_for(lambda: page.find(board).get_attribute("data-state") == "succeeded", message="the import did not finish")
    assert [page.text(f"[data-field={f}]") for f in ("files", "added", "duplicates", "failed", "eta")] == [
        "9 of 9", "6", "2", "1", "–"]
    assert page.find("#import-progress").get_attribute("value") == "1"
    assert "broken.png: not a decodable image" in page.text("#import-failures")
    assert [r.get_attribute("data-job") for r in page.all("#import-jobs tbody tr")] == ["2", "1"]
    collection = get_json(base, "/collections")[0]
    assert collection["image_count"] == 8
    assert page.console_errors(allowed="/images/import - Failed to load resource: the server responded with a status of 403") == []
    browser.execute_script("window.scrollTo(0, 0)")
    page.shot("import")

"""With API keys required, the page asks for one, keeps it for the tab and sends it on every request.

The key is a real one, made by `prompt-adapters keys create` on the server's data directory; the server
then refuses every API request without it. Thumbnails, uploads and the tuning job's event stream must
all carry it for this flow to get through.
"""

from __future__ import annotations

import pytest

from service.cli import main
from tests.web.page import Page, write_photos


def create_key(capsys, data_dir) -> str:
    assert main(["keys", "create", "--data-dir", str(data_dir), "--name", "page", "--scope", "admin"]) == 0
    return capsys.readouterr().out.strip()


def sign_in_after_a_wrong_key(page: Page, key: str) -> None:
    """A wrong key is refused and the form stays; the right one opens the page."""
    page.fill("#api-key", "wrong")
    page.button("Sign in").click()
    page.wait_text("#toast", "refused")
    page.fill("#api-key", key)
    page.button("Sign in").click()
    page.wait_text("#main", "No collections yet")


def test_the_page_signs_in_and_out(serve, browser, tmp_path, capsys):
    """The fast loop's browser check: the page's modules load and talk to the API (the whole flow is below)."""
    key = create_key(capsys, tmp_path / "data")
    page = Page(browser, serve())
    page.open("/")
    sign_in_after_a_wrong_key(page, key)
    page.button("Sign out", within="#account").click()
    page.find("#api-key")
    assert browser.execute_script("return sessionStorage.getItem('pas-api-key')") is None
    assert page.console_errors(allowed="status of 401") == []


@pytest.mark.slow  # Chromium plus a tuning job followed over the keyed event stream
def test_sign_in_with_a_key_and_be_refused_without(serve, browser, tmp_path, capsys):
    key = create_key(capsys, tmp_path / "data")  # the data directory `serve` starts the app on
    page = Page(browser, serve())
    files = write_photos(tmp_path / "flat", per_colour=4, subfolders=False)

    page.open("/")
    page.find("#api-key")  # refused without a key: the sign-in form
    sign_in_after_a_wrong_key(page, key)
    assert browser.execute_script("return sessionStorage.getItem('pas-api-key')") == key
    assert browser.execute_script("return localStorage.length") == 0

    page.fill("#new-name", "keyed")
    page.button("Create collection").click()
    page.find("#pick-files").send_keys("\n".join(str(f) for f in files))
    assert page.wait_text("#upload-summary", "rejected.", timeout=60) == "16 added, 0 already in the collection, 0 rejected."
    page.images_loaded("#grid")  # thumbnails are fetched with the key

    page.click("#tab-tuning")
    page.find("#advanced summary").click()
    for field, value in {"epochs": "1", "batch_size": "8", "text_tokens": "2", "visual_tokens": "2"}.items():
        page.fill(f"#cfg-{field}", value)
    page.click("#start-custom")
    page.wait_for(lambda: page.find("#job-board").get_attribute("data-state") == "succeeded", timeout=120,
                  message="the job's progress never arrived over the keyed event stream")
    page.find("#job-test")

    page.button("Sign out", within="#account").click()
    page.find("#api-key")  # the key is gone: refused again
    assert browser.execute_script("return sessionStorage.getItem('pas-api-key')") is None
    assert page.console_errors(allowed="status of 401") == []

"""With API keys required, the page asks for one, keeps it for the tab and sends it on every request.

The key check here is a stand-in written for this test (the API-key feature is built in parallel): an ASGI
wrapper that answers 401 to any API request without `Authorization: Bearer <key>`, as that feature will.
It proves the page's side: thumbnails, uploads and the tuning job's event stream all carry the key.
"""

from __future__ import annotations

import json

from tests.web.page import Page, write_photos

KEY = "s3cret-key"
PUBLIC = ("/ui/", "/docs", "/redoc", "/openapi.json")


def require_key(app):
    async def guarded(scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and path != "/" and not path.startswith(PUBLIC):
            if dict(scope["headers"]).get(b"authorization") != f"Bearer {KEY}".encode():
                body = json.dumps({"detail": "missing or unknown API key", "code": "unauthorized"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)
    return guarded


def test_sign_in_with_a_key_and_be_refused_without(serve, browser, tmp_path):
    page = Page(browser, serve(require_key))
    files = write_photos(tmp_path / "flat", per_colour=4, subfolders=False)

    page.open("/")
    page.find("#api-key")  # refused without a key: the sign-in form
    page.fill("#api-key", "wrong")
    page.button("Sign in").click()
    page.wait_text("#toast", "refused")
    page.fill("#api-key", KEY)
    page.button("Sign in").click()
    page.wait_text("#main", "No collections yet")
    assert browser.execute_script("return sessionStorage.getItem('pas-api-key')") == KEY
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

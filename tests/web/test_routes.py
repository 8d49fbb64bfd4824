"""The page and the API docs are served from the package, with nothing fetched from another host."""

from __future__ import annotations

import re

from service.api.web import DOCS_DIR, PAGE_DIR


def test_page_and_its_modules_are_served(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="/ui/app.js"' in page.text
    modules = sorted(p.relative_to(PAGE_DIR).as_posix() for p in PAGE_DIR.rglob("*.js"))
    assert "app.js" in modules
    assert "views/search.js" in modules
    for name in modules + ["app.css"]:
        response = client.get(f"/ui/{name}")
        assert response.status_code == 200, name
        # No other host is named (the SVG namespace is an identifier, never fetched).
        assert not re.search(r"https?://", response.text.replace("http://www.w3.org/2000/svg", "")), name
        # Every relative import resolves to a shipped module.
        for target in re.findall(r'from "(\.[^"]+)"', response.text):
            base = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
            resolved = re.sub(r"[^/]+/\.\./", "", base + target.removeprefix("./")).replace("./", "")
            assert resolved in modules, f"{name} imports {target}"


def test_assets_outside_the_page_folder_are_not_served(client):
    for path in ("/ui/../app.py", "/ui/..%2Fapp.py", "/ui/%2e%2e/api/web.py", "/ui/nothing.js", "/ui/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "import" not in response.text


def test_docs_work_offline(client):
    for path, assets in (("/docs", ["/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"]),
                         ("/redoc", ["/docs-assets/redoc.standalone.js"])):
        html = client.get(path).text
        assert "cdn." not in html, path
        assert "fonts.googleapis" not in html, path
        for asset in assets:
            assert asset in html
            response = client.get(asset)
            assert response.status_code == 200, asset
            assert len(response.content) > 10_000, asset
    assert "cdn.redoc.ly" in (DOCS_DIR / "redoc.standalone.js").read_text(encoding="utf-8")
    assert "cdn.redoc.ly" not in client.get("/docs-assets/redoc.standalone.js").text
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/collections", "/collections/{collection_id}/search"}
    assert "/" not in client.get("/openapi.json").json()["paths"]

"""The web page at `/` and offline API docs at `/docs` and `/redoc`: every asset is served from the package."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response

from service.errors import not_found

router = APIRouter(include_in_schema=False)

PAGE_DIR = Path(__file__).resolve().parent.parent / "web"
# Swagger UI and ReDoc builds shipped (and pinned) by the fastapi-offline package.
DOCS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_ASSETS = "/docs-assets"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml",
               ".png": "image/png"}


def shipped_file(folder: Path, name: str) -> FileResponse:
    """A file directly inside `folder` or below it; anything outside it (`..`, absolute paths) is a 404."""
    path = (folder / name).resolve()
    if not path.is_file() or folder not in path.parents:
        raise not_found("asset", name)
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                        headers={"Cache-Control": "no-cache"})


@router.get("/")
def page() -> FileResponse:
    return shipped_file(PAGE_DIR, "index.html")


@router.get("/ui/{name:path}")
def page_asset(name: str) -> FileResponse:
    return shipped_file(PAGE_DIR, name)


# ReDoc's sidebar always loads its maker's logo from a CDN: offline that is a failed request on every visit.
REDOC_JS = "redoc.standalone.js"
REDOC_CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
BLANK_SVG = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"


@lru_cache(maxsize=1)
def offline_redoc_js() -> bytes:
    return (DOCS_DIR / REDOC_JS).read_text(encoding="utf-8").replace(REDOC_CDN_LOGO, BLANK_SVG).encode()


@router.get(DOCS_ASSETS + "/{name}")
def docs_asset(name: str) -> Response:
    if name == REDOC_JS:
        return Response(offline_redoc_js(), media_type="text/javascript")
    return shipped_file(DOCS_DIR, name)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
    )


@router.get("/docs/oauth2-redirect")
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    app = request.app
    return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
                          redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                          redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)

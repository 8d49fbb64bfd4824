"""Everything between the socket and the routers, installed in one place because the order matters.

Outermost first: CORS (only with PAS_CORS_ORIGINS; it answers preflights), then the access guard
(Host, Origin, API keys; it refuses before any body byte is read), then the streaming body limit.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.auth import AccessGuard
from service.http_limits import install_body_limit


def install_front_door(app: FastAPI, settings) -> None:
    install_body_limit(app, settings)  # innermost of the three (add_middleware wraps what was added before)
    app.add_middleware(AccessGuard, settings=settings)
    origins = [o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)


@contextmanager
def spool_under(data_dir: Path):
    """Multipart uploads over 1 MB spool to disk: there, not in the system temp directory.

    Starlette's parser takes the process-wide default temp directory, and one process serves one data
    directory, so the default points here while the app runs. The spooled files are anonymous
    (unlinked at creation), so they vanish when the request ends, also on a crash.
    """
    spool = data_dir / "tmp"
    spool.mkdir(parents=True, exist_ok=True)
    previous, tempfile.tempdir = tempfile.tempdir, str(spool)
    try:
        yield spool
    finally:
        tempfile.tempdir = previous

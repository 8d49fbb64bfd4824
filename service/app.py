"""FastAPI factory. The lifespan builds the one ServiceContext (backbone, DB, indexes) per process."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from adapters.backbone import Backbone
from service.api import adapters, collections, health, images, jobs, search
from service.api.errors import install_error_handlers
from service.config import Settings
from service.context import ServiceContext
from service.jobs import JobRunner

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, backbone: Backbone | None = None) -> FastAPI:
    """``backbone`` lets a caller (tests, the CLI) hand over one it already loaded."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        def start() -> tuple[ServiceContext, JobRunner]:
            ctx = ServiceContext(settings, backbone)
            ctx.recover()
            runner = ctx.jobs = JobRunner(ctx)
            runner.start()
            return ctx, runner

        ctx, runner = await run_in_threadpool(start)
        app.state.context = ctx
        log.info("serving data dir %s", settings.data_dir)
        try:
            yield
        finally:
            await run_in_threadpool(runner.stop)
            ctx.close()

    app = FastAPI(
        title="Prompt-adapter retrieval service",
        description="Per-collection textual + visual prompt adapters on a frozen CLIP backbone, FAISS search.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    # Refuse oversized bodies from their Content-Length, before anything is spooled to disk.
    max_body = settings.max_upload_bytes * settings.max_files_per_upload + 1024 * 1024

    @app.middleware("http")
    async def limit_body_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body:
            return JSONResponse({"detail": f"request body over {max_body} bytes", "code": "body_too_large"},
                                status_code=413)
        return await call_next(request)

    for module in (health, collections, images, search, jobs, adapters):
        app.include_router(module.router)
    return app

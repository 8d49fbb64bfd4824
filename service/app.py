"""FastAPI factory. The lifespan builds the one ServiceContext (backbone, DB, indexes) per process."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from adapters.backbone import Backbone
from service import api_keys
from service.api import adapters, collections, feedback, health, images, jobs, search, web
from service.api.error_schema import install_error_schema
from service.api.errors import install_error_handlers
from service.auth import ExposureRefused, check_exposure
from service.config import Settings
from service.context import ServiceContext
from service.data_lock import hold_data_dir, reachable_url, share_data_dir
from service.front_door import install_front_door, spool_under
from service.jobs import JobDispatcher, JobRunner

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, backbone: Backbone | None = None) -> FastAPI:
    """``backbone`` lets a caller (tests, the CLI) hand over one it already loaded."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        def start() -> tuple[ServiceContext, JobDispatcher]:
            ctx = ServiceContext(settings, backbone)
            try:
                with ctx.session() as session:
                    check_exposure(settings.host, settings.auth_disabled, api_keys.keys_exist(session))
            except ExposureRefused:
                ctx.close()
                raise
            ctx.recover()
            runner: JobDispatcher
            if settings.scale_out:  # jobs go to `prompt-adapters worker` processes through the queue
                from service.job_queue import QueueDispatcher

                runner = QueueDispatcher(ctx)
            else:  # embedded: this process runs them in a thread
                runner = JobRunner(ctx)
                runner.start()
            ctx.jobs = runner
            return ctx, runner

        if settings.scale_out:
            data_dir_held = share_data_dir(settings.data_dir, "the server")
        else:
            data_dir_held = hold_data_dir(settings.data_dir, "the server", reachable_url(settings.host, settings.port))
        with data_dir_held, spool_under(settings.data_dir):
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
        docs_url=None, redoc_url=None,  # served offline by service.api.web
    )
    install_error_handlers(app)
    install_error_schema(app)

    install_front_door(app, settings)

    for module in (health, collections, images, search, feedback, jobs, adapters, web):
        app.include_router(module.router)
    return app

"""Scaled out (``PAS_SCALE_OUT``): jobs travel through procrastinate, a PostgreSQL job queue, to workers.

procrastinate carries only "run job <id>"; the job's row (``TuningJob``) stays the service's record
of its state and progress, and ``service.jobs.run_job`` runs it, as in the embedded mode.

- An API process only enqueues (``QueueDispatcher``): the row is committed, then the queue job
  deferred (a row left without one by a crash in between is deferred again by a worker after
  ``LOST_AFTER_S``). A cancel sets the row's flag; the worker running the job reads it between steps.
- ``prompt-adapters worker`` (``run_worker``) takes jobs one at a time, on this machine or another
  one sharing the database and the data directory. procrastinate writes each worker's heartbeat;
  every worker also looks for queue jobs whose worker has been silent for ``worker_stalled_s``
  (killed, machine gone) and fails them and their rows cleanly. A live worker's jobs are never touched,
  and starting or stopping one process never changes another's jobs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import timedelta

from procrastinate import App, JobContext, PsycopgConnector, SyncPsycopgConnector
from procrastinate import exceptions as queue_errors
from procrastinate.connector import BaseConnector
from procrastinate.jobs import Status
from sqlalchemy import make_url, select, update

from service.config import Settings
from service.context import ServiceContext
from service.jobs import CancelFlag, claim_job, fail_interrupted, open_job_ids, request_cancel, run_job
from service.models import TuningJob, utcnow
from service.vocabulary import JobState

log = logging.getLogger(__name__)

QUEUE = "jobs"
RUN_JOB_TASK = "service.run_job"
LOST_AFTER_S = 30.0  # a row queued this long without a queue job was lost between its commit and its defer

_worker_context: ServiceContext | None = None  # the one context of a worker process (set by run_worker)


def conninfo(settings: Settings) -> str:
    """The libpq connection string of the service's SQLAlchemy URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    return make_url(settings.resolved_database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def run_queued_job(context: JobContext, job_id: int) -> None:
    """The queue's task: claim the row (a cancelled or already claimed job is skipped), then run it."""
    ctx = _worker_context
    if ctx is None:
        raise RuntimeError("run_queued_job runs inside `prompt-adapters worker`")
    if not claim_job(ctx, job_id):
        log.info("job %s is no longer queued (cancelled or deleted); skipped", job_id)
        return
    log.info("job %s taken by worker %s", job_id, context.worker_name)
    try:
        run_job(ctx, job_id, CancelFlag(ctx, job_id, stopping=context.should_abort))
    finally:
        # The API processes serve the indexes a job built (from the files and rows it wrote): a worker
        # keeps none in memory between jobs.
        ctx.indexes.flush()
        ctx.indexes.forget_all()


def make_app(connector: BaseConnector) -> App:
    app = App(connector=connector)
    app.task(name=RUN_JOB_TASK, queue=QUEUE, pass_context=True)(run_queued_job)
    return app


class QueueDispatcher:
    """The API process's side: enqueue and cancel; it runs nothing itself."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.app = make_app(SyncPsycopgConnector(conninfo=conninfo(ctx.settings), min_size=1, max_size=4))
        self.app.open()

    def submit(self, job_id: int) -> None:
        try:
            self.app.configure_task(RUN_JOB_TASK).defer(job_id=job_id)
        except Exception:
            log.exception("tuning job %s could not be put on the queue", job_id)
            with self.ctx.session() as session:
                session.execute(update(TuningJob).where(TuningJob.id == job_id, TuningJob.state == JobState.QUEUED)
                                .values(state=JobState.FAILED, finished_at=utcnow(),
                                        error="the job queue could not be reached; start a new job"))
                session.commit()

    def cancel(self, job_id: int) -> str:
        return request_cancel(self.ctx, job_id)

    def cancel_collection(self, collection_id: int) -> None:
        for job_id in open_job_ids(self.ctx, collection_id):
            self.cancel(job_id)

    def stop(self) -> None:
        self.app.close()


async def fail_stalled_jobs(app: App, ctx: ServiceContext) -> list[int]:
    """Queue jobs whose worker sent no heartbeat for ``worker_stalled_s``: a job its worker had started
    is failed (its row first, saying whether a version was stored), one it had fetched but not yet
    claimed goes back on the queue. Every worker runs this; two doing it at once end the same way."""
    settings = ctx.settings
    failed = []
    stalled = await app.job_manager.get_stalled_jobs(queue=QUEUE,
                                                     seconds_since_heartbeat=settings.worker_stalled_s)
    for job in stalled:
        job_id = int(str(job.task_kwargs["job_id"]))
        cause = f"the loss of its worker (no heartbeat for {settings.worker_stalled_s:g} s)"
        failed += await asyncio.to_thread(fail_interrupted, ctx, [job_id], cause)
        state = await asyncio.to_thread(job_state, ctx, job_id)
        try:
            if state == JobState.QUEUED:
                await app.job_manager.retry_job(job)
            else:
                await app.job_manager.finish_job(job, status=Status.FAILED, delete_job=False)
        except queue_errors.ConnectorException:  # another worker dealt with it first
            pass
    return failed


def job_state(ctx: ServiceContext, job_id: int) -> str | None:
    with ctx.session() as session:
        return session.scalar(select(TuningJob.state).where(TuningJob.id == job_id))


def queued_rows_older_than(ctx: ServiceContext, seconds: float) -> list[int]:
    with ctx.session() as session:
        return list(session.scalars(select(TuningJob.id).where(
            TuningJob.state == JobState.QUEUED, TuningJob.created_at < utcnow() - timedelta(seconds=seconds))))


async def requeue_lost_jobs(app: App, ctx: ServiceContext) -> list[int]:
    """Rows `queued` for a while with no queue job to run them (their API process stopped between
    committing the row and deferring the queue job): deferred again. A second queue job for one row
    is harmless: only one claim of a row succeeds."""
    rows = await asyncio.to_thread(queued_rows_older_than, ctx, LOST_AFTER_S)
    if not rows:
        return []
    carried = set()
    for status in ("todo", "doing"):
        for job in await app.job_manager.list_jobs_async(queue=QUEUE, task=RUN_JOB_TASK, status=status):
            carried.add(int(str(job.task_kwargs["job_id"])))
    lost = [job_id for job_id in rows if job_id not in carried]
    for job_id in lost:
        log.warning("tuning job %s was queued without a queue job (its API stopped in between); queued again", job_id)
        await app.configure_task(RUN_JOB_TASK).defer_async(job_id=job_id)
    return lost


async def _watch_stalled(app: App, ctx: ServiceContext) -> None:
    while True:
        await asyncio.sleep(ctx.settings.worker_heartbeat_s)
        try:
            await fail_stalled_jobs(app, ctx)
            await requeue_lost_jobs(app, ctx)
        except Exception:  # e.g. the database briefly unreachable: try again at the next beat
            log.exception("looking for stalled or lost jobs failed; trying again")


async def _serve(app: App, ctx: ServiceContext, name: str) -> None:
    async with app.open_async():
        watcher = asyncio.create_task(_watch_stalled(app, ctx))
        try:
            await app.run_worker_async(
                queues=[QUEUE], name=name, concurrency=1,  # one training at a time per worker (per device)
                update_heartbeat_interval=ctx.settings.worker_heartbeat_s,
                stalled_worker_timeout=ctx.settings.worker_stalled_s,
                # On SIGTERM/SIGINT the running job stops at its next step and is failed, as in the embedded mode.
                shutdown_graceful_timeout=0,
            )
        finally:
            watcher.cancel()


def run_worker(settings: Settings, ctx: ServiceContext | None = None) -> None:
    """`prompt-adapters worker`: run queued jobs until SIGTERM or SIGINT."""
    global _worker_context
    ctx = ctx or ServiceContext(settings)
    _worker_context = ctx
    name = f"worker-{socket.gethostname()}-{os.getpid()}"
    log.info("%s: taking jobs from queue %r (heartbeat every %g s, stalled after %g s)", name, QUEUE,
             settings.worker_heartbeat_s, settings.worker_stalled_s)
    try:
        asyncio.run(_serve(make_app(PsycopgConnector(conninfo=conninfo(settings))), ctx, name))
    finally:
        _worker_context = None
        ctx.close()

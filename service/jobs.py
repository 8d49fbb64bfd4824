"""The job queue: jobs live in the database; one worker thread owns the training slot.

A job is a tuning job (``service.tuning``) or an import (``service.import_jobs``); ``_run`` picks
the code by the job's kind, so any worker that claims a job runs the same function.

By default one training runs at a time per process (per device), the rest wait in `queued`, and
searches and ingests go on being served by the web threads meanwhile. A job found `running` at
start-up was cut off by a restart: a tuning job is marked failed (since a version is committed whole
or not at all, nothing half-written can become active); an import is queued again and resumes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import cast

from sqlalchemy import CursorResult, select, update

from adapters.train import TrainingCancelled
from service import import_jobs
from service.collections import get_collection
from service.context import ServiceContext
from service.errors import not_found
from service.input_rules import public_error
from service.models import AdapterVersion, TuningJob, utcnow
from service.progress import Progress
from service.schemas import TuningConfig
from service.tuning import captioned_image_ids, check_config, plan_split, run_tuning
from service.vocabulary import OPEN_STATES, TERMINAL_STATES, ZERO_SHOT, JobKind, JobState, Stage, version_space

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 0.5


def mark_interrupted(ctx: ServiceContext) -> int:
    """Jobs left `running` by a stop were cut off: fail tuning jobs, saying whether their version was
    stored; queue imports again (they resume)."""
    import_jobs.requeue_interrupted(ctx)
    with ctx.session() as session:
        jobs = session.scalars(select(TuningJob).where(TuningJob.state == JobState.RUNNING,
                                                       TuningJob.kind == JobKind.TUNING)).all()
        for job in jobs:
            stored = session.scalar(select(AdapterVersion.version).where(
                AdapterVersion.collection_id == job.collection_id, AdapterVersion.job_id == job.id))
            job.state, job.finished_at = JobState.FAILED, utcnow()
            job.progress = {**(job.progress or {}), **Progress(eta_s=None).as_update()}
            log.info("tuning job %s (collection %s) failed: interrupted by a restart", job.id, job.collection_id)
            if stored is None:
                job.error = "interrupted by a service restart; nothing of it was kept, start a new job"
            else:  # cut off between storing its version and deciding on activation
                job.adapter_version = stored
                job.error = (f"interrupted by a service restart after its adapter v{stored} was stored (inactive); "
                             "activate it by hand or start a new job")
        session.commit()
        return len(jobs)


def enqueue(ctx: ServiceContext, collection_id: int, config: TuningConfig) -> TuningJob:
    """Check the config and draw the split now (a bad request fails here, not in the worker); queue it."""
    check_config(ctx, config)
    import_jobs.refuse_while_importing(ctx, collection_id)
    split = plan_split(captioned_image_ids(ctx, collection_id), config)
    with ctx.session() as session:
        get_collection(session, collection_id)
        job = TuningJob(collection_id=collection_id, state=JobState.QUEUED, config=config.model_dump(mode="json"),
                        split=split, progress=Progress(stage=Stage.QUEUED).as_update())
        session.add(job)
        session.commit()
    log.info("tuning job %s queued for collection %s", job.id, collection_id)
    if ctx.jobs is not None:
        ctx.jobs.notify()
    return job


def get_job(ctx: ServiceContext, job_id: int) -> TuningJob:
    with ctx.session() as session:
        job = session.get(TuningJob, job_id)
        if job is None:
            raise not_found("job", job_id)
        return job


def list_jobs(ctx: ServiceContext, collection_id: int, kind: JobKind = JobKind.TUNING) -> list[TuningJob]:
    with ctx.session() as session:
        return list(session.scalars(select(TuningJob).where(TuningJob.collection_id == collection_id,
                                                            TuningJob.kind == kind).order_by(TuningJob.id)))


class JobRunner:
    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cancelled: set[int] = set()
        self._thread: threading.Thread | None = None
        self.current_job: int | None = None

    def start(self) -> None:
        mark_interrupted(self.ctx)
        self._thread = threading.Thread(target=self._loop, name="tuning-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def notify(self) -> None:
        self._wake.set()

    def cancel(self, job_id: int) -> str:
        """Cancel a queued job at once, or ask a running one to stop at its next step."""
        # Marked first, so a job the worker claims in the meantime still sees the request.
        self._cancelled.add(job_id)
        with self.ctx.session() as session:
            session.execute(update(TuningJob).where(TuningJob.id == job_id, TuningJob.state.not_in(TERMINAL_STATES))
                            .values(cancel_requested=True))
            # Only a job still queued ends here; the conditional update loses cleanly to a claim.
            session.execute(update(TuningJob).where(TuningJob.id == job_id, TuningJob.state == JobState.QUEUED)
                            .values(state=JobState.CANCELLED, finished_at=utcnow(), error=None))
            session.commit()
            state, kind = session.execute(select(TuningJob.state, TuningJob.kind)
                                          .where(TuningJob.id == job_id)).one_or_none() or (None, JobKind.TUNING)
        if state == JobState.RUNNING:
            log.info("%s job %s: cancel requested; it stops at its next step", kind, job_id)
        elif state == JobState.CANCELLED:
            log.info("%s job %s cancelled", kind, job_id)
        if state != JobState.RUNNING:
            self._cancelled.discard(job_id)
        return state or "missing"

    def cancel_collection(self, collection_id: int) -> None:
        with self.ctx.session() as session:
            ids = session.scalars(select(TuningJob.id).where(
                TuningJob.collection_id == collection_id, TuningJob.state.in_(OPEN_STATES))).all()
        for job_id in ids:
            self.cancel(job_id)

    # --- the worker ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self._claim_next()
                if job_id is None:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                self._run(job_id)
            except Exception:  # e.g. the database briefly unreachable: the worker must outlive it
                log.exception("tuning worker: unexpected error; retrying in a second")
                self._stop.wait(1.0)

    def _claim_next(self) -> int | None:
        with self.ctx.session() as session:
            queued = session.scalars(select(TuningJob.id).where(TuningJob.state == JobState.QUEUED)
                                     .order_by(TuningJob.id).limit(8)).all()
            for job_id in queued:
                # Conditional, so a cancel that landed after the read above is never overwritten.
                claimed = cast(CursorResult, session.execute(
                    update(TuningJob).where(TuningJob.id == job_id, TuningJob.state == JobState.QUEUED)
                    .values(state=JobState.RUNNING, started_at=utcnow(),
                            progress=Progress(stage=Stage.STARTING).as_update())
                )).rowcount
                session.commit()
                if claimed:
                    return job_id
            return None

    def _should_cancel(self, job_id: int) -> bool:
        return self._stop.is_set() or job_id in self._cancelled

    def _reporter(self, job_id: int):
        last_write = 0.0
        last_stage = None

        def report(progress: Progress) -> None:
            nonlocal last_write, last_stage
            now = time.monotonic()
            # Writes are throttled, but a change of stage or epoch is always recorded.
            if progress.stage == last_stage and now - last_write < PROGRESS_WRITE_INTERVAL_S and \
                    not progress.ends_an_epoch():
                return
            last_write, last_stage = now, progress.stage
            with self.ctx.session() as session:
                job = session.get(TuningJob, job_id)
                if job is not None:
                    job.progress = {**(job.progress or {}), **progress.as_update()}
                    session.commit()

        return report

    def _finish(self, job_id: int, state: JobState, error: str | None = None, version: int | None = None) -> None:
        with self.ctx.session() as session:
            job = session.get(TuningJob, job_id)
            if job is None or job.state != JobState.RUNNING:  # its collection was deleted (the id may be reused)
                return
            job.state, job.error, job.finished_at = state, error, utcnow()
            # A finished job has nothing left to wait for: no ETA.
            job.progress = {**(job.progress or {}), **Progress(stage=Stage(state), eta_s=None).as_update()}
            if version is not None:
                job.adapter_version = version
            session.commit()
            wall_s = (job.finished_at - job.started_at).total_seconds() if job.started_at else float("nan")
            made = (import_jobs.describe(job.progress) if job.kind == JobKind.IMPORT else
                    f"version {version_space(version) if version is not None else ZERO_SHOT}")
            log.info("%s job %s (collection %s) ended: %s, %s, wall time %.1f s%s", job.kind, job_id,
                     job.collection_id, state.value, made, wall_s, f" ({error})" if error else "")

    def _run(self, job_id: int) -> None:
        """Run one claimed job to its end, by its kind (the one function any worker calls)."""
        self.current_job = job_id
        kind = JobKind.TUNING
        try:
            with self.ctx.session() as session:
                job = session.get(TuningJob, job_id)
                if job is None:  # deleted with its collection between the claim and now
                    return
                kind, collection_id = JobKind(job.kind), job.collection_id
                config, split = job.config, job.split
            version = None
            if kind == JobKind.IMPORT:
                log.info("import job %s started for collection %s", job_id, collection_id)
                import_jobs.run_import(self.ctx, job_id, collection_id, self._reporter(job_id),
                                       lambda: self._should_cancel(job_id))
            else:
                tuning = TuningConfig.model_validate(config)
                log.info("tuning job %s started for collection %s (method %s, %s epochs)", job_id, collection_id,
                         tuning.method, tuning.epochs)
                version = run_tuning(self.ctx, job_id, collection_id, tuning, split,
                                     self._reporter(job_id), lambda: self._should_cancel(job_id)).version
        except TrainingCancelled:
            if job_id in self._cancelled:
                self._finish(job_id, JobState.CANCELLED)
            elif kind == JobKind.IMPORT:  # a shutdown: the next start resumes it
                import_jobs.requeue_stopped(self.ctx, job_id)
            else:
                self._finish(job_id, JobState.FAILED, "interrupted by a service shutdown; start a new job")
        except Exception as exc:
            log.exception("%s job %s failed", kind, job_id)
            self._finish(job_id, JobState.FAILED, public_error(exc))
        else:
            self._finish(job_id, JobState.SUCCEEDED, version=version)
        finally:
            self._cancelled.discard(job_id)
            self.current_job = None

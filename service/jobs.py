"""Jobs: the row that records them, and the one way a claimed job is run.

A job is a tuning job (``service.tuning``) or an import (``service.import_jobs``); ``run_job`` picks
the code by the job's kind. A job's row (``TuningJob``) is the service's record of its state and
progress, whatever runs it. Two dispatchers hand jobs to ``run_job``:

- embedded (the default): ``JobRunner``, one worker thread in the server process, polls the table.
  One training runs at a time per process (per device), the rest wait in `queued`, and searches and
  ingests go on meanwhile. A job found `running` at start-up was cut off by a restart of the only
  process that runs jobs: a tuning job is marked failed, an import is queued again and resumes.
- scaled out (``PAS_SCALE_OUT``): ``service.job_queue`` carries "run job <id>" through procrastinate
  to ``prompt-adapters worker`` processes; a job whose worker stops sending heartbeats is failed
  there (an import is queued again), and a restart of one process never touches another's jobs.

Since a version is committed whole or not at all, nothing half-written can become active.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Protocol, cast

from sqlalchemy import CursorResult, select, update

from adapters.train import TrainingCancelled
from service import import_jobs
from service.collections import get_collection
from service.context import ServiceContext
from service.errors import not_found
from service.input_rules import public_error
from service.marks_tuning import run_marks_tuning
from service.models import AdapterVersion, TuningJob, utcnow
from service.progress import Progress
from service.schemas import TuningConfig
from service.tuning import check_config, is_marks_job, plan_job, run_tuning
from service.vocabulary import OPEN_STATES, TERMINAL_STATES, ZERO_SHOT, JobKind, JobState, Stage, version_space

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 0.5
CANCEL_POLL_S = 1.0  # how often a job run outside the API process re-reads its cancel flag

RESTARTED = "a service restart"


class JobDispatcher(Protocol):
    """What the API needs of whatever runs jobs (``JobRunner`` here, ``job_queue.QueueDispatcher`` scaled out)."""

    def submit(self, job_id: int) -> None: ...

    def cancel(self, job_id: int) -> str: ...

    def cancel_collection(self, collection_id: int) -> None: ...

    def stop(self) -> None: ...


def fail_interrupted(ctx: ServiceContext, job_ids: Iterable[int] | None, cause: str) -> list[int]:
    """Jobs cut off while `running` (all of them when ``job_ids`` is None): imports are queued again
    (they resume); tuning jobs are failed, saying whether their version was stored. ``cause``
    completes "interrupted by ..."; the failed ids are returned."""
    job_ids = None if job_ids is None else list(job_ids)
    import_jobs.requeue_interrupted(ctx, job_ids)
    with ctx.session() as session:
        query = select(TuningJob).where(TuningJob.state == JobState.RUNNING, TuningJob.kind == JobKind.TUNING)
        if job_ids is not None:
            query = query.where(TuningJob.id.in_(job_ids))
        jobs = session.scalars(query).all()
        for job in jobs:
            stored = session.scalar(select(AdapterVersion.version).where(
                AdapterVersion.collection_id == job.collection_id, AdapterVersion.job_id == job.id))
            job.state, job.finished_at = JobState.FAILED, utcnow()
            job.progress = {**(job.progress or {}), **Progress(eta_s=None).as_update()}
            log.info("tuning job %s (collection %s) failed: interrupted by %s", job.id, job.collection_id, cause)
            if stored is None:
                job.error = f"interrupted by {cause}; nothing of it was kept, start a new job"
            else:  # cut off between storing its version and deciding on activation
                job.adapter_version = stored
                job.error = (f"interrupted by {cause} after its adapter v{stored} was stored (inactive); "
                             "activate it by hand or start a new job")
        session.commit()
        return [job.id for job in jobs]


def mark_interrupted(ctx: ServiceContext) -> int:
    """Embedded mode, at start-up: jobs left `running` by a stop of the one job-running process were cut off."""
    return len(fail_interrupted(ctx, None, RESTARTED))


def enqueue(ctx: ServiceContext, collection_id: int, config: TuningConfig) -> TuningJob:
    """Check the config and draw the split now (a bad request fails here, not in the worker); queue it."""
    import_jobs.refuse_while_importing(ctx, collection_id)
    check_config(ctx, config)
    split = plan_job(ctx, collection_id, config)
    with ctx.session() as session:
        get_collection(session, collection_id)
        job = TuningJob(collection_id=collection_id, state=JobState.QUEUED, config=config.model_dump(mode="json"),
                        split=split, progress=Progress(stage=Stage.QUEUED).as_update())
        session.add(job)
        session.commit()
    log.info("tuning job %s queued for collection %s", job.id, collection_id)
    if ctx.jobs is not None:
        ctx.jobs.submit(job.id)
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


def request_cancel(ctx: ServiceContext, job_id: int) -> str:
    """Cancel a queued job at once, or flag a running one to stop at its next step; the job's state after."""
    with ctx.session() as session:
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
    return state or "missing"


def open_job_ids(ctx: ServiceContext, collection_id: int) -> list[int]:
    with ctx.session() as session:
        return list(session.scalars(select(TuningJob.id).where(
            TuningJob.collection_id == collection_id, TuningJob.state.in_(OPEN_STATES))))


def claim_job(ctx: ServiceContext, job_id: int) -> bool:
    """queued -> running; False when it is no longer queued (cancelled, deleted, or claimed elsewhere)."""
    with ctx.session() as session:
        # Conditional, so a cancel (or another claim) that landed first is never overwritten.
        claimed = cast(CursorResult, session.execute(
            update(TuningJob).where(TuningJob.id == job_id, TuningJob.state == JobState.QUEUED)
            .values(state=JobState.RUNNING, started_at=utcnow(), progress=Progress(stage=Stage.STARTING).as_update())
        )).rowcount
        session.commit()
    return bool(claimed)


class CancelFlag:
    """``should_cancel`` for a job run away from the API process that cancels it: re-reads the row at most
    every ``CANCEL_POLL_S`` seconds and says stop when a cancel was requested, when the row is no longer
    `running` (failed as stalled while this worker was merely slow: it must not store a version now),
    or when ``stopping()`` says so (the worker shuts down)."""

    def __init__(self, ctx: ServiceContext, job_id: int, stopping: Callable[[], bool] = lambda: False):
        self.ctx, self.job_id, self.stopping = ctx, job_id, stopping
        self._checked = 0.0
        self._stop = False

    def __call__(self) -> bool:
        if self.stopping():
            return True
        now = time.monotonic()
        if not self._stop and now - self._checked >= CANCEL_POLL_S:
            self._checked = now
            with self.ctx.session() as session:
                row = session.execute(select(TuningJob.cancel_requested, TuningJob.state)
                                      .where(TuningJob.id == self.job_id)).first()
            self._stop = row is None or bool(row.cancel_requested) or row.state != JobState.RUNNING
        return self._stop


def _reporter(ctx: ServiceContext, job_id: int) -> Callable[[Progress], None]:
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
        with ctx.session() as session:
            job = session.get(TuningJob, job_id)
            if job is not None:
                job.progress = {**(job.progress or {}), **progress.as_update()}
                session.commit()

    return report


def _finish(ctx: ServiceContext, job_id: int, state: JobState, error: str | None = None,
            version: int | None = None) -> None:
    with ctx.session() as session:
        job = session.get(TuningJob, job_id)
        if job is None or job.state != JobState.RUNNING:  # its collection was deleted, or it was failed as stalled
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


def run_job(ctx: ServiceContext, job_id: int, should_cancel: Callable[[], bool]) -> None:
    """Run one claimed (`running`) job to its end state, by its kind. Both dispatchers call this and only this.

    ``should_cancel`` is polled at every step; when it says stop, the job ends `cancelled` if a cancel
    was requested for it; otherwise its process is shutting down: a tuning job fails, an import is
    queued again to resume.
    """
    kind = JobKind.TUNING
    version = None
    try:
        with ctx.session() as session:
            job = session.get(TuningJob, job_id)
            if job is None:  # deleted with its collection between the claim and now
                return
            kind, collection_id, config, split = JobKind(job.kind), job.collection_id, job.config, job.split
        if kind == JobKind.IMPORT:
            log.info("import job %s started for collection %s", job_id, collection_id)
            import_jobs.run_import(ctx, job_id, collection_id, _reporter(ctx, job_id), should_cancel)
        else:
            tuning = TuningConfig.model_validate(config)
            on_marks = is_marks_job(split)
            log.info("tuning job %s started for collection %s (method %s, %s epochs, on %s)", job_id, collection_id,
                     tuning.method.trained() if on_marks else tuning.method, tuning.epochs,
                     "marks alone" if on_marks else "pairs")  # a job on marks alone trains auto's first candidate
            run = run_marks_tuning if on_marks else run_tuning
            version = run(ctx, job_id, collection_id, tuning, split, _reporter(ctx, job_id), should_cancel).version
    except TrainingCancelled:
        with ctx.session() as session:
            requested = session.scalar(select(TuningJob.cancel_requested).where(TuningJob.id == job_id))
        if requested:
            _finish(ctx, job_id, JobState.CANCELLED)
        elif kind == JobKind.IMPORT:  # a shutdown: the next start (or another worker) resumes it
            import_jobs.requeue_stopped(ctx, job_id)
        else:
            _finish(ctx, job_id, JobState.FAILED, "interrupted by a service shutdown; start a new job")
    except Exception as exc:
        log.exception("%s job %s failed", kind, job_id)
        _finish(ctx, job_id, JobState.FAILED, public_error(exc))
    else:
        _finish(ctx, job_id, JobState.SUCCEEDED, version=version)


class JobRunner:
    """The embedded dispatcher: one worker thread in the server process, polling the job table."""

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

    def submit(self, job_id: int) -> None:
        self._wake.set()

    def cancel(self, job_id: int) -> str:
        """Cancel a queued job at once, or ask a running one to stop at its next step."""
        # The row first (run_job reads it to tell a cancel from a shutdown), then the fast in-memory flag.
        state = request_cancel(self.ctx, job_id)
        if state == JobState.RUNNING:
            self._cancelled.add(job_id)
        return state

    def cancel_collection(self, collection_id: int) -> None:
        for job_id in open_job_ids(self.ctx, collection_id):
            self.cancel(job_id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self._claim_next()
                if job_id is None:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                self.current_job = job_id
                try:
                    run_job(self.ctx, job_id, partial(self._should_stop, job_id))
                finally:
                    self._cancelled.discard(job_id)
                    self.current_job = None
            except Exception:  # e.g. the database briefly unreachable: the worker must outlive it
                log.exception("tuning worker: unexpected error; retrying in a second")
                self._stop.wait(1.0)

    def _should_stop(self, job_id: int) -> bool:
        return self._stop.is_set() or job_id in self._cancelled

    def _claim_next(self) -> int | None:
        with self.ctx.session() as session:
            queued = session.scalars(select(TuningJob.id).where(TuningJob.state == JobState.QUEUED)
                                     .order_by(TuningJob.id).limit(8)).all()
        for job_id in queued:
            if claim_job(self.ctx, job_id):
                return job_id
        return None

"""The tuning-job queue: jobs live in the database; one worker thread owns the training slot.

By default one training runs at a time per process (per device), the rest wait in `queued`, and
searches and ingests go on being served by the web threads meanwhile. A job found `running` at
start-up was cut off by a restart: it is marked failed, and since a version is committed whole or
not at all, nothing half-written can become active.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select, update

from adapters.train import TrainingCancelled
from service.context import ServiceContext
from service.input_rules import public_error
from service.models import AdapterVersion, TuningJob, utcnow
from service.schemas import TuningConfig
from service.tuning import run_tuning

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")
PROGRESS_WRITE_INTERVAL_S = 0.5


def mark_interrupted(ctx: ServiceContext) -> int:
    """Jobs left `running` by a stop were cut off: fail them, saying whether their version was stored."""
    with ctx.session() as session:
        jobs = session.scalars(select(TuningJob).where(TuningJob.state == "running")).all()
        for job in jobs:
            stored = session.scalar(select(AdapterVersion.version).where(
                AdapterVersion.collection_id == job.collection_id, AdapterVersion.job_id == job.id))
            job.state, job.finished_at = "failed", utcnow()
            if stored is None:
                job.error = "interrupted by a service restart; nothing of it was kept, start a new job"
            else:  # cut off between storing its version and deciding on activation
                job.adapter_version = stored
                job.error = (f"interrupted by a service restart after its adapter v{stored} was stored (inactive); "
                             "activate it by hand or start a new job")
        session.commit()
        return len(jobs)


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
            session.execute(update(TuningJob).where(TuningJob.id == job_id, TuningJob.state.not_in(TERMINAL))
                            .values(cancel_requested=True))
            # Only a job still queued ends here; the conditional update loses cleanly to a claim.
            session.execute(update(TuningJob).where(TuningJob.id == job_id, TuningJob.state == "queued")
                            .values(state="cancelled", finished_at=utcnow(), error=None))
            session.commit()
            state = session.scalar(select(TuningJob.state).where(TuningJob.id == job_id))
        if state != "running":
            self._cancelled.discard(job_id)
        return state or "missing"

    def cancel_collection(self, collection_id: int) -> None:
        with self.ctx.session() as session:
            ids = session.scalars(select(TuningJob.id).where(
                TuningJob.collection_id == collection_id, TuningJob.state.in_(("queued", "running")))).all()
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
            queued = session.scalars(select(TuningJob.id).where(TuningJob.state == "queued")
                                     .order_by(TuningJob.id).limit(8)).all()
            for job_id in queued:
                # Conditional, so a cancel that landed after the read above is never overwritten.
                claimed = session.execute(
                    update(TuningJob).where(TuningJob.id == job_id, TuningJob.state == "queued")
                    .values(state="running", started_at=utcnow(), progress={"stage": "starting"})
                ).rowcount
                session.commit()
                if claimed:
                    return job_id
            return None

    def _should_cancel(self, job_id: int) -> bool:
        return self._stop.is_set() or job_id in self._cancelled

    def _reporter(self, job_id: int):
        last_write = 0.0
        last_stage = None

        def report(progress: dict) -> None:
            nonlocal last_write, last_stage
            now = time.monotonic()
            stage = progress.get("stage")
            # Writes are throttled, but a change of stage or epoch is always recorded.
            if stage == last_stage and now - last_write < PROGRESS_WRITE_INTERVAL_S and \
                    progress.get("step") != progress.get("total_steps"):
                return
            last_write, last_stage = now, stage
            with self.ctx.session() as session:
                job = session.get(TuningJob, job_id)
                if job is not None:
                    job.progress = {**(job.progress or {}), **progress}
                    session.commit()

        return report

    def _finish(self, job_id: int, state: str, error: str | None = None, version: int | None = None) -> None:
        with self.ctx.session() as session:
            job = session.get(TuningJob, job_id)
            if job is None or job.state != "running":  # its collection was deleted (the id may be reused)
                return
            job.state, job.error, job.finished_at = state, error, utcnow()
            job.progress = {**(job.progress or {}), "stage": state}
            if version is not None:
                job.adapter_version = version
            session.commit()

    def _run(self, job_id: int) -> None:
        self.current_job = job_id
        try:
            with self.ctx.session() as session:
                job = session.get(TuningJob, job_id)
                if job is None:  # deleted with its collection between the claim and now
                    return
                collection_id, config, split = job.collection_id, TuningConfig(**job.config), job.split
            row = run_tuning(self.ctx, job_id, collection_id, config, split,
                             self._reporter(job_id), lambda: self._should_cancel(job_id))
        except TrainingCancelled:
            if job_id in self._cancelled:
                self._finish(job_id, "cancelled")
            else:
                self._finish(job_id, "failed", "interrupted by a service shutdown; start a new job")
        except Exception as exc:
            log.exception("tuning job %s failed", job_id)
            self._finish(job_id, "failed", public_error(exc))
        else:
            self._finish(job_id, "succeeded", version=row.version)
        finally:
            self._cancelled.discard(job_id)
            self.current_job = None

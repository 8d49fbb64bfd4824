"""Import jobs: a manifest or a directory tree under the import root, ingested in the background.

Queueing checks the request and lists every file the job will read (``import_entries``), so bad
input is refused at once and the job's work is fixed. The worker then ingests the files in batches
through the ordinary ingest path (``service.ingest``, one ``CollectionWriter`` unit per batch); each
batch records what became of its files, and the job's progress, in the same transaction as its
images. A restart therefore finds every file either done (with its outcome) or not started: a job
cut off by a stop or a crash is queued again and resumes at its first file without an outcome, and
the content hash recognises bytes the collection already holds, so nothing is stored twice.

A cancelled import keeps the batches committed before the cancel (its progress says how many).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

from pydantic import ValidationError
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from adapters.train import TrainingCancelled
from service.collections import get_collection
from service.context import ServiceContext
from service.errors import Conflict, Forbidden, Invalid
from service.import_tree import read_caption_file, tree_files
from service.ingest import IngestItem, IngestResult, ingest
from service.input_rules import check_filename
from service.manifest import PlannedFile, manifest_files, resolve_under_root
from service.models import ImportEntry, TuningJob, utcnow
from service.progress import Progress
from service.schemas import ImageMetadata, ImportRequest
from service.vocabulary import OPEN_STATES, ImportOutcome, JobKind, JobState, Stage

log = logging.getLogger(__name__)

FAILURES_SHOWN = 100  # failed files listed in the progress; the counts cover all of them


class ImportInterrupted(TrainingCancelled):
    """The job stopped between two batches: cancelled, or the service is shutting down."""


# --- queueing --------------------------------------------------------------------------------------


def plan(ctx: ServiceContext, request: ImportRequest) -> list[PlannedFile]:
    """The files the request names, every path checked against the import root; no image is read."""
    root = ctx.settings.import_root
    what = "manifest" if request.manifest is not None else "directory"
    try:
        if request.manifest is not None:
            return manifest_files(root, request.manifest)
        assert request.directory is not None  # ImportRequest asks for exactly one
        return tree_files(root, request.directory, request.folder_categories)
    except (OSError, ValueError) as exc:  # a name the OS refuses (too long, NUL), a manifest that is not UTF-8
        raise Invalid(f"bad_{what}", f"the {what}, or a path in it, cannot be read") from exc


def enqueue_import(ctx: ServiceContext, collection_id: int, request: ImportRequest) -> TuningJob:
    """Check the request, list its files with the job (202 for the caller), and wake the worker."""
    planned = plan(ctx, request)
    with ctx.session() as session:
        get_collection(session, collection_id)
        job = TuningJob(kind=JobKind.IMPORT, collection_id=collection_id, state=JobState.QUEUED,
                        config=describe_request(request), split={},
                        progress=tally(len(planned), {}, [], stage=Stage.QUEUED).as_update())
        session.add(job)
        session.flush()
        session.execute(insert(ImportEntry), [
            {"job_id": job.id, "position": position, "path": item.path, "file": str(item.file),
             "caption_file": None if item.caption_file is None else str(item.caption_file),
             "metadata_": item.metadata}
            for position, item in enumerate(planned)
        ])
        session.commit()
    log.info("import job %s queued for collection %s (%d files)", job.id, collection_id, len(planned))
    if ctx.jobs is not None:
        ctx.jobs.submit(job.id)
    return job


def describe_request(request: ImportRequest) -> dict:
    """The job's ``config``: what was asked for."""
    if request.manifest is not None:
        return {"manifest": request.manifest}
    return {"directory": request.directory, "folder_categories": request.folder_categories}


def open_import(ctx: ServiceContext, collection_id: int) -> int | None:
    """The collection's import job still queued or running, if any."""
    with ctx.session() as session:
        return session.scalar(select(TuningJob.id).where(
            TuningJob.collection_id == collection_id, TuningJob.kind == JobKind.IMPORT,
            TuningJob.state.in_(OPEN_STATES)).order_by(TuningJob.id).limit(1))


def refuse_while_importing(ctx: ServiceContext, collection_id: int) -> None:
    """A tuning job draws its split when it is queued: one queued mid-import would train and test on a
    part of the collection, so it waits for the import to end (409)."""
    job_id = open_import(ctx, collection_id)
    if job_id is not None:
        raise Conflict("import_in_progress", f"import job {job_id} is still adding images to this collection; "
                                             "start tuning when it has ended (or cancel it)", job_id=job_id)


# --- progress ----------------------------------------------------------------------------------------


def tally(total: int, outcomes: dict[str | None, int], failures: list[dict[str, str]], **fields) -> Progress:
    done = sum(outcomes.values())
    return Progress(step=done, total_steps=total, added=outcomes.get(ImportOutcome.ADDED, 0),
                    duplicates=outcomes.get(ImportOutcome.DUPLICATE, 0), failed=outcomes.get(ImportOutcome.FAILED, 0),
                    failures=failures, **fields)


def measure(session: Session, job_id: int, **fields) -> Progress:
    """The job's progress as its entries say (the one source: a resumed job reads it back from them)."""
    in_job = ImportEntry.job_id == job_id
    total = session.scalar(select(func.count()).where(in_job)) or 0
    outcomes = {outcome: count for outcome, count in session.execute(select(ImportEntry.outcome, func.count()).where(
        in_job, ImportEntry.outcome.is_not(None)).group_by(ImportEntry.outcome))}
    failures = [{"path": path, "reason": reason or ""} for path, reason in session.execute(
        select(ImportEntry.path, ImportEntry.reason).where(in_job, ImportEntry.outcome == ImportOutcome.FAILED)
        .order_by(ImportEntry.position).limit(FAILURES_SHOWN))]
    return tally(total, outcomes, failures, **fields)


def write_progress(session: Session, job_id: int, progress: Progress) -> None:
    job = session.get(TuningJob, job_id)
    if job is not None:
        job.progress = {**(job.progress or {}), **progress.as_update()}


def record(session: Session, result: IngestResult, *, job_id: int, batch: list[ImportEntry],
           timing: Callable[[int], dict]) -> None:
    """What became of each file of the batch, and the job's progress: in the batch's own transaction."""
    accepted = {a.index: a for a in result.accepted}
    rejected = {r.index: r.reason for r in result.rejected}
    for position, entry in enumerate(batch):
        if position in accepted:
            outcome = ImportOutcome.DUPLICATE if accepted[position].duplicate else ImportOutcome.ADDED
            values = {"outcome": outcome, "image_id": accepted[position].id}
        else:
            values = {"outcome": ImportOutcome.FAILED, "reason": rejected.get(position, "not ingested")}
        session.execute(update(ImportEntry).where(ImportEntry.id == entry.id).values(**values))
    progress = measure(session, job_id, stage=Stage.IMPORTING)
    write_progress(session, job_id, progress.model_copy(update=timing(progress.step or 0)))


# --- reading files ------------------------------------------------------------------------------------


def read_entry(ctx: ServiceContext, entry: ImportEntry) -> IngestItem:
    """The file and its metadata as an ingest item; a file that cannot be used carries the reason."""
    item = IngestItem(filename=entry.path, data=b"")
    root, limit = ctx.settings.import_root, ctx.settings.max_upload_bytes
    try:
        if (refusal := check_filename(entry.path)) is not None:
            raise ValueError(refusal)
        path = resolve_under_root(root, entry.file)  # again: the tree may have changed since the job was queued
        if not path.is_file():
            raise ValueError("file not found")
        if (size := path.stat().st_size) > limit:
            raise ValueError(f"file is {size} bytes, over the limit of {limit}")
        fields = dict(entry.metadata_ or {})
        if entry.caption_file is not None:
            fields["captions"] = [*fields.get("captions", []),
                                  *read_caption_file(resolve_under_root(root, entry.caption_file))]
        metadata = ImageMetadata.model_validate(fields)
        item.data = path.read_bytes()
    except Forbidden:
        item.error = "the file (or its caption file) resolves outside the import root"
    except ValidationError as exc:
        first = exc.errors()[0]
        item.error = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    except ValueError as exc:  # ours: a reason a client may read
        item.error = str(exc)
    except OSError:
        item.error = "the file cannot be read"
    else:
        item.captions, item.category = metadata.all_captions, metadata.category
        item.attributes, item.meta = metadata.attributes, metadata.meta
    return item


# --- the job ------------------------------------------------------------------------------------------


def run_import(
    ctx: ServiceContext,
    job_id: int,
    collection_id: int,
    report: Callable[[Progress], None],
    should_cancel: Callable[[], bool],
) -> Progress:
    """Ingest the job's files not yet done, batch by batch; the final progress. Raises ImportInterrupted
    between batches when asked to stop, and Invalid when every file failed."""
    if ctx.settings.import_root is None:
        raise Invalid("import_disabled", "server-side import is disabled: no import root is configured")
    batch_size = ctx.settings.import_batch_size
    with ctx.session() as session:
        start = measure(session, job_id, stage=Stage.IMPORTING)
    report(start)  # a resumed job shows where it starts
    started, first_done = time.monotonic(), start.step or 0

    def timing(done: int) -> dict:
        elapsed = time.monotonic() - started
        rate = (done - first_done) / elapsed if elapsed > 0 else 0.0
        remaining = (start.total_steps or 0) - done
        return {"elapsed_s": round(elapsed, 2), "eta_s": round(remaining / rate, 1) if rate > 0 else None}

    while True:
        with ctx.session() as session:
            batch = list(session.scalars(select(ImportEntry).where(
                ImportEntry.job_id == job_id, ImportEntry.outcome.is_(None))
                .order_by(ImportEntry.position).limit(batch_size)))
        if not batch:
            break
        if should_cancel():  # only while files are left: a job with all its files done has succeeded
            raise ImportInterrupted()
        items = [read_entry(ctx, entry) for entry in batch]
        result = ingest(ctx, collection_id, items, before_commit=partial(record, job_id=job_id, batch=batch,
                                                                         timing=timing))
        if not result.accepted:  # nothing usable: ingest wrote nothing, so the outcomes are written here
            with ctx.session() as session:
                record(session, result, job_id=job_id, batch=batch, timing=timing)
                session.commit()
    with ctx.session() as session:
        final = measure(session, job_id)
    if not final.added and not final.duplicates:
        raise Invalid("all_rejected", "every file was rejected (the job's progress lists why)")
    return final


def requeue(session: Session, job: TuningJob) -> None:
    """Back in the queue, to resume at its first file without an outcome (a cancel asked for wins)."""
    if job.cancel_requested:
        job.state, job.finished_at = JobState.CANCELLED, utcnow()
        job.progress = {**(job.progress or {}), **Progress(stage=Stage.CANCELLED, eta_s=None).as_update()}
        log.info("import job %s (collection %s) cancelled", job.id, job.collection_id)
        return
    job.state = JobState.QUEUED
    progress = measure(session, job.id, stage=Stage.QUEUED, eta_s=None)
    job.progress = {**(job.progress or {}), **progress.as_update()}
    log.info("import job %s (collection %s) stopped at file %s of %s; queued to resume", job.id,
             job.collection_id, progress.step, progress.total_steps)


def requeue_stopped(ctx: ServiceContext, job_id: int) -> None:
    """After a shutdown stopped it between batches."""
    with ctx.session() as session:
        job = session.get(TuningJob, job_id)
        if job is not None and job.state == JobState.RUNNING:
            requeue(session, job)
            session.commit()


def requeue_interrupted(ctx: ServiceContext, job_ids: list[int] | None = None) -> int:
    """Import jobs left running (all, or those of ``job_ids``) were cut off by a stop, a crash or the
    loss of their worker; they resume."""
    with ctx.session() as session:
        query = select(TuningJob).where(TuningJob.kind == JobKind.IMPORT, TuningJob.state == JobState.RUNNING)
        if job_ids is not None:
            query = query.where(TuningJob.id.in_(job_ids))
        jobs = session.scalars(query).all()
        for job in jobs:
            requeue(session, job)
        session.commit()
        return len(jobs)


def describe(progress: dict | None) -> str:
    """For the log line at a job's end."""
    progress = progress or {}
    return (f"{progress.get('added', 0)} added, {progress.get('duplicates', 0)} duplicates, "
            f"{progress.get('failed', 0)} failed of {progress.get('total_steps', 0)} files")

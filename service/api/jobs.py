from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from service import jobs
from service.api.deps import CollectionDep, ContextDep
from service.api.params import JobId
from service.schemas import JobOut, TuningConfig
from service.vocabulary import TERMINAL_STATES, JobKind

router = APIRouter(tags=["tuning jobs"])


@router.post("/collections/{collection_id}/tuning-jobs", status_code=202, response_model=JobOut)
def create_job(collection_id: CollectionDep, ctx: ContextDep, config: TuningConfig | None = None) -> JobOut:
    """Queue a tuning job for the collection (202). The settings are checked and the train/val/test split drawn now; the job runs in the background, one at a time per server."""
    return JobOut.model_validate(jobs.enqueue(ctx, collection_id, config or TuningConfig()))


@router.get("/collections/{collection_id}/tuning-jobs", response_model=list[JobOut])
def list_jobs(collection_id: CollectionDep, ctx: ContextDep) -> list[JobOut]:
    """The collection's tuning jobs, oldest first."""
    return [JobOut.model_validate(job) for job in jobs.list_jobs(ctx, collection_id)]


@router.get("/collections/{collection_id}/import-jobs", response_model=list[JobOut])
def list_import_jobs(collection_id: CollectionDep, ctx: ContextDep) -> list[JobOut]:
    """The collection's import jobs (`POST .../images/import`), oldest first."""
    return [JobOut.model_validate(job) for job in jobs.list_jobs(ctx, collection_id, JobKind.IMPORT)]


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: JobId, ctx: ContextDep) -> JobOut:
    """One job, tuning or import: state, progress (step, loss, held-out metrics, ETA while running; an import's files done, added, duplicates, failures), error, the version it stored."""
    return JobOut.model_validate(jobs.get_job(ctx, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: JobId, ctx: ContextDep) -> JobOut:
    """Cancel a job: a queued one at once, a running one at its next step (an import keeps the batches it committed). Cancelling a finished job changes nothing."""
    jobs.get_job(ctx, job_id)
    if ctx.jobs is not None:
        ctx.jobs.cancel(job_id)
    return JobOut.model_validate(jobs.get_job(ctx, job_id))


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: JobId, request: Request, ctx: ContextDep) -> StreamingResponse:
    """Server-sent events: one `progress` event per change, a final `end` event at a terminal state."""
    await run_in_threadpool(jobs.get_job, ctx, job_id)

    async def stream() -> AsyncIterator[str]:
        last = None
        quiet = 0.0
        while True:
            job = JobOut.model_validate(await run_in_threadpool(jobs.get_job, ctx, job_id)).model_dump(mode="json")
            if job != last:
                yield f"event: progress\ndata: {json.dumps(job)}\n\n"
                last, quiet = job, 0.0
            if job["state"] in TERMINAL_STATES:
                yield f"event: end\ndata: {json.dumps(job)}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)
            quiet += 0.25
            if quiet >= 15:
                yield ": keep-alive\n\n"
                quiet = 0.0

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from service import collections as ops
from service import tuning
from service.api.deps import ContextDep
from service.api.params import CollectionId, JobId
from service.context import ServiceContext
from service.errors import not_found
from service.jobs import TERMINAL
from service.models import TuningJob
from service.schemas import JobOut, TuningConfig

router = APIRouter(tags=["tuning jobs"])


def job_out(job: TuningJob) -> JobOut:
    return JobOut(
        id=job.id, collection_id=job.collection_id, state=job.state, config=job.config,
        split_sizes={part: len(ids) for part, ids in (job.split or {}).items()},
        progress=job.progress or {}, error=job.error, adapter_version=job.adapter_version,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
    )


def load_job(ctx: ServiceContext, job_id: int) -> TuningJob:
    with ctx.session() as session:
        job = session.get(TuningJob, job_id)
        if job is None:
            raise not_found("job", job_id)
        return job


@router.post("/collections/{collection_id}/tuning-jobs", status_code=202, response_model=JobOut)
def create_job(collection_id: CollectionId, ctx: ContextDep, config: TuningConfig | None = None) -> JobOut:
    config = config or TuningConfig()
    with ctx.session() as session:
        ops.get_collection(session, collection_id)
    tuning.check_config(ctx, config)
    split = tuning.plan_split(tuning.captioned_image_ids(ctx, collection_id), config)
    with ctx.session() as session:
        job = TuningJob(collection_id=collection_id, state="queued", config=config.model_dump(), split=split,
                        progress={"stage": "queued"})
        session.add(job)
        session.commit()
    ctx.jobs.notify()
    return job_out(job)


@router.get("/collections/{collection_id}/tuning-jobs", response_model=list[JobOut])
def list_jobs(collection_id: CollectionId, ctx: ContextDep) -> list[JobOut]:
    with ctx.session() as session:
        ops.get_collection(session, collection_id)
        jobs = session.scalars(select(TuningJob).where(TuningJob.collection_id == collection_id)
                               .order_by(TuningJob.id)).all()
        return [job_out(j) for j in jobs]


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: JobId, ctx: ContextDep) -> JobOut:
    return job_out(load_job(ctx, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: JobId, ctx: ContextDep) -> JobOut:
    load_job(ctx, job_id)
    ctx.jobs.cancel(job_id)
    return job_out(load_job(ctx, job_id))


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: JobId, request: Request, ctx: ContextDep) -> StreamingResponse:
    """Server-sent events: one `progress` event per change, a final `end` event at a terminal state."""
    await run_in_threadpool(load_job, ctx, job_id)

    async def stream():
        last = None
        quiet = 0.0
        while True:
            job = job_out(await run_in_threadpool(load_job, ctx, job_id)).model_dump(mode="json")
            if job != last:
                yield f"event: progress\ndata: {json.dumps(job)}\n\n"
                last, quiet = job, 0.0
            if job["state"] in TERMINAL:
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

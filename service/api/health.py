from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select

from service.api.deps import ContextDep
from service.models import Collection, ImageRecord

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(ctx: ContextDep) -> dict:
    backbone = ctx.backbone
    with ctx.session() as session:
        collections = session.scalar(select(func.count(Collection.id))) or 0
        images = session.scalar(select(func.count(ImageRecord.id))) or 0
    return {
        "status": "ok",
        "backbone": backbone.identity.to_dict(),
        "backbone_source": backbone.source_note,
        "device": str(backbone.device),
        "precision": backbone.precision,
        "counts": {"collections": collections, "images": images},
    }

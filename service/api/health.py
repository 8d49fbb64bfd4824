from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import ContextDep
from service.collections import totals

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(ctx: ContextDep) -> dict[str, Any]:
    """Liveness and what serves: the backbone's identity and the number of collections."""
    backbone = ctx.backbone
    collections, images = totals(ctx)
    return {
        "status": "ok",
        "backbone": backbone.identity.to_dict(),
        "backbone_source": backbone.source_note,
        "device": str(backbone.device),
        "precision": backbone.precision,
        "counts": {"collections": collections, "images": images},
    }

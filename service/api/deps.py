"""Dependencies shared by the routers, as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.api.params import CollectionId
from service.collections import get_collection
from service.context import ServiceContext


def get_context(request: Request) -> ServiceContext:
    return request.app.state.context


ContextDep = Annotated[ServiceContext, Depends(get_context)]


def existing_collection(collection_id: CollectionId, ctx: ContextDep) -> int:
    """The path's collection id, once it is known to exist (404 otherwise)."""
    with ctx.session() as session:
        get_collection(session, collection_id)
    return collection_id


# A route under /collections/{collection_id} that needs the collection to exist takes this.
CollectionDep = Annotated[int, Depends(existing_collection)]

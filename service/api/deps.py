"""Dependencies shared by the routers, as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.context import ServiceContext


def get_context(request: Request) -> ServiceContext:
    return request.app.state.context


ContextDep = Annotated[ServiceContext, Depends(get_context)]

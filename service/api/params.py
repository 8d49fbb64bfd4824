"""Bounded path and query parameters: an id or offset no database column can hold is a 422, never a 500."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_ID = 2**63 - 1  # BIGINT; SQLite's INTEGER is the same 64 bits

CollectionId = Annotated[int, Path(ge=1, le=MAX_ID, description="A collection id")]
ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="An image id")]
CollectionName = Annotated[str, Path(min_length=1, max_length=200, description="A collection's exact name")]
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="A job id (tuning or import)")]
FeedbackId = Annotated[int, Path(ge=1, le=MAX_ID, description="A mark's id (from the feedback list or its POST)")]
AdapterSelector = Annotated[str, Path(min_length=1, max_length=24, pattern=r"^[ -~]+$",
                                      description="v<N>, <N> (or `none` where it applies)")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Items to skip before this page")]
PageSize = Annotated[int, Query(ge=1, le=1000, description="Largest page size")]

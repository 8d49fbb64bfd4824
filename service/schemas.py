"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=5000)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("name must not be blank")
        return value


class IndexOut(BaseModel):
    space: str
    kind: str
    size: int


class CollectionOut(BaseModel):
    id: int
    name: str
    description: str | None
    created_at: datetime
    image_count: int
    indexes: list[IndexOut]
    backbone: dict[str, Any]


class ImageMetadata(BaseModel):
    """One entry of the `metadata` part of an upload, aligned with the files."""

    model_config = ConfigDict(extra="forbid")

    captions: list[str] = Field(default_factory=list)
    category: str | None = Field(None, max_length=200)
    attributes: list[str] = Field(default_factory=list, max_length=64)
    meta: dict[str, Any] = Field(default_factory=dict)


class AcceptedImage(BaseModel):
    index: int
    id: int
    filename: str
    sha256: str
    duplicate: bool


class RejectedImage(BaseModel):
    index: int
    filename: str
    reason: str


class IngestResponse(BaseModel):
    accepted: list[AcceptedImage]
    rejected: list[RejectedImage]


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(min_length=1, description="Path of a .jsonl or .csv manifest under the import root")


class ImageOut(BaseModel):
    id: int
    collection_id: int
    filename: str
    sha256: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    captions: list[str]
    category: str | None
    attributes: list[str]
    meta: dict[str, Any]
    created_at: datetime
    url: str
    thumbnail_url: str


class ImagePage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[ImageOut]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | list[str]
    k: int = Field(10, description="Results per query, 1..max_k")
    adapter: str = Field("active", description='"active", "none" or an adapter version')


class SearchHit(BaseModel):
    image_id: int
    score: float
    captions: list[str]
    category: str | None
    url: str


class SearchResponse(BaseModel):
    adapter: str
    results: list[SearchHit] | list[list[SearchHit]]

"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from service.input_rules import bounded_json, printable_name, printable_text


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: Annotated[str | None, AfterValidator(printable_text)] = Field(None, max_length=5000)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("name must not be blank")
        return printable_name(value)


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

    captions: list[Annotated[str, Field(max_length=2000)]] = Field(default_factory=list, max_length=64)
    category: Annotated[str, AfterValidator(printable_name)] | None = Field(None, max_length=200)
    attributes: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=64)
    meta: Annotated[dict[str, Any], AfterValidator(bounded_json)] = Field(default_factory=dict)


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

    manifest: str = Field(min_length=1, max_length=4096, description="Path of a .jsonl or .csv manifest under the import root")


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
    adapter: str = Field("active", max_length=24, description='"active", "none" or an adapter version')


class SearchHit(BaseModel):
    image_id: int
    score: float
    captions: list[str]
    category: str | None
    url: str


class SearchResponse(BaseModel):
    adapter: str
    results: list[SearchHit] | list[list[SearchHit]]


class DcarOptions(BaseModel):
    """DCAR's category-aware parts; off by default (plain symmetric InfoNCE)."""

    model_config = ConfigDict(extra="forbid")

    same_category_weight: float = Field(1.0, ge=0.0, le=1.0,
                                        description="Weight of a same-category negative (< 1 pushes it away less)")
    hard_negatives: int = Field(0, ge=0, le=16, description="Mined neighbours per view added per anchor")
    attribute_reweighting: bool = Field(False, description="Add captions composed of discriminative attributes")


class TuningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["text", "visual", "dual"] = "dual"
    # Defaults: the benchmark's recipe (docs/bench/quality.md), chosen on held-out pairs.
    epochs: int = Field(12, ge=1, le=200)
    lr: float = Field(1e-2, gt=0, le=1)
    batch_size: int = Field(32, ge=2, le=1024)
    text_tokens: int = Field(4, ge=1, le=32)
    visual_tokens: int = Field(8, ge=1, le=64)
    visual_start: int = Field(1, ge=0, le=64, description="First image block that receives prompts (earlier ones are cached)")
    visual_deep_from: int | None = Field(1, ge=0, le=64, description="Fresh prompts at every block from here (VPT-deep); "
                                                              "null: shallow prompts only")
    text_init: Annotated[str, AfterValidator(printable_name)] = Field("a photo of a", min_length=1, max_length=200)
    patience: int | None = Field(4, ge=1, le=200, description="Epochs without held-out improvement before stopping")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Held-out pairs for early stopping")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Held-out pairs for the final comparison")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    dcar: DcarOptions = Field(default_factory=DcarOptions)
    activation: Literal["if_not_worse", "always", "never"] = "if_not_worse"
    min_gain: float = Field(0.0, ge=-1, le=1, description="Test R@1 gain over the active one needed to activate")


class JobOut(BaseModel):
    id: int
    collection_id: int
    state: str
    config: dict[str, Any]
    split_sizes: dict[str, int]
    progress: dict[str, Any]
    error: str | None
    adapter_version: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AdapterOut(BaseModel):
    version: int
    name: str
    active: bool
    method: str
    has_visual: bool
    param_count: int
    size_bytes: int
    file_sha256: str
    metrics: dict[str, Any]
    note: str | None
    job_id: int | None
    created_at: datetime
    file_url: str


class AdapterDetail(AdapterOut):
    report: dict[str, Any]

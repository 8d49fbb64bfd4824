"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, computed_field, field_validator

from adapters.train import TrainConfig
from service.input_rules import bounded_json, printable_name, printable_text
from service.vocabulary import ACTIVE, ZERO_SHOT, Activation, JobState, Method, SearchSort

# The training recipe has one home, adapters.train.TrainConfig: the API's defaults are read from it.
RECIPE = TrainConfig()

# JSON columns may hold NULL for "nothing yet": the API shows an empty list or object.
ListOrEmpty = Annotated[list[str], BeforeValidator(lambda value: value or [])]
DictOrEmpty = Annotated[dict[str, Any], BeforeValidator(lambda value: value or {})]


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


Captions = list[Annotated[str, Field(max_length=2000)]]
Category = Annotated[str, AfterValidator(printable_name)]
Attributes = list[Annotated[str, Field(max_length=200)]]
Meta = Annotated[dict[str, Any], AfterValidator(bounded_json)]


class ImageMetadata(BaseModel):
    """What an image says about itself, as an upload's `metadata` entry or a manifest line gives it.

    `caption` is a one-item `captions` (both may be sent: the caption comes first).
    """

    model_config = ConfigDict(extra="forbid")

    caption: str | None = Field(None, max_length=2000, description="One caption (same as captions: [caption])")
    captions: Captions = Field(default_factory=list, max_length=64)
    category: Category | None = Field(None, max_length=200)
    attributes: Attributes = Field(default_factory=list, max_length=64)
    meta: Meta = Field(default_factory=dict)

    @property
    def all_captions(self) -> list[str]:
        return ([self.caption] if self.caption else []) + list(self.captions)


class ImagePatch(BaseModel):
    """An edit of one image (or of every image a filter matches): only the fields sent change.

    `caption`/`captions` replace the captions, `category` (null clears it) and `attributes` replace
    theirs, `meta` is merged key by key (a key set to null is removed).
    """

    model_config = ConfigDict(extra="forbid")

    caption: str | None = Field(None, max_length=2000, description="One caption (same as captions: [caption])")
    captions: Captions | None = Field(None, max_length=64)
    category: Category | None = Field(None, max_length=200)
    attributes: Attributes | None = Field(None, max_length=64)
    meta: Meta | None = Field(None, description="Merged into the stored meta; a key set to null is removed")


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
    model_config = ConfigDict(from_attributes=True)

    id: int
    collection_id: int
    filename: str
    sha256: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    captions: list[str] = Field(validation_alias="caption_texts")
    category: str | None
    attributes: ListOrEmpty
    meta: DictOrEmpty
    created_at: datetime
    captured_at: datetime | None

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented use of a decorated property
    @property
    def url(self) -> str:
        return f"/collections/{self.collection_id}/images/{self.id}/file"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def thumbnail_url(self) -> str:
        return f"/collections/{self.collection_id}/images/{self.id}/thumbnail"


class ImagePage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[ImageOut]


MAX_ROW_ID = 2**63 - 1  # an id no database column can hold is a 422, never a 500


class SearchTerm(BaseModel):
    """One part of a combined query: a text or a stored image, with a weight (negative: "not like this")."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=1000)
    image_id: int | None = Field(None, ge=1, le=MAX_ROW_ID)
    weight: float = Field(1.0, ge=-10, le=10, description="Non-zero; a negative weight pushes results away")


MetaValue = Annotated[str, Field(max_length=2000)] | bool | int | float


class ImageFilter(BaseModel):
    """Which images a search (or a bulk edit) considers; every given condition must hold."""

    model_config = ConfigDict(extra="forbid")

    category: Category | None = Field(None, max_length=200)
    attributes: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=64, description="Every one of these attributes")
    meta: dict[Annotated[str, Field(max_length=200)], MetaValue] = Field(
        default_factory=dict, max_length=32, description="meta key = value, for every pair given")
    uploaded_from: datetime | None = Field(None, description="Upload time at or after (UTC when no zone)")
    uploaded_to: datetime | None = Field(None, description="Upload time at or before")
    captured_from: datetime | None = Field(None, description="EXIF capture time at or after")
    captured_to: datetime | None = Field(None, description="EXIF capture time at or before")


class BulkImagePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: ImageFilter = Field(description="The images to change (must not be empty)")
    change: ImagePatch


class BulkEditResult(BaseModel):
    updated: int
    ids: list[int]


class SearchOptions(BaseModel):
    """What every search takes besides its query."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(10, description="Results per query, 1..max_k")
    adapter: str = Field(ACTIVE, max_length=24, description=f'"{ACTIVE}", "{ZERO_SHOT}" or an adapter version')
    terms: list[SearchTerm] | None = Field(None, max_length=32,
                                           description="A weighted sum of texts and stored images")
    filter: ImageFilter = Field(default_factory=ImageFilter,
                                description="Applied inside the index search: k results still come back")
    min_score: float | None = Field(None, ge=-1, le=1, description="Drop hits scoring below this")
    sort: SearchSort = Field(SearchSort.SCORE, description="score (best first) or date (newest first)")


class SearchRequest(SearchOptions):
    query: str | list[str] | None = Field(None, description="A text, or a list of texts (one result list each)")
    image_id: int | None = Field(None, ge=1, le=MAX_ROW_ID, description='A stored image: "more like this"')


class SearchHit(BaseModel):
    image_id: int
    score: float
    captions: list[str]
    category: str | None
    filename: str
    captured_at: datetime | None
    uploaded_at: datetime
    url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    adapter: str
    results: list[SearchHit] | list[list[SearchHit]]
    search_id: int | None = Field(None, description="Refer to this result list in POST .../feedback "
                                                    "(null for a list of texts: see search_ids)")
    search_ids: list[int] | None = Field(None, description="For a list of texts: one search_id per text")


class DcarOptions(BaseModel):
    """DCAR's category-aware parts; off by default (plain symmetric InfoNCE)."""

    model_config = ConfigDict(extra="forbid")

    same_category_weight: float = Field(RECIPE.same_category_weight, ge=0.0, le=1.0,
                                        description="Weight of a same-category negative (< 1 pushes it away less)")
    hard_negatives: int = Field(RECIPE.hard_negatives, ge=0, le=16,
                                description="Mined neighbours per view added per anchor")
    attribute_reweighting: bool = Field(RECIPE.attribute_reweighting,
                                        description="Add captions composed of discriminative attributes")


class TuningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Every training field has TrainConfig's name and default (the recipe, see docs/bench/quality.md); the
    # held-out fractions, the activation rule and min_gain are the service's own.
    method: Method = Method(RECIPE.method)
    epochs: int = Field(RECIPE.epochs, ge=1, le=200)
    lr: float = Field(RECIPE.lr, gt=0, le=1)
    batch_size: int = Field(RECIPE.batch_size, ge=2, le=1024)
    text_tokens: int = Field(RECIPE.text_tokens, ge=1, le=32)
    visual_tokens: int = Field(RECIPE.visual_tokens, ge=1, le=64)
    visual_start: int = Field(RECIPE.visual_start, ge=0, le=64,
                              description="First image block that receives prompts (earlier ones are cached)")
    visual_deep_from: int | None = Field(RECIPE.visual_deep_from, ge=0, le=64,
                                         description="Fresh prompts at every block from here (VPT-deep); "
                                                     "null: shallow prompts only")
    text_init: Annotated[str, AfterValidator(printable_name)] = Field(RECIPE.text_init, min_length=1, max_length=200)
    patience: int | None = Field(RECIPE.patience, ge=1, le=200,
                                 description="Epochs without held-out improvement before stopping")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Held-out pairs for early stopping")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Held-out pairs for the final comparison")
    seed: int = Field(RECIPE.seed, ge=0, le=2**32 - 1)
    dcar: DcarOptions = Field(default_factory=DcarOptions)
    activation: Activation = Field(Activation.IF_BETTER,
                                   description="if_better: activate only when the 95 % interval of the test gain "
                                               "over the active one lies above min_gain")
    min_gain: float = Field(0.0, ge=-1, le=1, description="Test gain over the active one needed to activate")


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    collection_id: int
    state: JobState
    config: dict[str, Any]
    split_sizes: dict[str, int]
    progress: DictOrEmpty
    error: str | None
    adapter_version: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AdapterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    collection_id: int = Field(exclude=True)
    version: int
    name: str
    active: bool
    method: str
    has_visual: bool
    param_count: int
    size_bytes: int
    file_sha256: str
    metrics: DictOrEmpty
    note: str | None
    job_id: int | None
    created_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def file_url(self) -> str:
        return f"/collections/{self.collection_id}/adapters/{self.version}/file"


class AdapterDetail(AdapterOut):
    report: DictOrEmpty


class FeedbackQuery(BaseModel):
    """The query a mark is about: a text or a stored image (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=1000)
    image_id: int | None = Field(None, ge=1, le=MAX_ROW_ID)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    search_id: int | None = Field(None, ge=1, le=MAX_ROW_ID,
                                  description="A search's `search_id`: the mark is about that search's query")
    query: FeedbackQuery | None = Field(None, description="Instead of search_id: the query itself")
    image_id: int = Field(ge=1, le=MAX_ROW_ID, description="The image marked (of this collection)")
    relevant: bool = Field(description="true: a right answer for the query; false: a wrong one")


class FeedbackOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    search_id: int | None
    query: dict[str, Any]
    image_id: int
    relevant: bool
    created_at: datetime


class FeedbackPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[FeedbackOut]
